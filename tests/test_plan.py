"""The workflow's plan (pdiff/plan/) without Snakemake: built from the repo's configs and
overlays as the workflow builds it, its paths, settings, recipes, report inputs, validation
evaluations and checks; and that the rules spell no path of their own. The dry runs in
tests/test_workflow_static.py and tests/test_validation.py check that the rules use it."""

from __future__ import annotations

import copy
import io
import json
import re
import tokenize
from types import SimpleNamespace

import pytest

from pdiff.plan.config import ConfigError, load_config
from pdiff.plan.fingerprints import RULE_MODULES, WORLD_MODULES, Fingerprints
from pdiff.plan.names import DEFAULT, PROTOCOLS, STAGES, VAL
from pdiff.plan.paths import RUN, is_tag
from pdiff.plan.study import Plan, alternation
from tests.helpers import REPO, set_key

CONFIG = REPO / "config"


def plan(*overlays: str, changes: dict | None = None) -> Plan:
    """The plan of config/config.yaml with `overlays` (file names under config/) merged over
    it, then `changes` (dotted key -> value) set."""
    cfg = load_config([CONFIG / name for name in overlays])
    for key, value in (changes or {}).items():
        cfg = set_key(cfg, key, value)
    return Plan(cfg, REPO)


@pytest.fixture(scope="module")
def demo() -> Plan:
    return plan()


@pytest.fixture(scope="module")
def benchmark() -> Plan:
    return plan("benchmark.yaml")


# ---------------------------------------------------------------------------------------------
# Paths: one function per path, a pattern with the default arguments
# ---------------------------------------------------------------------------------------------


def test_paths_are_patterns_that_format_to_the_concrete_path(demo):
    paths = demo.paths
    run = ("shapes", "coop", "base", 1)
    wildcards = dict(dataset="shapes", method="coop", classes="base", seed=1, ov="a", dv="b",
                     sv="c", model="pdiff-tiny")
    assert paths.prompt(*run) == "results/runs/shapes/coop/base/seed1/prompt.safetensors"
    assert paths.fewshot("shapes", 1) == "results/fewshot/shapes/shots16_seed1.json"
    assert paths.fewshot_features("shapes", 1) == "results/features/shapes/shots16_seed1.h5"
    assert paths.evaluation(*run, mode="diffusion", combo=("a", "b", "c")).endswith(
        "seed1/eval/diffusion/a/b/c.json")
    for pattern, concrete in [
        (paths.prompt(), paths.prompt(*run)),
        (paths.store(), paths.store(*run, ov="a")),
        (paths.dit(), paths.dit(*run, ov="a", dv="b")),
        (paths.dit(ext="json"), paths.dit(*run, ov="a", dv="b", ext="json")),
        (paths.evaluation(), paths.evaluation(*run)),
        (paths.evaluation(mode="diffusion"),
         paths.evaluation(*run, mode="diffusion", combo=("a", "b", "c"))),
        (paths.evaluation(val=True), paths.evaluation(*run, val=True)),
        (paths.evaluation(mode="diffusion", val=True),
         paths.evaluation(*run, mode="diffusion", combo=("a", "b", "c"), val=True)),
        (paths.fewshot(), paths.fewshot("shapes", 1)),
        (paths.fewshot(shots="{shots}"), paths.fewshot("shapes", 1)),
        (paths.fewshot_features(), paths.fewshot_features("shapes", 1)),
        (paths.test_features(), paths.test_features("shapes")),
        (paths.check(), paths.check("shapes")),
        (paths.zeroshot(), paths.zeroshot("shapes")),
        (paths.backbone(), paths.backbone("pdiff-tiny")),
        (paths.log("train", RUN), "results/logs/train/shapes/coop/base/seed1.log"),
    ]:
        assert pattern.format(**wildcards, shots=16) == concrete, pattern
    assert paths.default_dit_diagnostics(*run) == paths.dit(*run, ov=DEFAULT, dv=DEFAULT,
                                                            ext="json")
    # a run's validation evaluations sit beside its test ones, in the same layout
    assert paths.evaluation(*run, val=True) == f"{paths.run(*run)}/eval/val/baseline.json"
    assert paths.evaluation(*run, mode="diffusion", combo=("a", "b", "c"), val=True) == (
        f"{paths.run(*run)}/eval/val/diffusion/a/b/c.json")


