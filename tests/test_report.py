"""The report stage on fabricated evaluation JSONs: table values, HM convention, seeds, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from pdiff.errors import PdiffError
from pdiff.report import make_report
from pdiff.report.output import md_table, signed
from pdiff.report.protocols import harmonic_mean
from tests.helpers import write_bundles

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

PARAMS = {
    "protocols": {
        "base2new": {"datasets": ["shapes", "icons"]},
        "cross_dataset": {"source": "shapes", "targets": ["icons", "glyphs"]},
        "domain_generalization": {"source": "shapes", "targets": ["shapes_sketch"]},
    },
    "methods": ["coop"],
    "seeds": [1, 2],
    "reference": False,
}


def _eval(mode, method, train_dataset, train_classes, seed, target, split, accuracy):
    return {
        "mode": mode,
        "method": method,
        "train_dataset": train_dataset,
        "train_classes": train_classes,
        "seed": seed,
        "target": target,
        "split": split,
        "accuracy": accuracy,
        "correct": round(accuracy),
        "total": 100,
        "ece": 0.05,
        "seconds": 1.5,
        "images_per_second": 200.0,
        "nfe": 5 if mode == "diffusion" else 1,
        "sampling": {"solver": "euler", "steps": 5} if mode == "diffusion" else None,
    }


# Accuracies chosen so that HM-of-averages differs from average-of-HMs and seeds differ.
B2N = {  # (dataset, mode, seed) -> (base, new)
    ("shapes", "baseline", 1): (80.0, 20.0),
    ("shapes", "baseline", 2): (82.0, 24.0),
    ("icons", "baseline", 1): (60.0, 60.0),
    ("icons", "baseline", 2): (62.0, 56.0),
    ("shapes", "diffusion", 1): (70.0, 40.0),
    ("shapes", "diffusion", 2): (72.0, 42.0),
    ("icons", "diffusion", 1): (58.0, 62.0),
    ("icons", "diffusion", 2): (60.0, 60.0),
}
ZS = {("shapes", "base"): 50.0, ("shapes", "new"): 45.0, ("icons", "base"): 40.0}
ZS |= {("icons", "new"): 44.0, ("shapes", "all"): 47.0, ("icons", "all"): 41.0}
ZS |= {("glyphs", "all"): 30.0, ("shapes_sketch", "all"): 35.0}
TRANSFER = {  # (target, mode, seed) -> accuracy, all from the shapes/all run
    (t, mode, s): 10.0 * i + (3.0 if mode == "diffusion" else 0.0) + s
    for i, t in enumerate(["shapes", "icons", "glyphs", "shapes_sketch"], start=4)
    for mode in ("baseline", "diffusion")
    for s in (1, 2)
}


def _write_inputs(tmp_path: Path, drop: tuple = ()) -> list[Path]:
    """Bundles as the workflow writes them: one per (run, mode) and one per zero-shot dataset;
    `drop` leaves out the records of these (target, split, mode, seed)."""
    bundles: dict[str, list[dict]] = {}

    def put(name, record):
        if (record["target"], record["split"], record["mode"], record["seed"]) not in drop:
            bundles.setdefault(name, []).append(record)

    for (d, mode, s), (base, new) in B2N.items():
        put(f"b2n_{d}_{mode}_{s}.json", _eval(mode, "coop", d, "base", s, d, "base", base))
        put(f"b2n_{d}_{mode}_{s}.json", _eval(mode, "coop", d, "base", s, d, "new", new))
    for (t, split), a in ZS.items():
        put(f"zs_{t}.json", _eval("zeroshot", "zeroshot", None, None, None, t, split, a))
    for (t, mode, s), a in TRANSFER.items():
        put(f"tr_{mode}_{s}.json", _eval(mode, "coop", "shapes", "all", s, t, "all", a))
    return write_bundles(tmp_path / "evals", bundles)


def _edit_first_record(path: Path, edit) -> None:
    bundle = json.loads(path.read_text())
    edit(bundle["evaluations"][0])
    path.write_text(json.dumps(bundle))


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as fh:
        return {row["row"]: row for row in csv.DictReader(fh)}


def _se(values):
    mu = sum(values) / len(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1) / len(values))


@pytest.fixture
def report(tmp_path):
    out = tmp_path / "report"
    make_report(inputs=_write_inputs(tmp_path), params=PARAMS, out_dir=out)
    return out


def test_writes_every_output(report):
    for name in [
        "base2new.csv",
        "base2new.md",
        "cross_dataset.csv",
        "cross_dataset.md",
        "domain_generalization.csv",
        "domain_generalization.md",
        "diagnosis.csv",
        "diagnosis.md",
        "summary.json",
    ]:
        assert (report / name).is_file(), name
    for fig in ("base2new.png", "transfer.png"):
        data = (report / "figures" / fig).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, fig
    assert not list(report.rglob("*.partial"))


def test_base2new_values(report):
    rows = _read_csv(report / "base2new.csv")
    assert list(rows) == ["zero-shot CLIP", "CoOp", "CoOp + prompt diffusion"]

    coop = rows["CoOp"]
    assert coop["n_seeds"] == "2"
    # per dataset: mean over seeds; HM from the seed means
    assert float(coop["shapes_base"]) == pytest.approx(81.0)
    assert float(coop["shapes_new"]) == pytest.approx(22.0)
    assert float(coop["shapes_hm"]) == pytest.approx(harmonic_mean(81.0, 22.0))
    assert float(coop["shapes_base_se"]) == pytest.approx(_se([80.0, 82.0]))
    # average: base and new averaged over datasets, HM computed from those averages
    base = (81.0 + 61.0) / 2
    new = (22.0 + 58.0) / 2
    assert float(coop["average_base"]) == pytest.approx(base)
    assert float(coop["average_new"]) == pytest.approx(new)
    assert float(coop["average_hm"]) == pytest.approx(2 * base * new / (base + new))
    mean_of_hms = (harmonic_mean(81.0, 22.0) + harmonic_mean(61.0, 58.0)) / 2
    assert float(coop["average_hm"]) != pytest.approx(mean_of_hms)
    # standard error of the per-seed averages
    assert float(coop["average_base_se"]) == pytest.approx(_se([70.0, 72.0]))

    zs = rows["zero-shot CLIP"]
    assert zs["n_seeds"] == "1"
    assert float(zs["average_base"]) == pytest.approx(45.0)
    assert float(zs["average_new"]) == pytest.approx(44.5)
    assert zs["average_base_se"] == ""  # one evaluation: no standard error

    diff = rows["CoOp + prompt diffusion"]
    assert float(diff["icons_new"]) == pytest.approx(61.0)

    md = (report / "base2new.md").read_text()
    assert "| CoOp + prompt diffusion |" in md
    assert f"{base:.2f} ± {_se([70.0, 72.0]):.2f}" in md
    assert "(published)" not in md


def test_diffusion_gain_over_host_is_paired_per_seed(report):
    gain = json.loads((report / "summary.json").read_text())["base2new"]["diffusion_gain"]
    assert len(gain) == 1 and gain[0]["method"] == "coop" and gain[0]["n_seeds"] == 2
    # seed 1: host (70, 40) vs PD (64, 51); seed 2: host (72, 40) vs PD (66, 51)
    host = [(70.0, 40.0), (72.0, 40.0)]
    pd = [(64.0, 51.0), (66.0, 51.0)]
    d_hm = [harmonic_mean(*p) - harmonic_mean(*h) for p, h in zip(pd, host, strict=True)]
    assert gain[0]["base"] == pytest.approx(-6.0) and gain[0]["base_se"] == pytest.approx(0.0)
    assert gain[0]["new"] == pytest.approx(11.0)
    assert gain[0]["hm"] == pytest.approx(harmonic_mean(65.0, 51.0) - harmonic_mean(71.0, 40.0))
    assert gain[0]["hm_se"] == pytest.approx(_se(d_hm))
    assert gain[0]["target_met"] is (gain[0]["hm"] >= 3.0)
    md = (report / "base2new.md").read_text()
    assert "## Prompt diffusion against its host method" in md
    verdict = "met" if gain[0]["target_met"] else "not met"
    line = next(x for x in md.splitlines() if x.startswith("| CoOp | -6.00"))
    assert line.startswith(f"| CoOp | -6.00 ± 0.00 | +11.00 ± 0.00 | {signed(gain[0]['hm'])}")
    assert line.endswith(f"| {verdict} |")


def test_transfer_values(report):
    rows = _read_csv(report / "cross_dataset.csv")
    coop = rows["CoOp"]
    assert float(coop["shapes"]) == pytest.approx(41.5)  # source, mean of seeds 1 and 2
    assert float(coop["icons"]) == pytest.approx(51.5)
    assert float(coop["glyphs"]) == pytest.approx(61.5)
    assert float(coop["average"]) == pytest.approx(56.5)  # the source is not in the average
    assert float(coop["average_se"]) == pytest.approx(_se([56.0, 57.0]))
    assert float(rows["zero-shot CLIP"]["average"]) == pytest.approx((41.0 + 30.0) / 2)
    assert float(rows["CoOp + prompt diffusion"]["average"]) == pytest.approx(59.5)

    dg = _read_csv(report / "domain_generalization.csv")
    assert float(dg["CoOp"]["shapes_sketch"]) == pytest.approx(71.5)
    assert float(dg["CoOp"]["average"]) == pytest.approx(71.5)
    assert float(dg["zero-shot CLIP"]["shapes"]) == pytest.approx(47.0)
    assert "shapes (source)" in (report / "domain_generalization.md").read_text()


def test_summary_full_precision(report):
    summary = json.loads((report / "summary.json").read_text())
    rows = {r["label"]: r for r in summary["base2new"]["rows"]}
    base, new = 71.0, 40.0
    assert rows["CoOp"]["average"]["hm"] == 2 * base * new / (base + new)  # exact, not rounded
    assert rows["CoOp"]["per_seed"]["2"]["icons"] == {"base": 62.0, "new": 56.0}
    assert summary["cross_dataset"]["source"] == "shapes"
    assert summary["cost"]["CoOp + prompt diffusion"]["nfe"] == 5
    assert len(summary["inputs"]) == 8 + 4 + 4  # b2n runs x modes, transfer, zero-shot


def test_reference_rows(tmp_path):
    out = tmp_path / "report"
    make_report(inputs=_write_inputs(tmp_path), params={**PARAMS, "reference": True}, out_dir=out)
    md = (out / "base2new.md").read_text()
    assert "| CoOp (published) | 82.69 | 63.22 | 71.66 |" in md
    assert "| PromptSRC (published) | 84.26 | 76.10 | 79.97 |" in md
    # difference ours - published for CoOp's HM
    ours = harmonic_mean(71.0, 40.0)
    assert f"{ours - 71.66:+.2f}" in md
    assert "zero-shot CLIP (published)" in md


def test_published_rows_of_every_protocol_name_their_source(tmp_path):
    """Beside ours, each protocol lists the published numbers of the host methods a source gave,
    with that source; a number no source gave is printed as –, never filled in."""
    out = tmp_path / "report"
    make_report(inputs=_write_inputs(tmp_path), params={**PARAMS, "reference": True}, out_dir=out)
    b2n = (out / "base2new.md").read_text()
    assert "- KgCoOp (published): KgCoOp (Yao et al., CVPR 2023) Table 1" in b2n
    assert "- CoOp (published): CoCoOp (Zhou et al., CVPR 2022) Table 1" in b2n

    cross = (out / "cross_dataset.md").read_text()
    # MaPLe's Table 2: ImageNet 70.72, average over the 10 targets 66.30; ours (CoOp) has no
    # MaPLe row, so no difference
    assert "| MaPLe (published) | 70.72 | – | – | 66.30 | 3 | – | – |" in cross
    assert "| PromptSRC (published) | – | – | – | 65.81 | 3 | – | – |" in cross
    # CoOp: ours - published, source 41.5 - 71.51 and average 56.5 - 63.88
    assert f"| CoOp (published) | 71.51 | – | – | 63.88 | 3 | {41.5 - 71.51:+.2f} | " \
        f"{56.5 - 63.88:+.2f} |" in cross
    assert "- MaPLe (published): MaPLe (Khattak et al., CVPR 2023) Table 2" in cross
    assert "KgCoOp (published)" not in cross  # no source gave its transfer numbers

    dg = (out / "domain_generalization.md").read_text()
    maple_dg = math.fsum([64.07, 49.15, 50.90, 76.98]) / 4  # MaPLe's Table 3: mean of 4 targets
    assert f"| MaPLe (published) | 70.72 | – | {maple_dg:.2f} | 3 | – | – |" in dg
    assert "| zero-shot CLIP (published) | 66.73 | – |" in dg
    assert "Table 3" in dg and "mean of the four targets" in dg

    summary = json.loads((out / "summary.json").read_text())["reference"]
    assert summary["cross_dataset"]["promptsrc"]["imagenet"] is None
    assert summary["domain_generalization"]["coop"]["average"] == pytest.approx(59.2775)
    assert summary["base2new"]["maple"]["hm"] == 78.55


def test_without_reference_no_published_rows(report):
    for name in ("base2new.md", "cross_dataset.md", "domain_generalization.md"):
        assert "(published)" not in (report / name).read_text()


PAPER = {"overfit": "kl_weight=0.0", "diffusion": "holdout=0.0", "sampling": "start=noise"}


def _write_paper_inputs(tmp_path: Path) -> list[Path]:
    """The prompt-diffusion evaluations of the paper's setting: pdiff's accuracy minus 10."""
    bundles: dict[str, list[dict]] = {}
    for (d, mode, s), (base, new) in B2N.items():
        if mode == "diffusion":
            for split, a in (("base", base), ("new", new)):
                rec = _eval(mode, "coop", d, "base", s, d, split, a - 10.0)
                bundles.setdefault(f"paper_{d}_{s}.json", []).append(rec | {"variant": PAPER})
    for (t, mode, s), a in TRANSFER.items():
        if mode == "diffusion":
            rec = _eval(mode, "coop", "shapes", "all", s, t, "all", a - 10.0)
            bundles.setdefault(f"paper_tr_{s}.json", []).append(rec | {"variant": PAPER})
    paths = []
    for name, records in bundles.items():
        path = tmp_path / "evals" / name
        path.write_text(json.dumps({"evaluations": records}))
        paths.append(path)
    return paths


def test_the_paper_preset_is_a_row_of_its_own_beside_pdiff(tmp_path):
    out = tmp_path / "report"
    inputs = _write_inputs(tmp_path) + _write_paper_inputs(tmp_path)
    make_report(inputs=inputs, params={**PARAMS, "presets": {"paper": {"coop": PAPER}}},
                out_dir=out)
    rows = _read_csv(out / "base2new.csv")
    assert list(rows) == ["zero-shot CLIP", "CoOp", "CoOp + prompt diffusion (pdiff)",
                          "CoOp + prompt diffusion (paper)"]
    pdiff, paper = rows["CoOp + prompt diffusion (pdiff)"], rows["CoOp + prompt diffusion (paper)"]
    assert float(paper["icons_new"]) == pytest.approx(float(pdiff["icons_new"]) - 10.0)
    cross = _read_csv(out / "cross_dataset.csv")
    assert float(cross["CoOp + prompt diffusion (paper)"]["average"]) == pytest.approx(49.5)
    # each against the host, in the gains table
    gains = json.loads((out / "summary.json").read_text())["base2new"]["diffusion_gain"]
    assert [(g["label"], g["tag"]) for g in gains] == [("CoOp (pdiff)", "pdiff"),
                                                       ("CoOp (paper)", "paper")]
    assert gains[1]["new"] == pytest.approx(gains[0]["new"] - 10.0)
    # a preset changing several stages is no ablation setting
    assert not (out / "ablation.md").exists()


def test_only_some_protocols(tmp_path):
    out = tmp_path / "report"
    params = {**PARAMS, "protocols": {"base2new": PARAMS["protocols"]["base2new"]}}
    make_report(inputs=_write_inputs(tmp_path), params=params, out_dir=out)
    assert (out / "base2new.csv").is_file()
    assert not (out / "cross_dataset.csv").exists()
    assert not (out / "figures" / "transfer.png").exists()


def test_missing_key_names_file(tmp_path):
    paths = _write_inputs(tmp_path)
    bad = paths[3]
    _edit_first_record(bad, lambda r: r.pop("accuracy"))
    with pytest.raises(PdiffError, match=rf"{bad.name}.*accuracy"):
        make_report(inputs=paths, params=PARAMS, out_dir=tmp_path / "report")


def test_missing_file_names_file(tmp_path):
    paths = _write_inputs(tmp_path) + [tmp_path / "nowhere" / "x_all_baseline.json"]
    with pytest.raises(PdiffError, match="x_all_baseline.json does not exist; run its `pdiff"):
        make_report(inputs=paths, params=PARAMS, out_dir=tmp_path / "report")


def test_unreadable_inputs_name_file_and_fix(tmp_path):
    paths = _write_inputs(tmp_path)
    out = tmp_path / "report"
    paths[0].write_text('{"evaluations": [')  # cut short, e.g. by a full disk
    with pytest.raises(PdiffError, match=rf"{paths[0].name} is not readable JSON .*pdiff evaluate"):
        make_report(inputs=paths, params=PARAMS, out_dir=out)
    good = _write_inputs(tmp_path / "good")
    with pytest.raises(PdiffError, match="diagnostics file .*gone.json does not exist; rerun"):
        make_report(inputs=good, params=PARAMS, out_dir=out, diagnostics=[tmp_path / "gone.json"])
    assert not out.exists()  # nothing written that looks finished


def test_missing_evaluation_is_listed(tmp_path):
    paths = _write_inputs(tmp_path, drop={("icons", "new", "diffusion", 2)})
    with pytest.raises(PdiffError, match=r"CoOp \+ prompt diffusion on icons/new"):
        make_report(inputs=paths, params=PARAMS, out_dir=tmp_path / "report")


def test_duplicate_evaluation(tmp_path):
    paths = _write_inputs(tmp_path)
    copy = tmp_path / "copy.json"
    copy.write_text(paths[0].read_text())
    with pytest.raises(PdiffError, match="copy.json"):
        make_report(inputs=[*paths, copy], params=PARAMS, out_dir=tmp_path / "report")


def test_bad_accuracy(tmp_path):
    paths = _write_inputs(tmp_path)
    _edit_first_record(paths[0], lambda r: r.update(accuracy=0.8e3))
    with pytest.raises(PdiffError, match=paths[0].name):
        make_report(inputs=paths, params=PARAMS, out_dir=tmp_path / "report")


def test_empty_bundle_names_file(tmp_path):
    paths = _write_inputs(tmp_path)
    paths[0].write_text(json.dumps({"evaluations": []}))
    with pytest.raises(PdiffError, match=rf"{paths[0].name} holds no evaluations"):
        make_report(inputs=paths, params=PARAMS, out_dir=tmp_path / "report")


def test_md_table_renders_by_hand():
    text = md_table(["Method", "A"], [["x|y", "1.00"]])
    assert text.splitlines() == ["| Method | A |", "|:---|---:|", "| x\\|y | 1.00 |"]


def _variant_inputs(tmp_path: Path, variant: tuple[str, str], steps: int, shift: float,
                    transfer: bool = False) -> list[Path]:
    """CoOp + prompt diffusion evaluated in one other setting, every accuracy `shift`ed: its
    base-to-new runs and, with `transfer`, its all-class source run."""
    tagged = {"overfit": "default", "diffusion": "default", "sampling": "default",
              variant[0]: variant[1]}
    runs: dict[str, list[dict]] = {}
    for (d, mode, s), (base, new) in B2N.items():
        if mode == "diffusion":
            runs[f"{d}_{s}"] = [_eval(mode, "coop", d, "base", s, d, split, a + shift)
                                for split, a in (("base", base), ("new", new))]
    for (t, mode, s), a in TRANSFER.items():
        if transfer and mode == "diffusion":
            runs.setdefault(f"tr_{s}", []).append(
                _eval(mode, "coop", "shapes", "all", s, t, "all", a + shift))
    paths = []
    for name, records in runs.items():
        for r in records:
            r["sampling"] = {"solver": "euler", "steps": steps, "draws": 1}
            r["variant"] = tagged
        path = tmp_path / "evals" / f"abl_{variant[0]}_{name}.json"
        path.write_text(json.dumps({"evaluations": records}))
        paths.append(path)
    return paths


def _val_inputs(paths: list[Path]) -> list[Path]:
    """Validation bundles beside `paths`: each trained run's base-class (base-to-new) or source
    (transfer) test record again as split "val", with the same accuracy, so that validation
    and test agree here (tests/test_validation.py has them disagree)."""
    out = []
    for path in paths:
        records = [{**r, "split": "val", "classes": r["train_classes"]}
                   for r in json.loads(path.read_text())["evaluations"]
                   if r["mode"] != "zeroshot" and r["target"] == r["train_dataset"]
                   and r["split"] == {"base": "base", "all": "all"}[r["train_classes"]]]
        if records:
            out.append(path.with_name(f"val_{path.name}"))
            out[-1].write_text(json.dumps({"evaluations": records}))
    return out


def test_ablation_settings_get_their_own_table_and_figure(tmp_path):
    """Evaluations in other settings (one stage changed) leave the protocol tables alone."""
    paths = _write_inputs(tmp_path)
    extra = [*_variant_inputs(tmp_path, ("sampling", "steps=1"), 1, -10.0),
             *_variant_inputs(tmp_path, ("overfit", "steps=10"), 5, 2.0)]
    out = tmp_path / "report"
    make_report(inputs=paths + extra + _val_inputs(paths + extra), params=PARAMS,
                out_dir=out)
    plain = tmp_path / "plain"
    make_report(inputs=paths, params=PARAMS, out_dir=plain)
    assert (out / "base2new.csv").read_text() == (plain / "base2new.csv").read_text()
    rows = {(r["mode"], r["setting"]): r for r in csv.DictReader((out / "ablation.csv").open())}
    assert set(rows) == {("baseline", "–"), ("diffusion", "default"),
                         ("diffusion", "sampling: steps=1"), ("diffusion", "overfit: steps=10")}
    default = float(rows[("diffusion", "default")]["base"])
    assert float(rows[("diffusion", "sampling: steps=1")]["base"]) == pytest.approx(default - 10)
    assert (out / "figures" / "ode_steps.png").read_bytes().startswith(PNG_MAGIC)
    md = (out / "ablation.md").read_text()
    assert "sampling: steps=1" in md
    # overfit steps=10 shifts every accuracy by +2: the best setting, +2 HM over the default
    best = md.split("## Best setting per method")[1]
    hm = float(rows[("diffusion", "overfit: steps=10")]["hm"])
    host = float(rows[("baseline", "–")]["hm"])
    val = float(rows[("diffusion", "overfit: steps=10")]["val_base"])
    assert f"| overfit: steps=10 | {val:.2f} ± 1.00 | {hm:.2f}" in best
    assert f"{hm - host:+.2f} |" in best


def test_evaluations_nothing_reads_are_counted(tmp_path, caplog):
    """The ablation's settings and their validation records are read; an extra target is not."""
    paths = _write_inputs(tmp_path)
    extra = _variant_inputs(tmp_path, ("sampling", "steps=1"), 1, -10.0)
    inputs = paths + extra + _val_inputs(paths + extra)
    make_report(inputs=inputs, params=PARAMS, out_dir=tmp_path / "all_read")
    assert "not used by any protocol table" not in caplog.text
    stray = write_bundles(tmp_path / "stray", {"zs_stray.json": [
        _eval("zeroshot", "zeroshot", None, None, None, "stray", "all", 10.0)]})
    make_report(inputs=inputs + stray, params=PARAMS, out_dir=tmp_path / "stray_report")
    assert "report: 1 input evaluation(s) are not used by any protocol table" in caplog.text


