"""The Snakemake workflow without the `pdiff` CLI: lint, format, dry-run plans, bad configs, and
the params and code rerun triggers (on a run whose `pdiff` is a stub that writes placeholder
outputs, from a copy of the workflow and of pdiff's sources).

Nothing here writes into the repository's results/: every plan and run uses --directory into a
temporary folder (lint and snakefmt only read the repo).
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from pdiff.plan.config import merge
from tests.helpers import (
    BENCHMARK,
    DEMO,
    REPO,
    SMOKE,
    SNAKEFMT,
    SNAKEMAKE,
    job_counts,
    load,
    plan,
    run,
    snakemake,
    write_config,
)
from tests.helpers import set_key as _set
from tests.helpers import shell_commands as _shell_commands

# Every test here plans with Snakemake (or only reads the workflow); those that run the smoke DAG
# with the stub `pdiff` are marked `workflow` as well.
pytestmark = pytest.mark.dryrun

STAGES = ["data", "backbone", "prompts", "overfit", "diffusion", "evaluate", "report"]


# The paper's method as the `paper` preset sets it over each stage's section (no per-method
# entries): no KL anchor, no classification term, no hold-out, Gaussian prompts, five steps.
PAPER = {"overfit": {"kl_weight": 0.0}, "diffusion": {"cls_weight": 0.0, "holdout": 0.0},
         "sampling": {"start": "noise", "steps": 5}}


def paper_changes(cfg: dict, method: str) -> list[bool]:
    """Per stage (overfit, diffusion, sampling): whether the paper's section differs from the
    one configured for `method` (a key only the configured one has counts as a difference)."""
    changes = []
    for stage, setting in PAPER.items():
        section = {k: v for k, v in cfg[stage].items() if k != "per_method"}
        mine = section | cfg[stage].get("per_method", {}).get(method, {})
        paper = section | setting
        changes.append(paper != mine)
    return changes


def expected_counts(cfg: dict) -> dict[str, int]:
    """Job counts per rule that a config implies (an independent re-derivation of the DAG):
    one evaluation job per trained run and mode, one zero-shot job per dataset, and with the
    paper preset a store, DiT or evaluation more per run for each stage it changes from there
    on."""
    protocols = cfg["protocols"]
    methods = [m for m in cfg["methods"] if m != "zeroshot"]
    b2n = protocols.get("base2new", {}).get("datasets", [])
    transfer = [
        d
        for p in ("cross_dataset", "domain_generalization")
        if p in protocols
        for d in [protocols[p]["source"], *protocols[p]["targets"]]
    ]
    runs = {(d, m, "base", s) for d in b2n for m in methods for s in cfg["seeds"]}
    if transfer:
        runs |= {(transfer[0], m, "all", s) for m in methods for s in cfg["seeds"]}
    pretrained = cfg["backbone"]["pretrained"]
    counts = {
        "check_data": len(set(b2n) | set(transfer)),
        "fetch_weights": int(pretrained not in ("shipped", "pretrain") and "/" not in pretrained),
        "prepare": int(cfg["data"]["source"] == "synthetic"),
        "pretrain": int(pretrained == "pretrain"),
        "fewshot": len({(d, s) for d, _, _, s in runs}),
        # one feature cache per test split and per draw, whatever method or seed reads it
        "features_test": len(set(b2n) | set(transfer)),
        "features_fewshot": len({(d, s) for d, _, _, s in runs}),
        "train": len(runs),
        "overfit": len(runs),
        "fit_diffusion": len(runs),
        "evaluate_baseline": len(runs),
        "evaluate_diffusion": len(runs),
        "evaluate_zeroshot": len(set(b2n) | set(transfer)),
        "report": 1,
        "all": 1,
    }
    for _, method, _, _ in runs if "paper" in cfg.get("presets", []) else ():
        overfit, diffusion, sampling = paper_changes(cfg, method)
        counts["overfit"] += overfit
        counts["fit_diffusion"] += overfit or diffusion
        counts["evaluate_diffusion"] += overfit or diffusion or sampling
    return {k: v for k, v in counts.items() if v}


# ---------------------------------------------------------------------------------------------
# Static checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/smoke.yaml"])
def test_lint_clean(configfile):
    res = run([SNAKEMAKE, "--lint", "--configfile", configfile])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations" in res.stdout + res.stderr


def test_snakefmt_clean():
    res = run([SNAKEFMT, "--check", "Snakefile", "workflow/"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_one_file_per_stage_and_every_rule_complete():
    rules_dir = REPO / "workflow" / "rules"
    for stage in ["common", *STAGES]:
        assert (rules_dir / f"{stage}.smk").is_file(), stage
    snakefile = (REPO / "Snakefile").read_text()
    assert re.findall(r"^rule (\w+):", snakefile, re.M) == ["all"], "the Snakefile stays thin"
    for stage in STAGES:
        text = (rules_dir / f"{stage}.smk").read_text()
        blocks = re.split(r"^\s*rule (\w+):\n", text, flags=re.M)[1:]
        assert blocks, stage
        for name, body in zip(blocks[::2], blocks[1::2], strict=True):
            for directive in ["log:", "benchmark:", "threads:", "resources:", "conda:", "params:"]:
                assert directive in body, f"rule {name} lacks {directive}"
            assert "mem_mb=" in body and "runtime=" in body, f"rule {name} resources"
            assert '"../../envs/pdiff.yaml"' in body, f"rule {name} conda env"
            assert "{threads}" in body and "> {log:q} 2>&1" in body, f"rule {name} shell"


def test_smoke_config_is_self_contained():
    """smoke.yaml validates alone (the tests use it without the demo config underneath)."""
    demo, smoke = load(DEMO), load(SMOKE)
    assert set(demo) <= set(smoke), set(demo) - set(smoke)
    assert smoke["world"]["colours"] == 4 and smoke["world"]["objects"] == 3
    assert smoke["backbone"]["pretrained"] == "pretrain"


# ---------------------------------------------------------------------------------------------
# Dry-run plans
# ---------------------------------------------------------------------------------------------


def test_feature_caches_are_planned_once_and_read_by_every_method_and_seed(tmp_path):
    """One cache per test split and per draw, whatever method, seed or mode reads it."""
    cfg = load(SMOKE) | {"seeds": [1, 2], "methods": ["coop", "maple", "vpt"]}
    cfg["method_params"]["vpt"] = {"n_ctx": 2, "depth": 1, "optimizer": "adam", "lr": 0.01,
                                   "batch_size": 8, "epochs": 1}
    res = snakemake(tmp_path, "-n", "-p", configfile=write_config(tmp_path, cfg))
    assert res.returncode == 0, res.stdout + res.stderr
    cmds = _shell_commands(res.stdout + res.stderr)
    made = Counter(a[a.index("--out") + 1] for a in cmds if a[1] == "features")
    assert set(made.values()) == {1} and len(made) == 3 + 2 * 2  # 3 test splits, 2 x 2 draws
    read = Counter(a[a.index("--features") + 1] for a in cmds if a[1] in ("train", "overfit"))
    draw = "results/smoke/features/shapes/shots4_seed1.h5"
    assert read[draw] == 2 * 3 * 2  # base and all-class runs x 3 methods x (train, overfit)
    tests = Counter(p for a in cmds if a[1] == "evaluate"
                    for p in json.loads(a[a.index("--features") + 1]).values())
    # zero-shot, then per seed and method: baseline and diffusion of its base run and of the
    # all-class source run (icons is a cross-dataset target too)
    assert tests["results/smoke/features/icons/test.h5"] == 1 + 2 * 3 * 2 * 2


def test_demo_plan(tmp_path):
    counts, _ = plan(tmp_path, DEMO)
    assert counts == expected_counts(load(DEMO))
    # (4 base-to-new + 1 all-class source run) x 3 methods, 8 datasets checked, cached and
    # zero-shot, 4 draws cached; the paper's method adds MaPLe's stores (no KL anchor; VPT has
    # none by default), and every DiT (no hold-out) and evaluation
    assert sum(counts.values()) == 110 + 5 + 15 + 15


def test_smoke_plan(tmp_path):
    counts, _ = plan(tmp_path, SMOKE)
    assert counts == expected_counts(load(SMOKE))
    assert counts["pretrain"] == 1 and sum(counts.values()) == 47


def test_more_seeds_and_methods_plan(tmp_path):
    cfg = load(SMOKE)
    cfg["seeds"] = [1, 2, 3]
    cfg["methods"] = ["zeroshot", "coop", "cocoop", "maple"]
    cfg["method_params"]["cocoop"] = {"n_ctx": 4, "init": "random", "optimizer": "sgd",
                                      "lr": 0.002, "epochs": 2, "batch_size": 1}
    counts, _ = plan(tmp_path, write_config(tmp_path, cfg))
    assert counts == expected_counts(cfg)
    assert counts["train"] == 3 * 3 * 3  # (2 base + 1 all) runs x 3 methods x 3 seeds


def test_overlay_switches_protocols_off(tmp_path):
    cfg = load(SMOKE)
    overlay = write_config(tmp_path, {"protocols": {"cross_dataset": None,
                                                    "domain_generalization": None}}, "off.yaml")
    counts, _ = plan(tmp_path, [SMOKE, overlay])
    cfg["protocols"] = {"base2new": cfg["protocols"]["base2new"]}
    assert counts == expected_counts(cfg)
    assert counts["train"] == 2 * 2  # 2 base-to-new datasets x 2 methods, no source run


def test_every_protocol_off_is_refused(tmp_path):
    overlay = write_config(tmp_path, {"protocols": {p: None for p in (
        "base2new", "cross_dataset", "domain_generalization")}}, "off.yaml")
    res = snakemake(tmp_path, "-n", configfile=[SMOKE, overlay])
    assert res.returncode != 0 and "keep at least one" in res.stdout + res.stderr


def test_all_methods_config_plans_every_method(tmp_path):
    overlay = REPO / "config" / "all-methods.yaml"
    counts, _ = plan(tmp_path, [DEMO, overlay])
    cfg = merge(load(DEMO), load(overlay))
    assert counts == expected_counts(cfg)
    assert len(cfg["methods"]) == 6 and len(cfg["seeds"]) == 3
    # (2 base-to-new datasets + 1 all-class source run) x 6 methods x 3 seeds
    assert counts["train"] == 3 * 6 * 3


def test_ablation_config_plans_its_settings(tmp_path):
    counts, _ = plan(tmp_path, [DEMO, REPO / "config" / "ablation.yaml"])
    ablation = load(REPO / "config" / "ablation.yaml")["ablation"]
    runs = 3 * 2  # coop, vpt, maple x 2 seeds on icons, no transfer runs

    def entries(stage, method):
        return sum(method in e.get("methods", [method]) for e in ablation[stage])

    def per_method(stage_list):
        return sum(2 * sum(entries(s, m) for s in stage_list) for m in ("coop", "vpt", "maple"))

    assert counts["train"] == runs
    assert counts["overfit"] == runs + per_method(["overfit"])
    assert counts["fit_diffusion"] == runs + per_method(["overfit", "diffusion"])
    assert counts["evaluate_diffusion"] == runs + per_method(["overfit", "diffusion", "sampling"])
    # the classification term is compared on CoOp only
    assert entries("diffusion", "coop") == entries("diffusion", "vpt") + 1


def test_quick_demo_keeps_every_host_preset_and_protocol_in_fewer_jobs(tmp_path):
    quick = REPO / "config" / "quick.yaml"
    counts, _ = plan(tmp_path / "quick", [DEMO, quick])
    cfg = merge(load(DEMO), load(quick))
    assert counts == expected_counts(cfg)
    assert cfg["methods"] == load(DEMO)["methods"] and cfg["presets"] == ["paper"]
    assert all(cfg["protocols"][p] for p in ("base2new", "cross_dataset", "domain_generalization"))
    full, _ = plan(tmp_path / "full", DEMO)
    assert sum(counts.values()) < 0.5 * sum(full.values())


def test_defaults_are_chosen_on_seeds_and_reported_on_others(tmp_path):
    """config/selection.yaml chooses on seed 1 of the quick demo (its own results, reused);
    config/claims.yaml reports other seeds, and config/world1.yaml a world nothing chose on."""
    quick, selection, claims, world1 = (REPO / "config" / f"{n}.yaml"
                                        for n in ("quick", "selection", "claims", "world1"))
    base = merge(load(DEMO), load(quick))
    chose = merge(base, load(selection))
    assert chose["results"] == base["results"] and chose["seeds"] == [1]
    assert chose["ablation"]["protocols"] == ["base2new", "cross_dataset",
                                              "domain_generalization"]
    reported = merge(base, load(claims))
    held_out = merge(reported, load(world1))
    assert not set(reported["seeds"]) & set(chose["seeds"]) and len(reported["seeds"]) == 3
    assert held_out["seeds"] == reported["seeds"]
    assert held_out["world"]["seed"] != base["world"]["seed"]
    assert len({c["results"] for c in (chose, reported, held_out)}) == 3
    for stage in ("overfit", "diffusion"):  # every entry differs from the defaults it ranks
        shared = {k: v for k, v in chose[stage].items() if k != "per_method"}
        for entry in chose["ablation"][stage]:
            setting = {k: v for k, v in entry.items() if k != "methods"}
            for method in entry.get("methods", chose["methods"]):
                default = shared | chose[stage].get("per_method", {}).get(method, {})
                assert default | setting != default, (method, entry)
    counts, _ = plan(tmp_path, [DEMO, quick, selection])
    assert counts["evaluate_val_diffusion"] and counts["evaluate_val_baseline"] == 3 * 2
    for cfgs in ([DEMO, quick, claims], [DEMO, quick, claims, world1]):
        counts, _ = plan(tmp_path / str(len(cfgs)), cfgs)
        assert counts["train"] == 3 * 2 * 3  # 3 hosts x (base-to-new + source run) x 3 seeds


def test_per_method_sweep_plans_each_setting_once_per_method_and_protocol(tmp_path):
    overlays = [REPO / "config" / "all-methods.yaml", REPO / "config" / "per-method-sweep.yaml"]
    counts, _ = plan(tmp_path, [DEMO, *overlays])
    cfg = merge(merge(load(DEMO), load(overlays[0])), load(overlays[1]))
    sweep = cfg["ablation"]
    runs = 3 * 6  # (2 base-to-new datasets + 1 all-class source run) x 6 methods, seed 1

    def settings(stage):
        return sum(len(e["methods"]) for e in sweep[stage])

    assert counts["train"] == runs
    # settings run on every protocol: 2 base-to-new datasets and the transfer source each
    assert counts["overfit"] == runs + 3 * settings("overfit")
    assert counts["fit_diffusion"] == runs + 3 * (settings("overfit") + settings("diffusion"))
    for stage in ("overfit", "diffusion"):
        shared = {k: v for k, v in cfg[stage].items() if k != "per_method"}
        for entry in sweep[stage]:  # a method's chosen setting is its default row, not again
            setting = {k: v for k, v in entry.items() if k != "methods"}
            for method in entry["methods"]:
                chosen = shared | cfg[stage]["per_method"].get(method, {})
                assert chosen | setting != chosen, (method, entry)


def test_default_profile_plans(tmp_path):
    res = run(
        [
            SNAKEMAKE,
            "-n",
            "--snakefile",
            REPO / "Snakefile",
            "--directory",
            tmp_path,
            "--configfile",
            SMOKE,
            "--workflow-profile",
            REPO / "workflow" / "profiles" / "default",
        ]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    profile = load(REPO / "workflow" / "profiles" / "default" / "config.yaml")
    assert profile["cores"] == 2 and profile["printshellcmds"] and profile["rerun-incomplete"]
    assert "software-deployment-method" not in profile


def test_coop_source_plans_without_datasets(tmp_path):
    """Like the benchmark: datasets not on disk, no prepare job; a dry run still plans."""
    cfg = load(SMOKE)
    cfg["data"] = {"root": str(tmp_path / "no-data"), "source": "coop"}
    cfg["backbone"]["pretrained"] = "openai"
    counts, out = plan(tmp_path, write_config(tmp_path, cfg))
    assert counts == expected_counts(cfg)
    assert "prepare" not in counts and "pretrain" not in counts
    assert counts["fetch_weights"] == 1 and counts["check_data"] == 3


def test_benchmark_plans_the_whole_study_without_data_or_gpu(tmp_path):
    counts, _ = plan(tmp_path, BENCHMARK)
    cfg = load(BENCHMARK)
    assert counts == expected_counts(cfg)
    # (11 base-to-new + 1 ImageNet all-class run) x 6 methods x 3 seeds, each run's prompt
    # diffusion evaluated as configured and as the paper describes it
    assert counts["train"] == counts["evaluate_diffusion"] / 2 == 12 * 6 * 3
    assert counts["check_data"] == counts["evaluate_zeroshot"] == 15


def _without_presets(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"presets": []}, "no-presets.yaml")


def test_the_paper_preset_reuses_every_job_it_does_not_change(tmp_path):
    """The demo with the paper's method beside pdiff's plans every job of the demo without it
    unchanged (same command, same params; only the report gains its rows), retrains no host,
    and shares each store whose overfitting the paper does not change (CoOp's and VPT's: no KL
    anchor by default), so only MaPLe's stores (no KL anchor) are new."""
    commands = {}
    for name, configs in (("pdiff", [DEMO, _without_presets(tmp_path)]), ("both", [DEMO])):
        res = snakemake(tmp_path, "-n", "-p", configfile=configs)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        commands[name] = {shlex.join(argv) for argv in _shell_commands(res.stdout + res.stderr)}
    kept = {c for c in commands["pdiff"] if not c.startswith("pdiff report")}
    assert kept <= commands["both"]
    added = Counter(c.split()[1] for c in commands["both"] - commands["pdiff"])
    assert added == {"overfit": 5, "fit-diffusion": 15, "evaluate": 15, "report": 1}
    stores = {re.search(r"--out (\S+)", c)[1] for c in commands["both"] - commands["pdiff"]
              if c.split()[1] == "overfit"}
    assert all("/maple/" in s for s in stores)
    assert {s.split("/")[-2] for s in stores} == {"kl_weight=0.0"}
    # CoOp's paper evaluation reads its default store
    assert any(c.startswith("pdiff evaluate --mode diffusion") and "/coop/" in c
               and "/default/holdout=0.0/dit.safetensors" in c for c in commands["both"])


