"""The cost model (pdiff/cost) and `pdiff plan-cost`: its jobs are the workflow's dry run, its
counts follow the config and the published dataset sizes, it scales as it should, throughput
files round-trip, and the workflow's SLURM resources are the model's (ImageNet's jobs ask for
more than EuroSAT's).

The plans run `snakemake -n` into temporary folders; nothing here trains or measures a real
backbone (the measurement test times the tiny demo model for a fraction of a second per unit).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re

import pytest

from pdiff.budget import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PAIRS
from pdiff.cli import main
from pdiff.cost.model import (
    ASSUMED_AMP_FLOPS,
    ASSUMED_FLOPS,
    METHOD_COST,
    Arch,
    Estimator,
    Job,
    Throughputs,
    template_tokens,
)
from pdiff.cost.plan import cost_jobs, dry_run, parse_jobs, plan_cost, token_counter
from pdiff.cost.workflow import ASSUMED_NAME_TOKENS, config_estimator
from pdiff.errors import PdiffError
from pdiff.methods import METHODS
from pdiff.methods.text import ClassTexts, ContextMethod
from pdiff.plan.config import load_config
from pdiff.plan.paths import Paths
from tests.helpers import (
    BENCHMARK,
    DEMO,
    REPO,
    SMOKE,
    SNAKEMAKE,
    load,
    plan,
    run,
    write_config,
)

COMPUTE = ("features_test", "features_fewshot", "train", "overfit", "fit_diffusion",
           "evaluate_baseline", "evaluate_diffusion", "evaluate_zeroshot")


def throughputs(configs) -> Throughputs:
    """Fixed throughputs (a GPU guess), so that plans are deterministic."""
    cfg = load_config(configs)
    return Throughputs.assumed(Arch.of(cfg["backbone"]["model"]), cfg["diffusion"], "gpu")


# ---------------------------------------------------------------------------------------------
# The plan is the workflow's DAG
# ---------------------------------------------------------------------------------------------


@pytest.mark.dryrun
@pytest.mark.parametrize("configs", [[DEMO], [BENCHMARK]], ids=["demo", "benchmark"])
def test_plan_has_the_dry_runs_jobs_per_rule(tmp_path, configs):
    counts, _ = plan(tmp_path, configs)
    result = plan_cost(configs, throughputs(configs), tmp_path)
    assert {r.rule: r.work.jobs for r in result.rules} == counts
    assert result.total.work.jobs == sum(counts.values())
    assert all(r.seconds > 0 for r in result.rules if r.rule in COMPUTE)


@pytest.mark.dryrun
def test_demo_runs_one_thread_per_job(tmp_path):
    """On a CPU (`gpu: 0`) every compute rule takes one thread (and so no loader worker): two
    small jobs side by side finish sooner than one on two threads."""
    planned = parse_jobs(dry_run([DEMO], tmp_path))
    threads = collections.defaultdict(set)
    for p in planned:
        if p.argv:
            threads[p.rule].add(int(p.options()["threads"]))
    for rule in ("features_test", "features_fewshot", "train", "overfit", "fit_diffusion",
                 "evaluate_baseline", "evaluate_diffusion"):
        assert threads[rule] == {1}, rule


@pytest.mark.dryrun
@pytest.mark.parametrize("configs", [[SMOKE], [BENCHMARK]], ids=["smoke", "benchmark"])
def test_workflow_resources_are_the_cost_models(tmp_path, configs):
    """Every compute job's runtime and mem_mb, as the workflow gives them (pdiff.plan builds the
    job from its wildcards), equal the cost model's for the job plan-cost builds from the
    planned command: both describe the same work."""
    planned = parse_jobs(dry_run(configs, tmp_path))
    cfg = load_config(configs)
    estimator = config_estimator(cfg, tmp_path / Paths(cfg).check_dir)
    checked = collections.Counter()
    for p, job in zip(planned, cost_jobs(planned), strict=True):
        if p.rule not in COMPUTE:
            continue
        resources = dict(p.resources)
        threads = int(p.options()["threads"])
        assert int(resources["runtime"]) == estimator.runtime(job, threads), p.argv
        assert int(resources["mem_mb"]) == estimator.mem_mb(job, threads), p.argv
        if cfg["gpu"]:
            assert threads == estimator.threads(job), p.argv
        checked[p.rule] += 1
    assert set(checked) == set(COMPUTE)


# ---------------------------------------------------------------------------------------------
# Counts follow the config
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark() -> Estimator:
    """The benchmark's estimator as the workflow builds it (published sizes, assumed names)."""
    cfg = load_config([BENCHMARK])
    return config_estimator(cfg, REPO / "no-such-folder")