def test_backbone_weights_follow_pretrained(demo, benchmark):
    assert not demo.pretrain and demo.paths.weights is None and demo.backbone_input() == {}
    smoke = plan("smoke.yaml")
    assert smoke.pretrain and smoke.paths.weights is None
    assert smoke.backbone_input() == {"backbone": "results/smoke/backbone/pdiff-tiny.safetensors"}
    assert benchmark.paths.weights == "results/weights/ViT-B-16/openai.safetensors"
    assert benchmark.backbone_input() == {"weights": benchmark.paths.weights}
    assert '"pretrained": "results/weights/ViT-B-16/openai.safetensors"' in (
        benchmark.backbone_json())
    assert is_tag("openai") and not is_tag("random") and not is_tag("ckpt/model.pt")
    assert not is_tag("model.safetensors") and not is_tag("shipped")


def test_wildcard_constraints_match_exactly_the_names(demo):
    constraints = demo.wildcard_constraints()
    assert set(constraints) == {"ov", "dv", "sv", "dataset", "method", "classes", "seed",
                                "shots", "model"}
    assert constraints["method"] == alternation(["coop", "vpt", "maple"])
    assert alternation([]) == "(?!)"
    assert alternation(["a", "a.b"]) == r"a\.b|a"  # longest first


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------


def test_maple_imagenet_all_classes_gets_the_transfer_recipe(benchmark):
    transfer = benchmark.method_params("maple", "ImageNet", "all")
    base = benchmark.method_params("maple", "ImageNet", "base")
    assert (transfer["depth"], transfer["lr"], transfer["epochs"]) == (3, 0.0026, 2)
    assert (base["depth"], base["lr"], base["epochs"]) == (9, 0.0035, 5)
    assert "per_protocol" not in transfer and "per_protocol" not in base


def test_per_dataset_overrides_apply_after_the_protocol():
    p = plan(changes={
        "method_params.coop.per_protocol": {"base2new": {"epochs": 3, "lr": 0.1}},
        "method_params.coop.per_dataset": {"shapes": {"epochs": 7}},
    })
    assert p.method_params("coop", "shapes", "base")["epochs"] == 7
    assert p.method_params("coop", "shapes", "base")["lr"] == 0.1
    assert p.method_params("coop", "icons", "base")["epochs"] == 3
    assert "per_dataset" not in p.method_params("coop", "icons", "all")


# ---------------------------------------------------------------------------------------------
# Settings: ablation variants and presets
# ---------------------------------------------------------------------------------------------


def test_ablation_variants_and_their_combos():
    p = plan("ablation.yaml")
    s = p.settings
    assert s.ablation_protocols == ["base2new"]
    assert s.ablated("base") and not s.ablated("all")
    assert "steps=10" in s.variants["overfit"]
    assert s.stage_config("sampling", "solver=rk4", "coop")["solver"] == "rk4"
    assert s.stage_config("sampling", DEFAULT, "coop") == {
        **s.section("sampling"), **p.cfg["sampling"].get("per_method", {}).get("coop", {})}
    n_variants = sum(len(v) - 1 for v in s.variants.values())
    assert len(s.combos) == 1 + n_variants and s.combos[0] == (DEFAULT,) * 3
    # an entry restricted to CoOp compares CoOp only
    cls = (DEFAULT, "cls_weight=0.1", DEFAULT)
    assert s.compares(cls, "coop") and not s.compares(cls, "vpt")
    files = p.targets.report_files()
    assert {"ablation_csv", "ablation_md", "ode_steps_png"} <= set(files)
    assert "cross_dataset_csv" not in files and "transfer_png" not in files