def test_benchmark_plans_the_paper_and_pdiff_and_reports_both(tmp_path):
    both, out = plan(tmp_path, BENCHMARK)
    pdiff_only, _ = plan(tmp_path, [BENCHMARK, _without_presets(tmp_path)])
    assert both["train"] == pdiff_only["train"]  # no host retrained
    runs = 12 * 3  # per method: 11 base-to-new runs + the ImageNet all-class run, 3 seeds
    # new stores only for the methods with per-method overfitting (CoCoOp, MaPLe)
    assert both["overfit"] - pdiff_only["overfit"] == 2 * runs
    assert both["fit_diffusion"] - pdiff_only["fit_diffusion"] == 6 * runs
    res = snakemake(tmp_path, "-n", "-p", "report", configfile=BENCHMARK)
    (report,) = [argv for argv in _shell_commands(res.stdout + res.stderr) if argv[1] == "report"]
    presets = json.loads(_options(report)["params"][0])["presets"]["paper"]
    assert set(presets) == {"coop", "cocoop", "kgcoop", "vpt", "maple", "promptsrc"}
    assert presets["coop"] == {"overfit": "default", "diffusion": "cls_weight=0.0,holdout=0.0",
                               "sampling": "start=noise"}
    assert presets["cocoop"]["overfit"] == "lr=0.003,steps=5"
    assert presets["vpt"]["diffusion"] == "holdout=0.0"