def test_diagnosis_table_from_dit_diagnostics(tmp_path):
    diags = []
    for s, cos in ((1, 0.2), (2, 0.4)):
        path = tmp_path / f"dit_{s}.json"
        agreement = {"cosine_mean": cos, "correlation_mean": cos / 2, "norm_ratio": 0.5, "n": 8}
        path.write_text(json.dumps({"method": "coop", "seed": s, "held_out": agreement,
                                    "train": {**agreement, "cosine_mean": 0.9}}))
        diags.append(path)
    out = tmp_path / "report"
    make_report(inputs=_write_inputs(tmp_path), params=PARAMS, out_dir=out, diagnostics=diags)
    (row,) = list(csv.DictReader((out / "diagnosis.csv").open()))
    assert float(row["held_out_cosine"]) == pytest.approx(0.3)
    assert float(row["held_out_cosine_se"]) == pytest.approx(0.1)
    assert float(row["train_cosine"]) == pytest.approx(0.9) and row["runs"] == "2"
    assert float(row["ece_baseline"]) == pytest.approx(0.05)
    md = (out / "diagnosis.md").read_text()
    assert "Held-out cosine" in md and "None: every DiT reproduces its training prompts" in md
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(PdiffError, match="bad.json"):
        make_report(inputs=_write_inputs(tmp_path), params=PARAMS, out_dir=out,
                    diagnostics=[tmp_path / "bad.json"])


