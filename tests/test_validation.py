"""Selection on validation data (issue 18): the few-shot validation split as an evaluation target,
the ablation's choice read from it alone, choosing seeds kept out of the reported test means, and
the workflow planning the validation evaluations without retraining anything."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pdiff.errors import PdiffError
from pdiff.report import make_report
from pdiff.report.ablation import best_settings
from tests.helpers import (
    SMOKE,
    dataset_spec,
    job_counts,
    load,
    run_cli,
    shell_commands,
    snakemake,
    tiny_coop_run,
    write_bundles,
    write_config,
)

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# The report: fabricated records where validation and test disagree
# ---------------------------------------------------------------------------------------------

PARAMS = {
    "protocols": {
        "base2new": {"datasets": ["shapes", "icons"]},
        "cross_dataset": {"source": "shapes", "targets": ["icons"]},
        "domain_generalization": {"source": "shapes", "targets": ["shapes_sketch"]},
    },
    "methods": ["coop"],
    "seeds": [1, 2, 3],
    "reference": False,
    "ablation_protocols": ["base2new", "cross_dataset", "domain_generalization"],
}
SETTINGS = {  # label -> variant folder names; each changes one stage
    "default": {"overfit": "default", "diffusion": "default", "sampling": "default"},
    "sampling: steps=1": {"overfit": "default", "diffusion": "default", "sampling": "steps=1"},
    "overfit: steps=10": {"overfit": "steps=10", "diffusion": "default", "sampling": "default"},
}
# On test, overfit steps=10 is best by far; on validation, sampling steps=1 is. A choice that
# reads test picks the former.
TEST_SHIFT = {"default": 0.0, "sampling: steps=1": -5.0, "overfit: steps=10": +8.0}
VAL_SHIFT = {"default": 0.0, "sampling: steps=1": +4.0, "overfit: steps=10": -6.0}


def _rec(mode, train_dataset, classes, seed, target, split, accuracy, setting=None):
    r = {"mode": mode, "method": "coop", "train_dataset": train_dataset,
         "train_classes": classes, "seed": seed, "target": target, "split": split,
         "accuracy": accuracy, "correct": round(accuracy), "total": 100, "ece": 0.1,
         "seconds": 1.0, "images_per_second": 100.0, "nfe": 5 if mode == "diffusion" else 1,
         "sampling": {"solver": "euler", "steps": 5, "draws": 1} if mode == "diffusion" else None}
    if setting is not None:
        r["variant"] = SETTINGS[setting]
    if split == "val":
        r["classes"] = classes
    return r


def _zs(target, split, accuracy):
    return {**_rec("zeroshot", None, None, None, target, split, accuracy),
            "method": "zeroshot"}


def write_records(root: Path, test_seed: dict | None = None, val_seeds=(1, 2, 3),
                  val_shift_of=lambda seed: VAL_SHIFT) -> list[Path]:
    """Bundles as the workflow writes them. `test_seed` maps a seed to an accuracy that
    replaces every test number of that seed (a seed that must not be reported); validation
    records exist for `val_seeds`, shifted per setting by `val_shift_of(seed)`."""
    test_seed = test_seed or {}
    bundles: dict[str, list[dict]] = {}

    def put(name, record):
        bundles.setdefault(name, []).append(record)

    for t, split, a in (("shapes", "base", 50.0), ("shapes", "new", 45.0),
                        ("icons", "base", 40.0), ("icons", "new", 44.0),
                        ("shapes", "all", 47.0), ("icons", "all", 41.0),
                        ("shapes_sketch", "all", 35.0)):
        put(f"zs_{t}.json", _zs(t, split, a))
    for s in (1, 2, 3):
        for mode, settings in (("baseline", [None]), ("diffusion", list(SETTINGS))):
            for setting in settings:
                shift = TEST_SHIFT[setting] if setting else -3.0
                tag = f"{mode}_{setting}_{s}".replace(" ", "").replace(":", "")

                def acc(base, seed=s, shift=shift):
                    return test_seed.get(seed, base + seed + shift)

                for d, base in (("shapes", 70.0), ("icons", 60.0)):
                    put(f"b2n_{d}_{tag}.json", _rec(mode, d, "base", s, d, "base", acc(base),
                                                    setting))
                    put(f"b2n_{d}_{tag}.json", _rec(mode, d, "base", s, d, "new",
                                                    acc(base - 20), setting))
                for t, base in (("shapes", 80.0), ("icons", 50.0), ("shapes_sketch", 55.0)):
                    put(f"tr_{tag}.json", _rec(mode, "shapes", "all", s, t, "all", acc(base),
                                               setting))
                if s in val_seeds:
                    vshift = val_shift_of(s)[setting] if setting else -2.0
                    for d, classes, base in (("shapes", "base", 75.0), ("icons", "base", 65.0),
                                             ("shapes", "all", 78.0)):
                        name = "val_tr" if classes == "all" else f"val_b2n_{d}"
                        put(f"{name}_{tag}.json", _rec(mode, d, classes, s, d, "val",
                                                       base + vshift, setting))
    return write_bundles(root / "evals", bundles)


def _ablation(out: Path) -> dict[str, dict[str, str]]:
    return {r["setting"]: r for r in csv.DictReader((out / "ablation.csv").open())}


def test_the_choice_follows_validation_when_test_disagrees(tmp_path):
    out = tmp_path / "report"
    make_report(inputs=write_records(tmp_path), params=PARAMS, out_dir=out)
    rows = _ablation(out)
    # test prefers overfit steps=10 on every measure; validation prefers sampling steps=1
    for measure in ("hm", "cross_dataset", "domain_generalization", "mean"):
        best_test = max((r for s, r in rows.items() if s != "–"), key=lambda r: float(r[measure]))
        assert best_test["setting"] == "overfit: steps=10", measure
    summary = json.loads((out / "summary.json").read_text())
    best = summary["ablation_choice"]["best"]
    assert [b["setting"] for b in best] == ["sampling: steps=1"] * 4
    assert [b["chosen_on"] for b in best] == ["val_base", "val_source", "val_source", "val_mean"]
    assert summary["ablation_choice"]["split"] == "val"
    # the test number shown is the chosen setting's, beside its validation number
    chosen = rows["sampling: steps=1"]
    assert best[0]["value"] == pytest.approx(float(chosen["hm"]))
    assert best[0]["val"] == pytest.approx(float(chosen["val_base"]))
    md = (out / "ablation.md").read_text().split("## Best setting per method")[1]
    assert "Chosen on validation (seeds 1, 2, 3), test shown (seeds 1, 2, 3" in md
    assert "| HM | base-class validation | sampling: steps=1 |" in md
    assert "overfit: steps=10" not in md


def test_best_settings_never_reads_a_test_number():
    """Scrambling every test number leaves the choice alone; scrambling validation moves it."""
    rows = [{"method": "coop", "mode": "baseline", "label": "CoOp", "setting": "–",
             "val_base": 50.0, "hm": 60.0}]
    rows += [{"method": "coop", "mode": "diffusion", "label": "CoOp + PD", "setting": name,
              "val_base": v, "hm": t} for name, v, t in (("a", 70.0, 10.0), ("b", 69.0, 90.0),
                                                          ("c", 20.0, 95.0))]
    (best,) = best_settings(rows, "base2new")
    assert (best["setting"], best["val"], best["value"], best["host"]) == ("a", 70.0, 10.0, 60.0)
    for hm in ((99.0, 1.0, 2.0), (1.0, 99.0, 2.0), (1.0, 2.0, 99.0)):
        scrambled = rows[:1] + [{**r, "hm": h} for r, h in zip(rows[1:], hm, strict=True)]
        assert best_settings(scrambled, "base2new")[0]["setting"] == "a"
    moved = rows[:1] + [{**r, "val_base": v} for r, v in zip(rows[1:], (1.0, 2.0, 3.0),
                                                            strict=True)]
    assert best_settings(moved, "base2new")[0]["setting"] == "c"


def test_choosing_seeds_are_left_out_of_the_reported_means(tmp_path):
    # seed 1 chooses; its test numbers are poisoned (0) and must not reach any test mean; the
    # validation of seeds 2 and 3 would choose overfit steps=10 and must not be read either
    flipped = {"default": 0.0, "sampling: steps=1": -9.0, "overfit: steps=10": +9.0}
    paths = write_records(tmp_path, test_seed={1: 0.0},
                          val_shift_of=lambda s: VAL_SHIFT if s == 1 else flipped)
    out = tmp_path / "report"
    make_report(inputs=paths, params={**PARAMS, "choose_seeds": [1]}, out_dir=out)
    rows = _ablation(out)
    # CoOp baseline base on shapes: 70 + seed - 3 over seeds 2, 3 (icons: 60 + seed - 3)
    assert float(rows["–"]["base"]) == pytest.approx(((69 + 70) / 2 + (59 + 60) / 2) / 2)
    assert rows["–"]["base_se"]  # two reported seeds: a standard error
    # validation over seed 1 only: default shapes 75, icons 65 -> 70; source 78
    assert float(rows["default"]["val_base"]) == pytest.approx(70.0)
    assert float(rows["default"]["val_source"]) == pytest.approx(78.0)
    assert rows["default"]["val_base_se"] == ""  # one choosing seed
    summary = json.loads((out / "summary.json").read_text())["ablation_choice"]
    assert (summary["choose_seeds"], summary["report_seeds"]) == ([1], [2, 3])
    assert {b["setting"] for b in summary["best"]} == {"sampling: steps=1"}
    md = (out / "ablation.md").read_text()
    assert "Chosen on validation (seed 1), test shown (seeds 2, 3, which the choice never " \
        "saw)" in md
    assert "test columns over seeds 2, 3" in md and "over seed 1." in md


def test_only_the_choosing_seeds_need_validation(tmp_path):
    paths = write_records(tmp_path, val_seeds=(1,))
    make_report(inputs=paths, params={**PARAMS, "choose_seeds": [1]}, out_dir=tmp_path / "ok")
    with pytest.raises(PdiffError, match=r"on shapes/val .*eval/val/"):
        make_report(inputs=paths, params=PARAMS, out_dir=tmp_path / "every_seed_chooses")


@pytest.mark.parametrize("choose", [[4], [1, 2, 3]])
def test_choosing_seeds_must_leave_a_seed_to_report(tmp_path, choose):
    with pytest.raises(PdiffError, match="choose_seeds"):
        make_report(inputs=write_records(tmp_path), params={**PARAMS, "choose_seeds": choose},
                    out_dir=tmp_path / "r")


def test_validation_records_reach_no_protocol_table_or_diagnosis(tmp_path):
    paths = write_records(tmp_path)
    test_only = [p for p in paths if not p.name.startswith("val_")]
    with_val, without = tmp_path / "with", tmp_path / "without"
    make_report(inputs=paths, params=PARAMS, out_dir=with_val)
    # the same report less the ablation's choice: test-only inputs, no settings beyond default
    make_report(inputs=[p for p in test_only if "steps" not in p.name], params=PARAMS,
                out_dir=without)
    make_report(inputs=[p for p in paths if "steps" not in p.name], params=PARAMS,
                out_dir=tmp_path / "val_no_abl")
    for name in ("base2new.csv", "cross_dataset.csv", "domain_generalization.csv",
                 "diagnosis.csv"):
        assert (with_val / name).read_text() == (without / name).read_text(), name
        assert (tmp_path / "val_no_abl" / name).read_text() == (without / name).read_text()


# ---------------------------------------------------------------------------------------------
# `pdiff evaluate` on a run's validation split
# ---------------------------------------------------------------------------------------------

EVAL = {"evaluation": {"batch_size": 64},
        "sampling": {"solver": "euler", "steps": 3, "start": "noise", "draws": 1}}
_run = run_cli


@pytest.fixture(scope="module")
def val_run(tmp_path_factory, world, backbone_spec):
    """fewshot -> features -> train -> overfit -> fit-diffusion, CoOp on shapes' base classes
    (the tiny world: 8 classes, 2 validation images each)."""
    return tiny_coop_run(tmp_path_factory.mktemp("val_run"), world, backbone_spec,
                         features=True)


def _val_set(run: Path, features: bool = True, **extra) -> dict:
    entry = {"dataset": dataset_spec("shapes"), "split": "val", "classes": "base",
             "fewshot": str(run / "fs.json")}
    if features:
        entry["features"] = str(run / "fs.h5")
    return {**entry, **extra}


def _evaluate(run: Path, world: str, backbone_spec: dict, mode: str, sets: list[dict],
              out: Path) -> list[dict]:
    extra = (["--dit", str(run / "dit.safetensors"), "--store", str(run / "store.h5")]
             if mode == "diffusion" else [])
    assert _run("evaluate", "--mode", mode, "--prompt", str(run / "prompt.safetensors"),
                *extra, "--backbone", json.dumps(backbone_spec), "--data-root", world,
                "--sets", json.dumps(sets), "--params", json.dumps(EVAL), "--seed", "1",
                "--out", str(out)) == 0
    return json.loads(out.read_text())["evaluations"]


@pytest.mark.parametrize("mode", ["baseline", "diffusion"])
def test_evaluate_scores_the_runs_own_validation_images(val_run, world, backbone_spec, mode):
    test_set = {"dataset": dataset_spec("shapes"), "split": "base"}
    both = _evaluate(val_run, world, backbone_spec, mode, [test_set, _val_set(val_run)],
                     val_run / f"{mode}_both.json")
    alone = _evaluate(val_run, world, backbone_spec, mode, [test_set],
                      val_run / f"{mode}_test.json")
    test, val = both
    # the test record is the same whether or not a validation set rides along
    assert {k: v for k, v in test.items() if k not in ("seconds", "images_per_second")} == {
        k: v for k, v in alone[0].items() if k not in ("seconds", "images_per_second")}
    assert "classes" not in test
    # min(K=2, 4) validation images of each of shapes' 4 base classes, as drawn
    draw = json.loads((val_run / "fs.json").read_text())
    assert len(draw["val"]) == 8 * 2
    assert (val["split"], val["classes"], val["target"], val["total"]) == (
        "val", "base", "shapes", 4 * 2)
    assert val["accuracy"] == pytest.approx(100 * val["correct"] / val["total"])
    # the draw's feature cache gives the numbers the images give
    plain = _evaluate(val_run, world, backbone_spec, mode, [_val_set(val_run, features=False)],
                      val_run / f"{mode}_plain.json")[0]
    assert (plain["correct"], plain["total"]) == (val["correct"], val["total"])
    assert plain["ece"] == pytest.approx(val["ece"], abs=1e-4)


def test_a_validation_set_names_its_draw_and_classes(val_run, world, backbone_spec, tmp_path,
                                                      capsys):
    args = ["evaluate", "--mode", "baseline", "--prompt", str(val_run / "prompt.safetensors"),
            "--backbone", json.dumps(backbone_spec), "--data-root", world,
            "--params", json.dumps(EVAL), "--out", str(tmp_path / "x.json")]
    no_draw = {k: v for k, v in _val_set(val_run).items() if k != "fewshot"}
    assert _run(*args, "--sets", json.dumps([no_draw])) == 2
    assert '"fewshot"' in capsys.readouterr().err
    other = _val_set(val_run, dataset=dataset_spec("icons"))
    assert _run(*args, "--sets", json.dumps([other])) == 2
    assert "is of 'shapes', not of 'icons'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------------------------------------
# The workflow: validation evaluations planned, nothing retrained for them
# ---------------------------------------------------------------------------------------------

ABLATION = {"overfit": [{"steps": 3}], "diffusion": [{"objective": "vp"}],
            "sampling": [{"steps": 2}]}
def _smoke(**changes) -> dict:
    return {**load(SMOKE), **changes}


def _plan(tmp_path: Path, cfg: dict | list[Path], *targets: str) -> tuple[dict[str, int], str]:
    """A dry run (with shell commands) of `cfg` (written to a file) or of config files merged in
    order, working in `tmp_path`."""
    configs = [write_config(tmp_path, cfg, "val.yaml")] if isinstance(cfg, dict) else cfg
    res = snakemake(tmp_path, "-n", "-p", *targets, configfile=configs)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    return job_counts(out), out


def _commands(out: str, sub: str) -> list[list[str]]:
    """The planned `pdiff <sub>` command lines, split (redirections dropped)."""
    return [argv for argv in shell_commands(out) if argv[:2] == ["pdiff", sub]]


@pytest.mark.dryrun
def test_validation_evaluations_are_planned_and_retrain_nothing(tmp_path):
    cfg = _smoke(seeds=[1, 2], ablation={**ABLATION, "choose_seeds": [1]})
    counts, out = _plan(tmp_path, cfg)
    b2n_runs = 2 * 2  # 2 base-to-new datasets x coop, maple; seed 1 only (it chooses)
    combos = 1 + 3  # the default and one setting per stage
    assert counts["evaluate_val_baseline"] == b2n_runs
    assert counts["evaluate_val_diffusion"] == b2n_runs * combos
    (report,) = _commands(out, "report")
    inputs = report[report.index("--inputs") + 1 : report.index("--diagnostics")]
    val = [p for p in inputs if "/eval/val/" in p]
    assert len(val) == b2n_runs * (1 + combos) and all("/seed1/" in p for p in val)
    params = json.loads(report[report.index("--params") + 1])
    assert params["choose_seeds"] == [1]
    # without them: the plan of the test evaluations alone trains, overfits and fits the same
    test_only, _ = _plan(tmp_path, cfg, *[p for p in inputs if "/eval/val/" not in p])
    for rule in ("fewshot", "features_fewshot", "train", "overfit", "fit_diffusion"):
        assert counts[rule] == test_only[rule], rule
    added = {k: v - test_only.get(k, 0) for k, v in counts.items() if v != test_only.get(k, 0)}
    assert added == {"evaluate_val_baseline": b2n_runs,
                     "evaluate_val_diffusion": b2n_runs * combos, "report": 1, "all": 1}
    # every validation command is one the real CLI accepts, with a "val" set of its run
    from pdiff.cli import build_parser

    parser = build_parser()
    for argv in _commands(out, "evaluate"):
        args = parser.parse_args(argv[1:])
        if "/eval/val/" in args.out:
            (entry,) = args.sets
            run = Path(args.out).parts
            i = run.index("runs")
            assert (entry["split"], entry["dataset"]["name"], entry["classes"]) == (
                "val", run[i + 1], run[i + 3])
            assert entry["fewshot"].endswith(f"{run[i + 1]}/shots4_{run[i + 4]}.json")
            assert entry["features"].endswith(f"{run[i + 1]}/shots4_{run[i + 4]}.h5")
            assert args.max_images is None
            assert args.store is None or args.store.endswith("/store.h5")


@pytest.mark.dryrun
def test_transfer_ablation_validates_the_source_run(tmp_path):
    every = ["base2new", "cross_dataset", "domain_generalization"]
    counts, out = _plan(tmp_path, _smoke(ablation={**ABLATION, "protocols": every}))
    runs = (2 + 1) * 2  # 2 base-to-new runs and the all-class source run, x 2 methods
    assert counts["evaluate_val_baseline"] == runs
    assert counts["evaluate_val_diffusion"] == runs * 4
    source = [a for a in _commands(out, "evaluate") if "/shapes/coop/all/seed1/eval/val/" in
              a[a.index("--out") + 1]]
    assert len(source) == 1 + 4


@pytest.mark.dryrun
def test_without_an_ablation_nothing_is_validated(tmp_path):
    counts, out = _plan(tmp_path, _smoke())
    assert "evaluate_val_baseline" not in counts and "evaluate_val_diffusion" not in counts
    (report,) = _commands(out, "report")
    assert "choose_seeds" not in json.loads(report[report.index("--params") + 1])
    assert not any("/eval/val/" in a for a in report)


@pytest.mark.dryrun
@pytest.mark.parametrize("choose", [[3], [1]])
def test_bad_choosing_seeds_are_refused_before_any_job(tmp_path, choose):
    cfg = write_config(tmp_path, _smoke(ablation={**ABLATION, "choose_seeds": choose}))
    res = snakemake(tmp_path, "-n", configfile=cfg)
    assert res.returncode != 0
    assert "ablation.choose_seeds" in res.stdout + res.stderr


@pytest.mark.dryrun
def test_shipped_ablation_config_plans_validation_of_every_setting(tmp_path):
    counts, _ = _plan(tmp_path, [REPO / "config" / "config.yaml",
                                 REPO / "config" / "ablation.yaml"])
    # every seed chooses by default: one validation evaluation per test evaluation
    assert counts["evaluate_val_diffusion"] == counts["evaluate_diffusion"]
    assert counts["evaluate_val_baseline"] == counts["evaluate_baseline"] == counts["train"]