def _options(argv: list[str]) -> dict[str, list[str]]:
    """A planned command's --options, each with its values."""
    opts: dict[str, list[str]] = {}
    for i, a in enumerate(argv):
        if a.startswith("--"):
            opts.setdefault(a[2:], []).append(argv[i + 1] if i + 1 < len(argv) else "")
    return opts


def _train_recipes(out: str) -> dict[tuple[str, str, str], dict]:
    """(method, dataset, classes) -> the --params of its planned `pdiff train` jobs (one recipe
    over the seeds)."""
    recipes: dict[tuple[str, str, str], dict] = {}
    for argv in _shell_commands(out):
        if argv[1] == "train":
            opts = _options(argv)
            run = (opts["method"][0], json.loads(opts["dataset"][0])["name"],
                   opts["classes"][0])
            recipe = json.loads(opts["params"][0])
            assert recipes.setdefault(run, recipe) == recipe, run
    return recipes


def test_benchmark_trains_each_protocol_with_its_released_recipe(tmp_path):
    """MaPLe's ImageNet all-class run, which cross-dataset and DG evaluate, trains with MaPLe's
    released cross-dataset config, its base-class runs with the base-to-new one; CoOp trains 200
    epochs on base classes except on ImageNet (50), as in CoCoOp's released scripts."""
    res = snakemake(tmp_path, "-n", "-p", configfile=BENCHMARK)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    recipes = _train_recipes(res.stdout + res.stderr)
    maple = load(BENCHMARK)["method_params"]["maple"]
    shared = {k: v for k, v in maple.items() if k != "per_protocol"}
    # vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml vs vit_b16_c2_ep5_batch4_2ctx.yaml
    assert recipes["maple", "ImageNet", "all"] == shared | {"depth": 3, "lr": 0.0026,
                                                            "epochs": 2}
    for dataset in ("ImageNet", "Caltech101", "EuroSAT"):
        assert recipes["maple", dataset, "base"] == shared
        assert shared["depth"] == 9 and shared["lr"] == 0.0035 and shared["epochs"] == 5
    assert recipes["promptsrc", "ImageNet", "all"]["depth"] == 3
    assert recipes["promptsrc", "ImageNet", "base"]["depth"] == 9
    assert {run: recipe["epochs"] for run, recipe in recipes.items() if run[0] == "coop"
            and run[1] in ("ImageNet", "OxfordPets")} == {
        ("coop", "ImageNet", "all"): 50, ("coop", "ImageNet", "base"): 50,
        ("coop", "OxfordPets", "base"): 200}
    # methods whose released scripts train both protocols with one file: one recipe
    for method in ("cocoop", "kgcoop", "vpt"):
        assert len({json.dumps(r, sort_keys=True) for run, r in recipes.items()
                    if run[0] == method}) == 1, method