def _job(rule: str, method: str = "coop", dataset: str = "ImageNet", classes: str = "all",
         **kw) -> Job:
    cfg = load_config([BENCHMARK])
    recipe = {k: v for k, v in cfg["method_params"].get(method, {}).items()
              if k not in ("per_protocol", "per_dataset")}
    defaults = dict(dataset=dataset, method=method, classes=classes, recipe=recipe, shots=16,
                    eval_batch=128)
    return Job(rule, **{**defaults, **kw})


def test_benchmark_counts_follow_the_published_sizes(benchmark):
    w = benchmark.work(_job("features_test", dataset="ImageNetSketch"))
    assert w.image_fwd == w.decoded == 50889
    w = benchmark.work(_job("features_fewshot", views=8))
    assert w.image_fwd == 16 * 1000 * (1 + 8) + 4 * 1000  # train views and CoOp's 4-shot val
    # CoOp on ImageNet's 1,000 classes: every sample's own prompt with every class text
    # "[SOT] a photo of a <name>. [EOT]": its "[SOT] + 4 context" prefix once (shared by the
    # classes), then each class's name, "." and [EOT], for 5 steps
    overfit = {"steps": 5, "batch_size": 64, "lr": 0.003}
    seq = 1 + 4 + 1000 * (2 + ASSUMED_NAME_TOKENS)
    w = benchmark.work(_job("overfit", stage=overfit))
    assert w.text_train == 5 * 16000 * seq
    assert w.image_train == w.decoded == 0  # cached frozen features
    base = benchmark.work(_job("overfit", classes="base", stage=overfit))
    assert base.text_train == 5 * 8000 * (1 + 4 + 500 * (2 + ASSUMED_NAME_TOKENS))
    vpt = benchmark.work(_job("overfit", method="vpt", stage=overfit))
    assert vpt.image_train == 5 * 16000 and vpt.text_train == 0
    # baseline training: 200 epochs of CoOp on base classes, batches of 32, one shared prompt
    w = benchmark.work(_job("train", dataset="EuroSAT", classes="base",
                            recipe={"n_ctx": 4, "init": "a photo of a", "epochs": 200,
                                    "batch_size": 32}))
    assert w.text_train == 200 * 3 * (1 + 4 + 5 * (2 + ASSUMED_NAME_TOKENS))  # 80 images: 3 steps
    sampling = {"solver": "euler", "steps": 5, "draws": 1}
    w = benchmark.work(_job("evaluate_diffusion", method="vpt",
                            sets=(("ImageNet", "all"), ("ImageNetA", "all")), sampling=sampling))
    assert w.image_fwd == 50000 + 7500
    tokens = 12 * 8  # VPT-deep: 8 vision tokens on each of the 12 layers
    assert w.dit_fwd == (50000 + 7500) * 5 * tokens


def test_counts_scale_with_the_config(benchmark):
    recipe = {"n_ctx": 4, "init": "a photo of a", "epochs": 10, "batch_size": 1}
    one = benchmark.work(_job("train", method="cocoop", recipe=recipe))
    two = benchmark.work(_job("train", method="cocoop", recipe={**recipe, "epochs": 20}))
    assert two.text_train == 2 * one.text_train
    stage = {"steps": 5, "batch_size": 64}
    w16 = benchmark.work(_job("overfit", method="maple", stage=stage))
    w32 = benchmark.work(_job("overfit", method="maple", stage=stage, shots=32))
    assert (w32.text_train, w32.image_train) == (2 * w16.text_train, 2 * w16.image_train)
    # the DiT's classification term: rows x classes texts per step, or a sampled share
    dit = {"steps": 100, "batch_size": 128, "cls_weight": 0.1, "holdout": 0.0}
    full = benchmark.work(_job("fit_diffusion", stage=dit))
    assert full.text_train == 100 * 128 * (1 + 4 + 1000 * (2 + ASSUMED_NAME_TOKENS))
    half = benchmark.work(_job("fit_diffusion", stage={**dit, "cls_negatives": 499}))
    assert half.text_train == full.text_train / 2