def test_the_paper_preset_shares_folders_with_equal_settings(demo):
    s = demo.settings
    assert s.presets == ["paper"]
    for method in demo.trained:
        combo = s.preset_combos["paper"][method]
        assert len(combo) == len(STAGES)
        for stage, name in zip(STAGES, combo, strict=True):
            assert name in s.stage_names(stage)
            if name != DEFAULT:
                assert s.stage_config(stage, name, method) != s.stage_config(
                    stage, DEFAULT, method)
    assert demo.targets.report_params()["presets"]["paper"]["coop"] == dict(
        zip(STAGES, s.preset_combos["paper"]["coop"], strict=True))


# ---------------------------------------------------------------------------------------------
# Targets: evaluation sets and the report's inputs
# ---------------------------------------------------------------------------------------------


def test_eval_sets_and_runs(demo):
    t = demo.targets
    assert t.transfer_targets()[0] == "shapes"
    assert t.runs() == [("shapes", "base"), ("icons", "base"), ("patterns", "base"),
                        ("glyphs", "base"), ("shapes", "all")]
    assert t.eval_sets("icons", "base") == [("icons", "base"), ("icons", "new")]
    assert t.eval_sets("shapes", "all") == [(d, "all") for d in t.transfer_targets()]
    assert t.zeroshot_sets("shapes") == [("shapes", "base"), ("shapes", "new"),
                                         ("shapes", "all")]
    assert t.zeroshot_sets("shapes_neon") == [("shapes_neon", "all")]
    assert t.sets_input([("icons", "base"), ("icons", "new")]) == [demo.paths.check("icons")]


def test_report_inputs_cover_every_run_and_mode(demo):
    t = demo.targets
    inputs = t.report_inputs()
    assert len(inputs) == len(set(inputs))
    zeroshot = [p for p in inputs if "/zeroshot/" in p]
    assert len(zeroshot) == len(set(d for d, _ in t.runs()) | set(t.transfer_targets()))
    runs = len(t.runs()) * len(demo.trained) * len(demo.cfg["seeds"])
    assert sum(p.endswith("eval/baseline.json") for p in inputs) == runs
    default = "/eval/diffusion/default/default/default.json"
    assert sum(p.endswith(default) for p in inputs) == runs
    assert len(t.diagnostics_inputs()) == runs
    files = t.report_files()
    assert {f"{p}_csv" for p in PROTOCOLS} <= set(files)
    assert "ablation_csv" not in files
    assert t.final_outputs()[-1] == "results/report/summary.json"


def test_switched_off_protocols_leave_the_plan():
    p = plan("ablation.yaml")
    assert list(p.protocols) == ["base2new"]
    assert p.targets.transfer_targets() == [] and p.targets.runs() == [("icons", "base")]
    assert "cross_dataset" not in p.targets.report_params()["protocols"]


def test_benchmark_plans_the_whole_study(benchmark):
    t = benchmark.targets
    assert len(t.runs()) == 12  # 11 base-to-new datasets and the ImageNet source
    assert len(t.eval_sets("ImageNet", "all")) == 1 + 10 + 4
    assert benchmark.gpu and benchmark.augment is not None
    assert benchmark.augment_arg().startswith("--augment '{")


# ---------------------------------------------------------------------------------------------
# Validation (issue 18): the runs an ablation choice compares, evaluated on their own draw's
# validation split in every setting the ablation table lists
# ---------------------------------------------------------------------------------------------


def test_without_an_ablation_nothing_is_validated(demo):
    assert demo.targets.validation_runs() == [] and demo.targets.validation_inputs() == []
    assert "choose_seeds" not in demo.targets.report_params()