def test_shell_commands_follow_the_cli_contract(tmp_path):
    res = snakemake(tmp_path, "-n", "-p", configfile=SMOKE)
    assert res.returncode == 0, res.stdout + res.stderr
    cmds = _shell_commands(res.stdout + res.stderr)
    smoke = load(SMOKE)
    seen = Counter()
    for argv in cmds:
        assert argv[0] == "pdiff", argv
        sub = argv[1]
        opts = _options(argv)
        assert "threads" in opts, argv
        for k in ("params", "dataset", "backbone", "world"):
            if k in opts:
                assert isinstance(json.loads(opts[k][0]), dict), (k, argv)
        if "backbone" in opts:
            backbone = json.loads(opts["backbone"][0])
            assert backbone == {
                "model": "pdiff-tiny",
                "pretrained": "results/smoke/backbone/pdiff-tiny.safetensors",
            }
        if "dataset" in opts:
            ds = json.loads(opts["dataset"][0])
            assert ds == {"name": ds["name"], **smoke["datasets"][ds["name"]]}
        for entry in json.loads(opts["sets"][0]) if "sets" in opts else []:
            ds = entry["dataset"]
            assert ds == {"name": ds["name"], **smoke["datasets"][ds["name"]]}
            assert entry["split"] in ("base", "new", "all")
            cache = json.loads(opts["features"][0])[ds["name"]]
            assert cache == f"results/smoke/features/{ds['name']}/test.h5"
        if sub in ("train", "overfit"):
            assert re.fullmatch(r"results/smoke/features/\w+/shots4_seed1\.h5",
                                opts["features"][0]), argv
        if sub == "evaluate":
            mode = opts["mode"][0]
            params = json.loads(opts["params"][0])
            want = {"evaluation": smoke["evaluation"]}
            if mode == "diffusion":
                want["sampling"] = smoke["sampling"]
                assert opts["dit"][0].endswith("dit.safetensors")
            else:
                assert "dit" not in opts
            assert params == want, argv
            if mode == "zeroshot":
                assert "prompt" not in opts and opts["seed"] == ["0"]
            seen[f"evaluate-{mode}"] += 1
        else:
            seen[sub] += 1
        if sub == "train":
            method = opts["method"][0]
            assert json.loads(opts["params"][0]) == smoke["method_params"][method]
        if sub == "overfit":
            assert json.loads(opts["params"][0]) == smoke["overfit"]
        if sub == "fit-diffusion":
            assert json.loads(opts["params"][0]) == smoke["diffusion"]
        if sub == "pretrain":
            assert json.loads(opts["params"][0]) == smoke["backbone"]["pretrain"]
            world = {k: smoke["world"][k] for k in ("colours", "objects", "image_size")}
            assert json.loads(opts["world"][0]) == world
        if sub == "check-data":
            (entry,) = json.loads(opts["datasets"][0])
            assert entry == {"name": entry["name"], **smoke["datasets"][entry["name"]]}
        if sub == "prepare":
            assert json.loads(opts["params"][0]) == smoke["world"]
        if sub == "report":
            assert json.loads(opts["params"][0]) == {
                "protocols": smoke["protocols"],
                "methods": smoke["methods"],
                "seeds": smoke["seeds"],
                "reference": smoke["report"]["reference"],
                "ablation_protocols": ["base2new"],  # the default with base-to-new
            }
            assert len(opts["inputs"]) == 1  # (one flag, many values)
    assert seen == {
        "prepare": 1,
        "pretrain": 1,
        "check-data": 3,
        "fewshot": 2,
        "features": 3 + 2,
        "train": 6,
        "overfit": 6,
        "fit-diffusion": 6,
        "evaluate-baseline": 6,
        "evaluate-diffusion": 6,
        "evaluate-zeroshot": 3,
        "report": 1,
    }