def test_a_dit_that_did_not_learn_its_store_is_named(tmp_path, caplog):
    diags = []
    for run, seen in (("good", 0.8), ("collapsed", -0.27)):
        path = tmp_path / run / "dit.json"
        path.parent.mkdir()
        agreement = {"cosine_mean": 0.09, "correlation_mean": 0.09, "norm_ratio": 0.9, "n": 8}
        path.write_text(json.dumps({"method": "coop", "seed": 1, "held_out": agreement,
                                    "train": {**agreement, "cosine_mean": seen}}))
        diags.append(path)
    out = tmp_path / "report"
    make_report(inputs=_write_inputs(tmp_path), params=PARAMS, out_dir=out, diagnostics=diags)
    section = (out / "diagnosis.md").read_text().split("## DiTs that did not learn their store")[1]
    assert str(tmp_path / "collapsed" / "dit.json") in section and "-0.27" in section
    assert str(tmp_path / "good") not in section and "Raise `diffusion.lr`" in section
    (underfit,) = json.loads((out / "summary.json").read_text())["underfit_dits"]
    assert underfit["train_cosine"] == -0.27 and underfit["method"] == "coop"
    assert "does not reproduce its training prompts" in caplog.text


def test_ablation_on_the_transfer_protocols_adds_their_columns(tmp_path):
    paths = _write_inputs(tmp_path)
    extra = _variant_inputs(tmp_path, ("overfit", "kl_weight=0.1"), 5, -1.0, transfer=True)
    params = {**PARAMS, "ablation_protocols": ["base2new", "cross_dataset",
                                               "domain_generalization"]}
    out = tmp_path / "report"
    make_report(inputs=paths + extra + _val_inputs(paths + extra), params=params,
                out_dir=out)
    rows = {(r["mode"], r["setting"]): r for r in csv.DictReader((out / "ablation.csv").open())}
    setting, default = rows[("diffusion", "overfit: kl_weight=0.1")], rows[("diffusion", "default")]
    for key in ("base", "new", "cross_dataset", "domain_generalization"):
        assert float(setting[key]) == pytest.approx(float(default[key]) - 1.0)
    # cross-dataset from shapes: icons and glyphs (5th and 6th tens), +3 for diffusion, + seed
    assert float(default["cross_dataset"]) == pytest.approx((53 + 63) / 2 + 1.5)
    best = (out / "ablation.md").read_text().split("## Best setting per method")[1]
    for measure, chosen_on in (("HM", "base-class"), ("cross dataset", "source"),
                               ("domain generalization", "source"),
                               ("mean of the protocols", "mean of the protocols'")):
        assert f"| {measure} | {chosen_on} validation | default |" in best
    mean = (float(default["hm"]) + float(default["cross_dataset"])
            + float(default["domain_generalization"])) / 3
    assert float(default["mean"]) == pytest.approx(mean)
    # settings run on base-to-new only are missing on the transfer protocols: named, not guessed
    b2n_only = _variant_inputs(tmp_path, ("overfit", "kl_weight=0.1"), 5, -1.0)
    with pytest.raises(PdiffError, match="on glyphs/all"):
        make_report(inputs=paths + b2n_only + _val_inputs(paths + b2n_only), params=params,
                    out_dir=tmp_path / "again")
    with pytest.raises(PdiffError, match="ablation_protocols"):
        make_report(inputs=paths,
                    params={**params, "protocols": {"base2new": PARAMS["protocols"]["base2new"]}},
                    out_dir=tmp_path / "bad")