def test_validation_covers_every_ablated_run_and_listed_setting():
    p = plan("ablation.yaml")
    t, s = p.targets, p.settings
    assert t.validation_runs() == [(d, c) for d, c in t.runs() if s.ablated(c)]
    assert t.validation_runs() == [("icons", "base")]
    inputs = t.validation_inputs()
    assert len(inputs) == len(set(inputs))
    assert all(f"/eval/{VAL}/" in path for path in inputs)
    for m in p.trained:
        # the ablation's combos the method is compared under (no presets here)
        assert s.val_combos(m) == [c for c in s.combos if s.compares(c, m)]
    assert len(inputs) == len(p.cfg["seeds"]) * sum(1 + len(s.val_combos(m)) for m in p.trained)
    run = ("icons", "coop", "base", 2)
    assert p.paths.evaluation(*run, val=True) in inputs
    assert p.paths.evaluation(*run, mode="diffusion", combo=(DEFAULT,) * 3, val=True) in inputs
    # validation is no test evaluation: the report reads it through its own input
    assert not set(inputs) & set(t.report_inputs())
    assert t.report_params()["choose_seeds"] == []


def test_only_the_choosing_seeds_are_validated():
    every = plan("ablation.yaml").targets
    chosen = plan("ablation.yaml", changes={"ablation.choose_seeds": [2]}).targets
    assert every.val_seeds == [1, 2] and chosen.val_seeds == [2]
    assert chosen.report_params()["choose_seeds"] == [2]
    assert chosen.validation_inputs() == [p for p in every.validation_inputs() if "/seed2/" in p]


def test_a_preset_is_validated_when_it_changes_one_stage_at_most():
    p = plan("ablation.yaml", changes={"presets": ["paper"]})
    s = p.settings
    for m in p.trained:
        combo = s.preset_combos["paper"][m]
        one_stage = sum(name != DEFAULT for name in combo) <= 1
        assert (combo in s.val_combos(m)) == one_stage
        assert len(s.val_combos(m)) == len(set(s.val_combos(m)))


def test_a_runs_validation_set_is_its_own_draw(demo):
    (entry,) = json.loads(demo.val_sets_json("icons", "base", "1"))
    assert entry == {
        "dataset": {"name": "icons", **demo.cfg["datasets"]["icons"]},
        "split": VAL,
        "classes": "base",
        "fewshot": demo.paths.fewshot("icons", "1"),
        "features": demo.paths.fewshot_features("icons", "1"),
    }


# ---------------------------------------------------------------------------------------------
# Params and resources
# ---------------------------------------------------------------------------------------------


def test_rehearsal_world_and_limits():
    p = plan("benchmark.yaml", "rehearsal.yaml")
    world = json.loads(p.world_json())
    assert world["kind"] == "rehearsal" and "colours" not in world
    assert p.limit_arg("test_images").startswith("--max-images ")
    assert p.stage_json("overfit", DEFAULT, "coop").startswith("{")
    assert '"compute"' in p.method_json("coop", "ImageNet", "all")


def test_resources_come_from_the_cost_model(benchmark):
    wildcards = SimpleNamespace(dataset="ImageNet", method="maple", classes="all", seed="1",
                                ov=DEFAULT, dv=DEFAULT, sv=DEFAULT)
    job = benchmark.cost_job("train", wildcards)
    assert job.recipe == benchmark.method_params("maple", "ImageNet", "all")
    for rule in ("train", "overfit", "fit_diffusion", "evaluate_baseline",
                 "evaluate_diffusion"):
        assert benchmark.runtime(rule)(wildcards, 4, 1) > 0
        assert benchmark.mem_mb(rule)(wildcards, 4, 1) > 0
        assert benchmark.threads(rule)(wildcards) >= 1
    zeroshot = benchmark.cost_job("evaluate_zeroshot", SimpleNamespace(dataset="ImageNet"))
    assert zeroshot.sets == tuple(benchmark.targets.zeroshot_sets("ImageNet"))


# ---------------------------------------------------------------------------------------------
# Code fingerprints
# ---------------------------------------------------------------------------------------------