@pytest.mark.parametrize("configfile", [DEMO, SMOKE])
def test_shell_commands_parse_with_the_cli(tmp_path, configfile):
    """Every planned command is accepted by the real `pdiff` parser (skipped without it)."""
    cli = pytest.importorskip("pdiff.cli")
    res = snakemake(tmp_path, "-n", "-p", configfile=configfile)
    assert res.returncode == 0, res.stdout + res.stderr
    parser = cli.build_parser()
    for argv in _shell_commands(res.stdout + res.stderr):
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"pdiff rejects: {shlex.join(argv)[:500]}")


def test_conda_env_mirrors_pyproject():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = load(REPO / "envs" / "pdiff.yaml")
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in env["dependencies"]
    want = {re.split(r"[<>=!~ ]", d)[0].lower() for d in deps} - {"snakemake"}
    have = {re.split(r"[<>=!~ ]", d)[0].lower() for d in pip}
    assert want <= have, want - have
    assert (REPO / "envs" / "pdiff.post-deploy.sh").is_file()


# ---------------------------------------------------------------------------------------------
# Bad configs are rejected before any job, naming the key
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("methods", ["coop", "foo"], ["methods", "'foo' is not one of"]),
        ("shots", 0, ["shots", "minimum of 1"]),
        ("sampling.steps", 0, ["['sampling']['steps']", "minimum of 1"]),
        ("sampling.solver", "dopri5", ["['sampling']['solver']"]),
        ("diffusion.objective", "ddpm", ["['diffusion']['objective']"]),
        ("seeds", [], ["seeds"]),
        ("seeds", [0], ["seeds"]),
        ("overfit.lr_typo", 0.1, ["lr_typo", "overfit"]),
        ("method_params.coop.n_ctxx", 4, ["n_ctxx", "['method_params']['coop']"]),
        ("world.colours", 1, ["['world']['colours']"]),
        ("data.source", "imagenet", ["['data']['source']"]),
        (
            "protocols.base2new.datasets",
            ["shapes", "nope"],
            ["protocols.base2new.datasets", "'nope'", "datasets"],
        ),
        (
            "protocols.cross_dataset.targets",
            ["imagenet"],
            ["protocols.cross_dataset.targets", "'imagenet'"],
        ),
        ("methods", ["coop", "vpt"], ["method_params", "'vpt'"]),
        ("diffusion.heads", 3, ["diffusion.width", "diffusion.heads"]),
        ("protocols.domain_generalization.source", "icons", ["differ", "same source"]),
        ("diffusion.per_method", {"vtp": {"steps": 9}}, ["diffusion.per_method", "'vtp'"]),
        ("diffusion.per_method", {"coop": {"target": "both"}},
         ["diffusion.per_method.coop", "'both'"]),
        ("presets", ["pdiff"], ["presets", "'pdiff' is not one of"]),
        ("method_params.maple.per_protocol", {"transfer": {"depth": -1}},
         ["method_params.maple.per_protocol.transfer", "minimum of 0"]),
        ("method_params.maple.per_protocol", {"cross_dataset": {"depth": 3}},
         ["cross_dataset", "['method_params']['maple']"]),
        ("method_params.coop.per_dataset", {"imagenet": {"epochs": 3}},
         ["method_params.coop.per_dataset.imagenet", "catalogue"]),
        ("method_params.coop.per_dataset", {"shapes": {"per_protocol": {}}},
         ["method_params.coop.per_dataset.shapes", "do not nest"]),
    ],
)
def test_bad_config_rejected(tmp_path, key, value, expected):
    cfg = _set(load(SMOKE), key, value)
    res = snakemake(tmp_path, "-n", configfile=write_config(tmp_path, cfg))
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    for text in expected:
        assert text in out, (text, out[-2000:])
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------
# Params and code rerun triggers, on a real run of the smoke DAG with a stub `pdiff`, from a
# copy of the workflow and of pdiff's sources (so that a test can edit a stage module)
# ---------------------------------------------------------------------------------------------