def test_max_pairs_bounds_the_live_text(benchmark):
    """compute.max_pairs chunks a step's (image, class) texts: the peak falls, the work not;
    a config that leaves it out is planned under pdiff's default, as its jobs run."""
    assert benchmark.max_pairs == DEFAULT_MAX_PAIRS
    job = _job("overfit", stage={"steps": 5, "batch_size": 64})
    unbounded = dataclasses.replace(benchmark, max_pairs=None)
    assert unbounded.work(job).text_train == benchmark.work(job).text_train
    # micro-batches of whole samples: max_pairs // 1000 of them, each with its 1,000 classes
    assert benchmark.work(job).step_text_train * 64 == pytest.approx(
        unbounded.work(job).step_text_train * (DEFAULT_MAX_PAIRS // 1000))
    assert benchmark.peak_bytes(benchmark.work(job)) < unbounded.peak_bytes(
        unbounded.work(job)) / 10


@pytest.mark.parametrize("method", ["vpt", "maple", "promptsrc"])
def test_max_images_bounds_the_images_under_autograd(benchmark, method):
    """compute.max_images: overfitting an image-prompt method holds one micro-batch of images
    (and, for MaPLe and PromptSRC, its samples' class texts), as pdiff.overfit runs it."""
    assert benchmark.max_images == DEFAULT_MAX_IMAGES
    job = _job("overfit", method=method, dataset="EuroSAT", classes="base",
               stage={"steps": 5, "batch_size": 64})
    unbounded = dataclasses.replace(benchmark, max_images=None)
    bounded, whole = benchmark.work(job), unbounded.work(job)
    assert (bounded.step_image_train, whole.step_image_train) == (DEFAULT_MAX_IMAGES, 64)
    assert bounded.image_train == whole.image_train  # the work is the same
    if method != "vpt":
        assert bounded.step_text_train * 64 == pytest.approx(
            whole.step_text_train * DEFAULT_MAX_IMAGES)
    assert benchmark.peak_bytes(bounded) < unbounded.peak_bytes(whole) / 2


def test_amp_gives_the_towers_a_bf16_rate_and_half_the_activations():
    """backbone.amp on a GPU: the frozen towers at ASSUMED_AMP_FLOPS with bf16 activations;
    the DiT and the weights as in fp32. On a CPU autocast is off: nothing changes."""
    arch, dit = Arch.of("ViT-B-16"), load_config([BENCHMARK])["diffusion"]
    fp32, bf16 = (Throughputs.assumed(arch, dit, "gpu", amp) for amp in (False, True))
    ratio = ASSUMED_AMP_FLOPS["gpu"] / ASSUMED_FLOPS["gpu"]
    for unit in ("image_fwd", "image_train", "text_fwd", "text_train"):
        assert getattr(bf16, unit) == pytest.approx(ratio * getattr(fp32, unit)), unit
    for unit in ("image_bytes", "text_bytes"):
        assert getattr(bf16, unit) == getattr(fp32, unit) / 2, unit
    for unit in ("dit_train", "dit_fwd", "dit_bytes", "weights_bytes"):
        assert getattr(bf16, unit) == getattr(fp32, unit), unit
    assert "bf16" in bf16.source and "bf16" not in fp32.source
    cpu = Throughputs.assumed(arch, dit, "cpu", True)
    assert dataclasses.replace(cpu, source="") == dataclasses.replace(
        Throughputs.assumed(arch, dit, "cpu"), source="")


@pytest.mark.dryrun
def test_every_benchmark_job_fits_a_16_gib_card_in_fp32(tmp_path):
    """Under pdiff's default budgets every job of config/benchmark.yaml peaks below 16 GiB
    with room to spare, in fp32 (backbone.amp off): the cost model's estimate per rule."""
    result = plan_cost([BENCHMARK], throughputs([BENCHMARK]), tmp_path)
    assert result.max_pairs == DEFAULT_MAX_PAIRS and result.max_images == DEFAULT_MAX_IMAGES
    peaks = {r.rule: r.peak for r in result.rules}
    assert all(peak <= 14e9 for peak in peaks.values()), peaks
    assert peaks["overfit"] > 0 and result.total.peak < 16 * 2**30


@pytest.mark.dryrun
def test_doubling_seeds_doubles_the_runs_hours(tmp_path):
    """Seeds multiply every run's jobs (draws, training, stores, DiTs, evaluations) but not the
    test-split features or zero-shot CLIP."""
    cfg = load(SMOKE)
    one = write_config(tmp_path, {**cfg, "seeds": [1]}, "one.yaml")
    two = write_config(tmp_path, {**cfg, "seeds": [1, 2]}, "two.yaml")
    thr = throughputs([one])
    plans = [{r.rule: r for r in plan_cost([c], thr, tmp_path / c.stem).rules}
             for c in (one, two)]
    for rule in ("features_fewshot", "train", "overfit", "fit_diffusion", "evaluate_baseline",
                 "evaluate_diffusion"):
        assert plans[1][rule].work.jobs == 2 * plans[0][rule].work.jobs, rule
        assert plans[1][rule].seconds == pytest.approx(2 * plans[0][rule].seconds), rule
    for rule in ("features_test", "evaluate_zeroshot"):
        assert plans[1][rule].seconds == pytest.approx(plans[0][rule].seconds), rule


# ---------------------------------------------------------------------------------------------
# The model matches the code it models
# ---------------------------------------------------------------------------------------------

PARAMS = {"n_ctx": 2, "init": "a photo of a", "depth": 3, "n_ctx_vision": 3}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_costs_match_the_methods(backbone, name):
    """Every registered method has a cost entry whose traits and prompt layout (the DiT's
    tokens and width) are the method's own."""
    # each method takes only its own keys
    params = {k: v for k, v in PARAMS.items()
              if k in METHODS[name].config_type.keys()}
    method = METHODS[name](backbone, ["red circle", "blue square"], "a photo of a {}.", params)
    cost = METHOD_COST[name]
    arch = Arch.of("pdiff-tiny")
    assert cost.images == method.needs_images
    assert cost.context == isinstance(method, ContextMethod)
    n_ctx = PARAMS["n_ctx"]
    assert cost.prompt_tokens(PARAMS, n_ctx, arch) == method.layout.num_tokens
    assert cost.prompt_width(PARAMS, n_ctx, arch) == method.layout.token_dim
    assert set(METHOD_COST) == set(METHODS)


def test_text_positions_are_each_sequences_own_length(backbone):
    """A class text's positions are [SOT], the context, the name's own tokens, "." and [EOT];
    a template adds its own tokens around the name (the tokenizer never merges across them)."""
    names = ["red circle", "letter T", "737-800", "Apply Eye Makeup", "outdoor bus station"]
    count = token_counter("pdiff-tiny")
    for n_ctx, phrase in ((4, None), (2, "a photo of a")):
        texts = ClassTexts(backbone, names, n_ctx, phrase)
        positions = max(n_ctx, count([phrase])[0]) if phrase else n_ctx
        assert (texts.eot + 1).tolist() == [3 + positions + k for k in count(names)]
    template = "a centered satellite photo of {}."
    tmpl = template_tokens(template, lambda t: count([t])[0])
    full = count([template.replace("{}", n) for n in names])
    assert [tmpl - 2 + k for k in count(names)] == full


# ---------------------------------------------------------------------------------------------
# Throughput files and the command line
# ---------------------------------------------------------------------------------------------


def test_throughput_file_round_trips(tmp_path):
    thr = throughputs([BENCHMARK])
    path = tmp_path / "throughputs.json"
    thr.save(path)
    assert Throughputs.load(path) == thr
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format": "other"}))
    with pytest.raises(PdiffError, match="not a pdiff-throughputs"):
        Throughputs.load(path)
    del data["image_fwd"]
    path.write_text(json.dumps(data))
    with pytest.raises(PdiffError, match="lack"):
        Throughputs.load(path)


@pytest.mark.dryrun
def test_plan_cost_prints_the_table_from_a_throughput_file(tmp_path, capsys):
    path = tmp_path / "throughputs.json"
    throughputs([SMOKE]).save(path)
    assert main(["plan-cost", "--configfile", str(SMOKE), "--throughputs", str(path),
                 "--directory", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    counts, _ = plan(tmp_path, SMOKE)
    assert f"{sum(counts.values())} jobs" in out
    for rule, n in counts.items():
        assert re.search(rf"^{rule}\s+{n}\s", out, re.M), rule
    assert re.search(r"^total\s+\d+", out, re.M) and "assumed: 10 TFLOP/s" in out


def test_measure_only_writes_a_throughput_file(tmp_path, capsys, monkeypatch):
    def validate(*args):  # a GPU node measuring may lack Snakemake, whose validate this is
        raise AssertionError("--measure-only validated the config with Snakemake")

    monkeypatch.setattr("pdiff.plan.config.validate", validate)
    path = tmp_path / "measured.json"
    assert main(["plan-cost", "--configfile", str(SMOKE), "--measure-only", "--out", str(path),
                 "--seconds", "0.01", "--threads", "1"]) == 0
    thr = Throughputs.load(path)
    assert thr.source == "measured" and thr.model == "pdiff-tiny"
    rates = ("image_fwd", "image_train", "text_fwd", "text_train", "dit_train", "dit_fwd",
             "decode", "weights_bytes", "image_bytes", "text_bytes", "dit_bytes")
    assert all(getattr(thr, k) > 0 for k in rates)
    assert thr.dit == {k: load(SMOKE)["diffusion"][k] for k in ("width", "depth", "heads")}
    assert "written to" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The SLURM profile's resources
# ---------------------------------------------------------------------------------------------


@pytest.mark.dryrun
def test_slurm_profile_sizes_each_job(tmp_path):
    """The benchmark through the SLURM profile: a job's runtime and mem_mb grow with its dataset
    (ImageNet's jobs ask for more than EuroSAT's), no rule has one value for every job."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    res = run([SNAKEMAKE, "-n", "--snakefile", REPO / "Snakefile", "--directory", tmp_path,
               "--configfile", BENCHMARK, "--workflow-profile",
               REPO / "workflow" / "profiles" / "slurm"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    asked: dict[tuple[str, str], list[tuple[int, int]]] = collections.defaultdict(list)
    for block in re.split(r"\n(?=rule \w+:)", res.stdout + res.stderr):
        m = re.match(r"rule (\w+):", block)
        wildcards = re.search(r"^    wildcards: .*\bdataset=(\w+)", block, re.M)
        resources = re.search(r"^    resources: (.*)$", block, re.M)
        if m and wildcards and resources and m.group(1) in COMPUTE:
            r = dict(kv.split("=", 1) for kv in resources.group(1).split(", "))
            asked[m.group(1), wildcards.group(1)].append((int(r["runtime"]),
                                                          int(r["mem_mb"])))
    for rule in COMPUTE:
        imagenet, eurosat = asked[rule, "ImageNet"], asked[rule, "EuroSAT"]
        assert imagenet and eurosat, rule
        assert max(r for r, _ in imagenet) >= max(r for r, _ in eurosat), rule
        assert max(m for _, m in imagenet) >= max(m for _, m in eurosat), rule
        # a few class texts, or (fresh crops, no cached views) one pass over a few-shot draw:
        # the minimum runtime for both
        if rule not in ("evaluate_zeroshot", "features_fewshot"):
            assert max(r for r, _ in imagenet) > max(r for r, _ in eurosat), rule
    for rule in ("features_test", "train", "overfit", "fit_diffusion"):
        assert max(m for _, m in asked[rule, "ImageNet"]) > max(
            m for _, m in asked[rule, "EuroSAT"]), rule