def test_fingerprints_follow_the_sources(tmp_path):
    (tmp_path / "pdiff" / "methods").mkdir(parents=True)
    methods = tmp_path / "pdiff" / "methods"
    (methods / "base.py").write_text("X = 1\n")
    (methods / "text.py").write_text("from pdiff.methods.base import X\n")
    (methods / "coop.py").write_text("from pdiff.methods.text import X\n")
    (methods / "vpt.py").write_text("from pdiff.methods.base import X\n")
    code = Fingerprints(tmp_path)
    assert code.method_modules("coop") == ("pdiff/methods/base.py", "pdiff/methods/coop.py",
                                           "pdiff/methods/text.py")
    assert code.method_modules("unregistered") == ("pdiff/methods",)
    coop, vpt = code.of(*code.method_modules("coop")), code.of(*code.method_modules("vpt"))
    (methods / "text.py").write_text("from pdiff.methods.base import X  # edited\n")
    assert code.of(*code.method_modules("coop")) != coop
    assert code.of(*code.method_modules("vpt")) == vpt
    with pytest.raises(ConfigError, match="does not exist"):
        code.of("pdiff/nothing.py")


def test_fingerprints_name_the_stage_modules():
    for modules in [*RULE_MODULES.values(), *WORLD_MODULES.values()]:
        for module in modules:
            assert (REPO / module).exists(), module
    assert RULE_MODULES["train"] == ("pdiff/host_prompt.py",)
    assert {"pdiff/fit_dit.py", "pdiff/diffusion/trainer.py"} <= set(RULE_MODULES["fit_diffusion"])


def test_every_rule_fingerprint_names_existing_modules(demo):
    for rule in ("pretrain", "check_data", "fewshot", "features", "overfit", "fit_diffusion",
                 "evaluate_baseline", "evaluate_diffusion", "evaluate_zeroshot", "report"):
        assert len(demo.code.rule(rule)) == 16
    assert demo.code.rule("train", "maple") != demo.code.rule("train", "coop")
    assert len(demo.world_code()) == 16


# ---------------------------------------------------------------------------------------------
# Checks: a bad config fails naming the key
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("protocols.base2new.datasets", ["nope"],
         "protocols.base2new.datasets names dataset 'nope'"),
        ("methods", ["coop", "cocoop"], "method_params has no 'cocoop' entry"),
        ("diffusion.heads", 3, "must be divisible by diffusion.heads"),
        ("protocols.domain_generalization.source", "icons", "same source"),
        ("backbone.pretrained", "random", "not marked `rehearsal: true`"),
        ("diffusion.per_method", {"vtp": {"steps": 9}}, "diffusion.per_method names 'vtp'"),
        ("ablation", {"sampling": [{"stepz": 2}]}, "sets unknown key(s) ['stepz']"),
        ("ablation", {"sampling": [{"steps": 2, "methods": ["cocoop"]}]},
         "lists methods ['cocoop']"),
        ("ablation", {"sampling": [{"steps": 0}]}, "ablation.sampling entry"),
        ("method_params.coop.per_dataset", {"imagenet": {"epochs": 3}}, "catalogue"),
        ("method_params.maple.per_protocol", {"transfer": {"depth": -1}},
         "method_params.maple.per_protocol.transfer"),
        ("ablation", {"choose_seeds": [4]}, "ablation.choose_seeds [4] must be some of"),
        ("ablation", {"choose_seeds": [1]}, "leaving at least one seed to report on"),
    ],
)
def test_bad_configs_raise_naming_the_key(key, value, message):
    with pytest.raises(ConfigError) as info:
        plan(changes={key: value})
    assert message in str(info.value)


def test_every_protocol_off_is_refused():
    with pytest.raises(ConfigError, match="every protocol is switched off"):
        plan(changes={"protocols": {}})


def test_ablation_on_a_switched_off_protocol_is_refused():
    with pytest.raises(ConfigError, match=r"ablation.protocols lists \['cross_dataset'\]"):
        plan("ablation.yaml", changes={"ablation.protocols": ["cross_dataset"]})