STUB = '''\
#!{python}
"""Stand-in for the pdiff CLI: placeholder outputs, valid evaluation JSON, the real report."""
import json
import sys
from pathlib import Path

sys.path.insert(0, {repo!r})
argv = sys.argv[1:]
sub, opts, key = argv[0], {{}}, None
for a in argv[1:]:
    if a.startswith("--"):
        key = a[2:]
        opts[key] = []
    else:
        opts[key].append(a)


def put(path, text="stub\\n"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if sub == "prepare":
    put(opts["manifest"][0], json.dumps({{"world": json.loads(opts["params"][0])}}))
elif sub == "pretrain":
    put(opts["out"][0])
    put(opts["metrics"][0], "{{}}")
elif sub == "evaluate":
    mode = opts["mode"][0]
    rec = dict(mode=mode, method="zeroshot", train_dataset=None, train_classes=None, seed=None)
    if mode != "zeroshot":
        d, m, classes, seed = Path(opts["prompt"][0]).parts[-5:-1]
        rec.update(method=m, train_dataset=d, train_classes=classes, seed=int(seed[4:]))
    rec.update(
        accuracy=50.0, correct=50, total=100, ece=0.1, seconds=0.1, images_per_second=1000.0,
        nfe=1, sampling=json.loads(opts["params"][0]).get("sampling"),
    )
    if "variant" in opts:
        rec["variant"] = json.loads(opts["variant"][0])
    records = [dict(rec, target=s["dataset"]["name"], split=s["split"])
               for s in json.loads(opts["sets"][0])]
    put(opts["out"][0], json.dumps({{"evaluations": records}}))
elif sub == "fit-diffusion":
    put(opts["out"][0])
    d, m, classes, seed = Path(opts["prompt"][0]).parts[-5:-1]
    agreement = dict(cosine_mean=0.5, correlation_mean=0.5, norm_ratio=1.0, n=1)
    put(opts["diagnostics"][0], json.dumps(dict(method=m, seed=int(seed[4:]),
                                                held_out=agreement, train=agreement)))
elif sub == "report":
    from pdiff.report import make_report

    make_report(inputs=[Path(p) for p in opts["inputs"]], params=json.loads(opts["params"][0]),
                out_dir=Path(opts["out-dir"][0]),
                diagnostics=[Path(p) for p in opts.get("diagnostics", [])])
else:
    put(opts["out"][0])
'''


def _copy_sources(dest: Path) -> Path:
    """The Snakefile, workflow/, config/, envs/ and pdiff's *.py files (and its model configs,
    which the workflow's cost model reads) copied to `dest`: the code fingerprints of the copy's
    rules hash the copy, which a test may edit. Returns the Snakefile."""
    dest.mkdir()
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    for folder in ("workflow", "config", "envs"):
        shutil.copytree(REPO / folder, dest / folder)

    def not_source(folder, names):
        return [n for n in names if not (Path(folder, n).is_dir() or n.endswith(".py")
                                         or Path(folder).name == "model_configs")
                or n == "__pycache__"]

    shutil.copytree(REPO / "pdiff", dest / "pdiff", ignore=not_source)
    return dest / "Snakefile"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke DAG run once with the stub CLI; returns (workdir, bin dir, Snakefile)."""
    root = tmp_path_factory.mktemp("smoke_run")
    bindir = root / "bin"
    bindir.mkdir()
    stub = bindir / "pdiff"
    stub.write_text(STUB.format(python=sys.executable, repo=str(REPO)))
    stub.chmod(0o755)
    snakefile = _copy_sources(root / "repo")
    workdir = root / "work"
    workdir.mkdir()
    res = snakemake(workdir, "--cores", "2", configfile=SMOKE, path=bindir, snakefile=snakefile)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return workdir, bindir, snakefile


def _replan(smoke_run, tmp_path, change: dict) -> dict[str, int]:
    workdir, bindir, snakefile = smoke_run
    cfg = load(SMOKE)
    for key, value in change.items():
        cfg = _set(cfg, key, value)
    res = snakemake(
        workdir,
        "-n",
        "--quiet",
        "rules",
        configfile=write_config(tmp_path, cfg),
        path=bindir,
        snakefile=snakefile,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return job_counts(res.stdout + res.stderr)


@pytest.mark.workflow
def test_stub_run_writes_the_report(smoke_run):
    workdir, _, _ = smoke_run
    report = workdir / "results" / "smoke" / "report"
    for name in ["base2new.csv", "cross_dataset.md", "domain_generalization.csv", "summary.json"]:
        assert (report / name).is_file(), name
    assert (report / "figures" / "base2new.png").read_bytes().startswith(b"\x89PNG")
    assert (workdir / "results/smoke/logs/train/shapes/coop/base/seed1.log").is_file()
    assert (workdir / "results/smoke/benchmarks/report/report.tsv").is_file()


@pytest.mark.workflow
def test_adding_the_paper_preset_runs_only_its_own_stages_and_reports_it(smoke_run, tmp_path):
    """On a finished smoke run, the paper's method (no per-method entries there, no KL anchor
    already) reuses every store: only its DiTs (no hold-out), its evaluations and the report
    run, and the report gets its rows."""
    workdir, bindir, snakefile = smoke_run
    copy = tmp_path / "work"
    shutil.copytree(workdir, copy, symlinks=True)
    configs = [SMOKE, write_config(tmp_path, {"presets": ["paper"]}, "paper.yaml")]
    res = snakemake(copy, "--cores", "2", configfile=configs, path=bindir, snakefile=snakefile)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert job_counts(res.stdout + res.stderr) == {
        "fit_diffusion": 6, "evaluate_diffusion": 6, "report": 1, "all": 1}
    rows = list(csv.DictReader((copy / "results/smoke/report/base2new.csv").open()))
    assert [r["row"] for r in rows if r["method"] == "maple"] == [
        "MaPLe", "MaPLe + prompt diffusion (pdiff)", "MaPLe + prompt diffusion (paper)"]


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, {}),
        ({"sampling.solver": "rk4"}, {"evaluate_diffusion": 6, "report": 1, "all": 1}),
        ({"sampling.steps": 3}, {"evaluate_diffusion": 6, "report": 1, "all": 1}),
        (
            {"overfit.lr": 0.02},
            {"overfit": 6, "fit_diffusion": 6, "evaluate_diffusion": 6, "report": 1, "all": 1},
        ),
        (
            {"diffusion.cls_weight": 0.5},
            {"fit_diffusion": 6, "evaluate_diffusion": 6, "report": 1, "all": 1},
        ),
        (
            {"method_params.coop.epochs": 3},  # coop's runs only, not maple's
            {
                "train": 3,
                "overfit": 3,
                "fit_diffusion": 3,
                "evaluate_baseline": 3,
                "evaluate_diffusion": 3,
                "report": 1,
                "all": 1,
            },
        ),
        (
            {"evaluation.batch_size": 128},
            {
                "evaluate_baseline": 6,
                "evaluate_diffusion": 6,
                "evaluate_zeroshot": 3,
                "report": 1,
                "all": 1,
            },
        ),
        ({"report.reference": True}, {"report": 1, "all": 1}),
        (
            {"method_params.coop.per_protocol": {"transfer": {"epochs": 3}}},  # its source run
            {"train": 1, "overfit": 1, "fit_diffusion": 1, "evaluate_baseline": 1,
             "evaluate_diffusion": 1, "report": 1, "all": 1},
        ),
        (
            {"method_params.maple.per_protocol": {"base2new": {"epochs": 2}}},  # the same value
            {},
        ),
        (
            {"compute": {"max_pairs": 1024}},  # every job encoding images x classes texts
            {
                "train": 6,
                "overfit": 6,
                "fit_diffusion": 6,
                "evaluate_baseline": 6,
                "evaluate_diffusion": 6,
                "evaluate_zeroshot": 3,
                "report": 1,
                "all": 1,
            },
        ),
        (
            {"diffusion.per_method": {"maple": {"target": "absolute"}}},  # maple's DiTs only
            {"fit_diffusion": 3, "evaluate_diffusion": 3, "report": 1, "all": 1},
        ),
        (
            {"sampling.per_method": {"coop": {"steps": 5}}},  # the value it had: nothing reruns
            {},
        ),
        (
            {"world.cast": 0.3},  # new datasets, same label space: no new pretraining
            {
                "prepare": 1,
                "check_data": 3,
                "fewshot": 2,
                "features_test": 3,
                "features_fewshot": 2,
                "train": 6,
                "overfit": 6,
                "fit_diffusion": 6,
                "evaluate_baseline": 6,
                "evaluate_diffusion": 6,
                "evaluate_zeroshot": 3,
                "report": 1,
                "all": 1,
            },
        ),
    ],
    ids=[
        "unchanged",
        "solver",
        "ode-steps",
        "overfit-lr",
        "cls-weight",
        "epochs",
        "eval-batch",
        "reference",
        "per-protocol",
        "per-protocol-same",
        "compute",
        "per-method",
        "per-method-same",
        "world-cast",
    ],
)
def test_params_rerun_only_what_depends_on_them(smoke_run, tmp_path, change, expected):
    assert _replan(smoke_run, tmp_path, change) == expected


AFTER_TRAIN = {
    "train": 6,
    "overfit": 6,
    "fit_diffusion": 6,
    "evaluate_baseline": 6,
    "evaluate_diffusion": 6,
    "report": 1,
    "all": 1,
}


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (
            "pdiff/overfit.py",
            {"overfit": 6, "fit_diffusion": 6, "evaluate_diffusion": 6, "report": 1, "all": 1},
        ),
        ("pdiff/diffusion/sampler.py", {"evaluate_diffusion": 6, "report": 1, "all": 1}),
        (
            "pdiff/diffusion/dit.py",
            {"fit_diffusion": 6, "evaluate_diffusion": 6, "report": 1, "all": 1},
        ),
        # a method's module retrains that method only; a module they share, every one of them
        ("pdiff/methods/maple.py", {"train": 3, "overfit": 3, "fit_diffusion": 3,
                                    "evaluate_baseline": 3, "evaluate_diffusion": 3,
                                    "report": 1, "all": 1}),
        ("pdiff/methods/text.py", AFTER_TRAIN | {"evaluate_zeroshot": 3}),
        ("pdiff/host_prompt.py", AFTER_TRAIN),
        ("pdiff/report/protocols.py", {"report": 1, "all": 1}),
        ("pdiff/evaluate.py", {"evaluate_baseline": 6, "evaluate_diffusion": 6,
                               "evaluate_zeroshot": 3, "report": 1, "all": 1}),
        ("pdiff/utils.py", {}),  # shared plumbing, deliberately not fingerprinted
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_code_change_reruns_the_stage_and_what_follows(smoke_run, tmp_path, module, expected):
    source = smoke_run[2].parent / module
    original = source.read_bytes()
    source.write_bytes(original + b"\n# an edit\n")
    try:
        assert _replan(smoke_run, tmp_path, {}) == expected
    finally:
        source.write_bytes(original)
    assert _replan(smoke_run, tmp_path, {}) == {}  # the same code again: nothing to do


# ---------------------------------------------------------------------------------------------
# Ablations: every setting its own targets, everything upstream of its stage reused
# ---------------------------------------------------------------------------------------------

ABLATION = {"overfit": [{"steps": 3}], "diffusion": [{"objective": "vp"}],
            "sampling": [{"steps": 2}]}


def _ablation_config(tmp_path: Path, ablation: dict, name: str) -> Path:
    cfg = load(SMOKE)
    cfg["ablation"] = ablation
    return write_config(tmp_path, cfg, name)


@pytest.fixture(scope="module")
def ablation_run(smoke_run, tmp_path_factory):
    """The smoke DAG with one setting per stage, run with the stub CLI."""
    _, bindir, snakefile = smoke_run
    root = tmp_path_factory.mktemp("ablation_run")
    workdir = root / "work"
    workdir.mkdir()
    config = _ablation_config(root, ABLATION, "ablation.yaml")
    res = snakemake(workdir, "--cores", "2", configfile=config, path=bindir, snakefile=snakefile)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return workdir, bindir, snakefile, res.stdout + res.stderr


@pytest.mark.workflow
def test_ablation_settings_become_targets_and_reach_the_report(ablation_run):
    workdir, _, _, log = ablation_run
    counts = job_counts(log)
    b2n_runs = 2 * 2  # 2 base-to-new datasets x 2 methods (the source run: defaults only)
    assert counts["overfit"] == 6 + b2n_runs  # one extra store per run for overfit steps=3
    assert counts["fit_diffusion"] == 6 + 2 * b2n_runs  # its DiT, plus objective=vp
    assert counts["evaluate_diffusion"] == 6 + 3 * b2n_runs
    report = workdir / "results" / "smoke" / "report"
    rows = list(csv.DictReader((report / "ablation.csv").open()))
    assert {r["setting"] for r in rows} == {
        "–", "default", "overfit: steps=3", "diffusion: objective=vp", "sampling: steps=2"}
    assert (report / "figures" / "ode_steps.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("stage", "entry", "expected"),
    # each new setting is also evaluated on its runs' validation split (evaluate_val_diffusion)
    [
        ("sampling", {"solver": "rk4"}, {"evaluate_diffusion": 4, "evaluate_val_diffusion": 4,
                                         "report": 1, "all": 1}),
        ("diffusion", {"depth": 2}, {"fit_diffusion": 4, "evaluate_diffusion": 4,
                                     "evaluate_val_diffusion": 4, "report": 1, "all": 1}),
        ("overfit", {"lr": 0.02}, {"overfit": 4, "fit_diffusion": 4, "evaluate_diffusion": 4,
                                   "evaluate_val_diffusion": 4, "report": 1, "all": 1}),
        # restricted to one method: only CoOp's two base-to-new runs
        ("diffusion", {"depth": 2, "methods": ["coop"]},
         {"fit_diffusion": 2, "evaluate_diffusion": 2, "evaluate_val_diffusion": 2, "report": 1,
          "all": 1}),
    ],
)
def test_adding_a_setting_plans_only_its_stage_and_after(ablation_run, tmp_path, stage, entry,
                                                         expected):
    workdir, bindir, snakefile, _ = ablation_run
    more = {**ABLATION, stage: [*ABLATION[stage], entry]}
    res = snakemake(workdir, "-n", "--quiet", "rules", path=bindir, snakefile=snakefile,
                    configfile=_ablation_config(tmp_path, more, "more.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert job_counts(res.stdout + res.stderr) == expected


@pytest.mark.workflow
def test_ablation_on_transfer_adds_each_setting_on_the_source_run(ablation_run, tmp_path):
    workdir, bindir, snakefile, _ = ablation_run
    every = {**ABLATION, "protocols": ["base2new", "cross_dataset", "domain_generalization"]}
    res = snakemake(workdir, "-n", "--quiet", "rules", path=bindir, snakefile=snakefile,
                    configfile=_ablation_config(tmp_path, every, "every.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr
    # per method's source run: the overfit setting's store, two DiTs, three evaluations, and
    # its validation evaluations (baseline, default and the three settings)
    assert job_counts(res.stdout + res.stderr) == {
        "overfit": 2, "fit_diffusion": 2 * 2, "evaluate_diffusion": 3 * 2,
        "evaluate_val_baseline": 2, "evaluate_val_diffusion": 4 * 2, "report": 1, "all": 1}


def test_ablation_on_a_switched_off_protocol_is_refused(tmp_path):
    cfg = load(SMOKE)
    cfg["protocols"]["cross_dataset"] = None
    cfg["ablation"] = {"sampling": [{"steps": 2}], "protocols": ["cross_dataset"]}
    res = snakemake(tmp_path, "-n", configfile=write_config(tmp_path, cfg, "off.yaml"))
    assert res.returncode != 0
    assert "ablation.protocols lists ['cross_dataset']" in res.stdout + res.stderr


def test_ablation_entry_for_an_untrained_method_is_refused(tmp_path):
    cfg = _ablation_config(tmp_path, {"sampling": [{"steps": 2, "methods": ["vpt"]}]}, "bad.yaml")
    res = snakemake(tmp_path, "-n", configfile=cfg)
    assert res.returncode != 0 and "['vpt']" in res.stdout + res.stderr


def test_bad_ablation_entry_names_the_key(tmp_path):
    cfg = _ablation_config(tmp_path, {"sampling": [{"stepz": 2}]}, "bad.yaml")
    res = snakemake(tmp_path, "-n", configfile=cfg)
    assert res.returncode != 0 and "ablation.sampling" in res.stdout + res.stderr
    assert "stepz" in res.stdout + res.stderr