def test_the_schema_is_checked_on_load(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("shots: 0\n")
    with pytest.raises(ConfigError, match="minimum of 1"):
        load_config([bad])


def test_a_plan_leaves_the_config_it_was_given_unchanged():
    cfg = load_config([CONFIG / "benchmark.yaml"])
    before = copy.deepcopy(cfg)
    Plan(cfg, REPO)
    assert cfg == before


# ---------------------------------------------------------------------------------------------
# Every path is built once, in pdiff/plan/paths.py: the rules spell none
# ---------------------------------------------------------------------------------------------

RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
#: What spelling a path shows: the results folder, or a file name a job reads or writes.
PATHLIKE = re.compile(
    r"results|RESULTS|\.(json|h5|safetensors|tsv|log|csv|png|md|txt|pt|yaml)\b", re.I)
#: The conda environment a rule runs in (relative to its rule file; no input or output).
CONDA = '"../../envs/pdiff.yaml"'


def string_literals(source: str) -> list[tuple[int, str]]:
    """(line, source text) of every string literal in `source` (a Snakefile is Python to the
    tokenizer), f-strings whole on any Python."""
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def at(position):
        return offsets[position[0] - 1] + position[1]

    found, start, depth = [], None, 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        kind = tokenize.tok_name[tok.type]
        if kind == "STRING":
            found.append((tok.start[0], tok.string))
        elif kind == "FSTRING_START":  # Python 3.12+
            depth += 1
            start = start or tok.start
        elif kind == "FSTRING_END":
            depth -= 1
            if depth == 0:
                found.append((start[0], source[at(start):at(tok.end)]))
                start = None
    return found


def spelled_paths(source: str) -> list[tuple[int, str]]:
    """The literals of a rule file that spell a path: one naming the results folder or a file,
    or holding a "/" outside a PATHS.log/PATHS.benchmark call (where wildcards joined by "/"
    name the job, not a file); docstrings and the conda environment are no paths."""
    lines = source.splitlines()
    bad = []
    for line, text in string_literals(source):
        if text.startswith(('"""', "'''")) or text == CONDA:
            continue
        job_name = re.search(r"PATHS\.(log|benchmark)\(", lines[line - 1])
        if PATHLIKE.search(text) or ("/" in text and not job_name):
            bad.append((line, text))
    return bad


def test_the_path_check_sees_a_spelled_path():
    assert spelled_paths('rule a:\n    output:\n        f"{RESULTS}/runs/{RUN}/x.json",\n')
    assert spelled_paths('x = "results/report/summary.json"\n')
    assert spelled_paths('rule a:\n    input:\n        f"{PATHS.run()}/prompt.safetensors",\n')
    assert spelled_paths('rule a:\n    input:\n        f"{PATHS.run()}/{{ov}}",\n')
    ok = ('rule a:\n    log:\n        PATHS.log("a", f"{RUN}/{{ov}}"),\n'
          '    conda:\n        "../../envs/pdiff.yaml"\n'
          '    shell:\n        "pdiff a --out {output:q} > {log:q} 2>&1"\n')
    assert not spelled_paths(ok)


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_no_rule_spells_a_path(path):
    """Every input, output, log and benchmark of a rule comes from PATHS (pdiff/plan/paths.py),
    so a rule's output and the inputs that ask for it cannot drift apart."""
    bad = spelled_paths(path.read_text())
    assert not bad, f"{path.name} spells paths (build them in pdiff/plan/paths.py): {bad}"


def test_only_paths_py_builds_the_results_folders():
    """Inside the plan only pdiff/plan/paths.py reads `results` or names a run's folders."""
    for module in sorted((REPO / "pdiff" / "plan").glob("*.py")):
        if module.name == "paths.py":
            continue
        for line, text in string_literals(module.read_text()):
            if text.startswith(('"""', "'''")):
                continue
            assert not re.search(r"results|/runs/|/eval/|/fewshot/|/features/", text), (
                f"{module.name}:{line} {text}")
