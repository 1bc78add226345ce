"""The documentation: `pdiff docs` rebuilds docs/results.md and the README's results block from a
report's summary.json (stamped with commit, machine and date), the README stays a short user
guide that starts with the two commands, and no relative link in README.md or docs/ is broken."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pdiff.errors import PdiffError
from pdiff.provenance import git_commit, machine
from pdiff.report import make_report
from pdiff.report.docs import END, START, _between, _verdict, write_docs
from pdiff.report.output import fmt, fmt_signed

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

SEEDS = (1, 2)
METHODS = ("coop", "vpt")
B2N = ("shapes", "icons")
CROSS = ("icons", "glyphs")
DG = ("shapes_sketch",)
PAPER = {"overfit": "paper", "diffusion": "paper", "sampling": "paper"}
STEPS1 = {"sampling": "steps=1"}
PARAMS = {
    "protocols": {
        "base2new": {"datasets": list(B2N)},
        "cross_dataset": {"source": "shapes", "targets": list(CROSS)},
        "domain_generalization": {"source": "shapes", "targets": list(DG)},
    },
    "methods": ["zeroshot", *METHODS],
    "seeds": list(SEEDS),
    "reference": True,
    "presets": {"paper": {m: PAPER for m in METHODS}},
}


def _accuracy(mode: str, method: str, seed, target: str, split: str, variant: dict | None) -> float:
    """Made-up but distinct accuracies: CoOp's prompt diffusion beats its host by more than 3 HM,
    VPT's loses to it; seeds differ so that there are standard errors."""
    acc = {"zeroshot": 40.0, "baseline": 60.0, "diffusion": 60.0}[mode] + (seed or 0)
    acc += 3.0 * (split == "base") + len(target) % 3
    if mode == "diffusion":
        acc += {"coop": 6.0, "vpt": -2.0}[method] + 0.5 * (seed or 0)
        acc -= 1.0 * (variant == PAPER) + 2.0 * (variant == STEPS1)
    return acc


def _record(mode, method, train, classes, seed, target, split, variant=None) -> dict:
    rec = {"mode": mode, "method": method, "train_dataset": train, "train_classes": classes,
           "seed": seed, "target": target, "split": split,
           "accuracy": _accuracy(mode, method, seed, target, split, variant), "correct": 1,
           "total": 100, "ece": 5.0, "seconds": 1.0, "images_per_second": 100.0,
           "nfe": 5 if mode == "diffusion" else 0, "sampling": None}
    if mode == "diffusion":
        rec["sampling"] = {"solver": "euler", "steps": 1 if variant == STEPS1 else 5, "draws": 1}
    return rec | ({"variant": variant} if variant else {})


def _evaluations(folder: Path) -> list[Path]:
    """Evaluation bundles for every table: zero-shot, host and prompt diffusion (as configured,
    the paper's preset and one ablation setting, base-to-new only) on every protocol."""
    records = [_record("zeroshot", "zeroshot", None, None, None, d, s)
               for d in B2N for s in ("base", "new")]
    records += [_record("zeroshot", "zeroshot", None, None, None, t, "all")
                for t in ("shapes", *CROSS, *DG)]
    for m in METHODS:
        for seed in SEEDS:
            for mode, variant in (("baseline", None), ("diffusion", None), ("diffusion", PAPER),
                                  ("diffusion", STEPS1)):
                records += [_record(mode, m, d, "base", seed, d, s, variant)
                            for d in B2N for s in ("base", "new")]
                if variant != STEPS1:
                    records += [_record(mode, m, "shapes", "all", seed, t, "all", variant)
                                for t in ("shapes", *CROSS, *DG)]
    # the ablation chooses on validation: each trained run's own test record again as "val"
    records += [{**r, "split": "val", "classes": r["train_classes"]} for r in records
                if r["mode"] != "zeroshot" and r["target"] == r["train_dataset"]
                and r["split"] == r["train_classes"]]
    paths = []
    for i, rec in enumerate(records):  # one bundle each: the report reads any grouping
        path = folder / f"eval{i}.json"
        path.write_text(json.dumps({"evaluations": [rec]}))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def summary_path(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("docs_report")
    (tmp / "evals").mkdir()
    make_report(inputs=_evaluations(tmp / "evals"), params=PARAMS, out_dir=tmp / "report")
    return tmp / "report" / "summary.json"


@pytest.fixture
def built(summary_path, tmp_path) -> tuple[str, str, dict]:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{START}\nold numbers\n{END}\nafter\n")
    out = tmp_path / "docs" / "results.md"
    write_docs(summary_path, out, readme, repo=ROOT)
    return out.read_text(), readme.read_text(), json.loads(summary_path.read_text())


def _line(text: str, start: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(start))


def test_results_are_stamped_with_commit_machine_and_date(built):
    results, readme, _ = built
    model, cpus, avx512 = machine()
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    for text in (results, readme):
        assert f"`{git_commit(ROOT)}`" in text
        assert model in text and f"{cpus} CPUs" in text
        assert ("no AVX-512" in text) is (avx512 is False)
        assert today in text
    assert results.startswith("<!-- Generated by `pdiff docs`")
    assert "not the paper's benchmark" in results and "not the paper's benchmark" in readme


def test_results_hold_every_protocol_table(built):
    results, _, summary = built
    for title in ("## Does prompt diffusion beat its host?", "## Base-to-new generalisation",
                  "### Per dataset", "## Cross-dataset transfer", "## Domain generalisation",
                  "## Ablation settings", "### Best setting per method", "## Diagnosis of the DiTs",
                  "## Evaluation cost", "## Published numbers"):
        assert title in results, title
    for row in summary["base2new"]["rows"]:  # every row, at the report's precision
        a = row["average"]
        assert (f"| {row['label']} | {fmt(a['base'], a['base_se'])} | {fmt(a['new'], a['new_se'])}"
                f" | {fmt(a['hm'], a['hm_se'])} | {row['n_seeds']} |") in results
    for protocol in ("cross_dataset", "domain_generalization"):
        for row in summary[protocol]["rows"]:
            avg = fmt(row["average"]["accuracy"], row["average"]["se"])
            assert _line(results, f"| {row['label']} | {fmt(row['source']['accuracy'])}"
                         ).endswith(f"| {avg} | {row['n_seeds']} |")
    assert "| CoOp + prompt diffusion | sampling: steps=1 |" in results
    assert "| CoOp (published) |" not in results and "| CoOp | 82.69 | 63.22 | 71.66 |" in results


def test_one_line_per_host_method_says_whether_prompt_diffusion_beats_it(built):
    _, readme, summary = built
    gains = {(g["method"], g["tag"]): g for g in summary["base2new"]["diffusion_gain"]}
    coop, vpt = gains[("coop", "pdiff")], gains[("vpt", "pdiff")]
    assert coop["hm"] >= 3 > 0 > vpt["hm"]  # the made-up numbers cover both verdicts
    header = _line(readme, "| Host method |")
    assert "Δ cross-dataset" in header and "Δ DG" in header and "(paper preset)" in header
    line = _line(readme, "| CoOp |")
    assert f"| {fmt_signed(coop['hm'], coop['hm_se'])} |" in line
    paper = gains[("coop", "paper")]
    assert line.endswith(f"| {fmt_signed(paper['hm'], paper['hm_se'])} | "
                         "yes, on every protocol (≥ the +3 HM target) |")
    assert _line(readme, "| VPT |").endswith("| no, on no protocol |")
    assert "| CoOp + prompt diffusion |" not in readme  # the full tables stay in docs/
    target = _line(readme, "The project's target")
    assert f"met by CoOp {coop['hm']:+.2f};" in target and f"VPT {vpt['hm']:+.2f}" in target
    assert "[docs/results.md](docs/results.md)" in readme


def test_readme_block_is_replaced_in_place_and_rebuilt_identically(built, summary_path, tmp_path):
    _, readme, _ = built
    assert readme.startswith("# title\n\nbefore\n" + START + "\n")
    assert readme.endswith(END + "\nafter\n") and "old numbers" not in readme
    write_docs(summary_path, tmp_path / "docs" / "results.md", tmp_path / "README.md", repo=ROOT)
    rebuilt = (tmp_path / "README.md").read_text()
    assert rebuilt.count(START) == 1 and rebuilt.split(START)[0] == readme.split(START)[0]


def test_several_runs_share_one_host_table_and_keep_their_own_tables(summary_path, tmp_path):
    other = json.loads(summary_path.read_text())
    other["provenance"] = {**other["provenance"], "commit": "abc1234"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    out = tmp_path / "results.md"
    write_docs([f"world 0={summary_path}", f"world 1={tmp_path / 'other.json'}"], out, readme,
               repo=ROOT)
    block, results = readme.read_text(), out.read_text()
    assert _line(block, "| Run | Host method |")
    coop = [x for x in block.splitlines() if x.startswith("| world ") and "| CoOp |" in x]
    assert [x.split(" | ")[0] for x in coop] == ["| world 0", "| world 1"]
    assert "world 0: 2 seeds" in block and "`abc1234`" in block  # each run's own stamp
    assert "## world 0\n" in results and "## world 1\n" in results
    assert results.count("### Base-to-new") == 2  # each run's tables, one level down
    with pytest.raises(PdiffError, match="NAME=PATH"):
        write_docs([summary_path, tmp_path / "other.json"], out)


def test_several_runs_are_compared_cell_by_cell(summary_path, tmp_path):
    """The page of several runs says, for every (host, row, protocol), whether the other runs
    find prompt diffusion's difference with the same sign and verdict as the first."""
    other = json.loads(summary_path.read_text())
    for g in other["base2new"]["diffusion_gain"]:
        if g["method"] == "coop":  # CoOp's HM gains flip, pdiff's row and the paper's
            g["hm"] = -g["hm"]
    (tmp_path / "other.json").write_text(json.dumps(other))
    out = tmp_path / "results.md"
    write_docs([f"quick={summary_path}", f"whole={tmp_path / 'other.json'}"], out, repo=ROOT)
    text = out.read_text()
    section = text.split("## Does whole reach quick's conclusions?\n")[1].split("\n## ")[0]
    cells = [x for x in section.splitlines() if x.startswith(("| CoOp |", "| VPT |"))]
    rows = {tuple(c.strip() for c in x.split("|")[1:4]): x for x in cells}
    # 2 hosts x 2 rows (pdiff's, the paper preset's) x 3 protocols
    assert {(h, r) for h, r, _ in rows} == {(h, r) for h in ("CoOp", "VPT")
                                           for r in ("pdiff", "paper")}
    assert {p for _, _, p in rows} == {"HM", "cross-dataset", "DG"}
    flipped = {k for k, x in rows.items() if "| no |" in x}
    assert flipped == {("CoOp", "pdiff", "HM"), ("CoOp", "paper", "HM")}
    assert "Same sign in 10 of 12 cells" in section
    # Between the runs: a flipped HM moves by twice its Δ (here beyond 2 SE), the rest by 0
    coop_hm = rows[("CoOp", "pdiff", "HM")].split("|")[-2]
    g = next(g for g in other["base2new"]["diffusion_gain"]
             if g["method"] == "coop" and g["tag"] == "pdiff")
    assert coop_hm.strip().startswith(f"{2 * g['hm']:+.2f} ± ")
    assert coop_hm.strip().endswith("(apart)")
    assert "+0.00" in rows[("VPT", "pdiff", "HM")].split("|")[-2]
    assert "more than 2 SE apart in 2 of 12" in section
    decided = [k for k, x in rows.items() if x.split("|")[7].strip().split(" / ")[0]
               != "within 2 SE"]
    kept = [k for k in decided if k not in flipped]
    assert decided and f"the same sign in {len(kept)} of {len(decided)}." in section


def test_several_runs_say_whether_they_choose_the_same_settings(summary_path, tmp_path):
    """Each run's best setting on validation beside its default's, then the pooled choice."""
    first = json.loads(summary_path.read_text())
    val = {(r["method"], r["setting"]): r["val_base"] for r in first["ablation"]
           if r["mode"] == "diffusion"}  # the fixture's ablation ran on base-to-new only
    assert val[("coop", "default")] > val[("coop", "sampling: steps=1")]
    other = json.loads(summary_path.read_text())
    for r in other["ablation"]:  # in the other world steps=1 wins CoOp's validation by 10
        if r["method"] == "coop" and r["setting"] == "sampling: steps=1":
            r["val_base"] = val[("coop", "default")] + 10.0
    (tmp_path / "other.json").write_text(json.dumps(other))
    out = tmp_path / "results.md"
    write_docs([f"world 0={summary_path}", f"world 1={tmp_path / 'other.json'}"], out, repo=ROOT)
    section = out.read_text().split("## Do the runs choose the same settings?\n")[1]
    coop = _line(section, "| CoOp |").split(" | ")
    d = val[("coop", "default")]
    assert coop[1] == f"default ({fmt(d)}); default {fmt(d)}"
    assert coop[2] == f"sampling: steps=1 ({fmt(d + 10)}); default {fmt(d)}"
    pooled = (val[("coop", "sampling: steps=1")] + d + 10) / 2
    assert coop[3].startswith(f"{'default' if d >= pooled else 'sampling: steps=1'} (")
    vpt = _line(section, "| VPT |")
    assert vpt.count("default (") == 3  # unchanged: the same choice in both and pooled
    # one run alone has nothing to compare its choice with
    write_docs(summary_path, out, repo=ROOT)
    assert "choose the same settings" not in out.read_text()


def test_runs_of_one_seed_are_compared_without_a_standard_error():
    assert _between(1.0, None, 3.5, None) == ("+2.50", None)
    assert _between(1.0, 0.5, 3.5, 0.5) == (fmt_signed(2.5, 0.5 * 2 ** 0.5), False)


def test_a_readme_without_markers_is_refused_and_nothing_written(summary_path, tmp_path):
    (tmp_path / "README.md").write_text("# no markers\n")
    with pytest.raises(PdiffError, match="results:start"):
        write_docs(summary_path, tmp_path / "results.md", tmp_path / "README.md")
    assert not (tmp_path / "results.md").exists()
    with pytest.raises(PdiffError, match="does not exist"):
        write_docs(tmp_path / "missing.json", tmp_path / "results.md")


def test_the_stamp_is_the_code_and_machine_the_report_recorded(summary_path, tmp_path):
    summary = json.loads(summary_path.read_text())
    assert summary["provenance"]["commit"] == git_commit(ROOT)  # make_report records it
    other = {**summary, "provenance": {"commit": "abc1234", "cpu": "Other CPU", "cpus": 8,
                                       "avx512": False}}
    (tmp_path / "summary.json").write_text(json.dumps(other))
    stamp = write_docs(tmp_path / "summary.json", tmp_path / "results.md", repo=ROOT)
    assert (stamp.commit, stamp.machine) == ("abc1234", "Other CPU, 8 CPUs, no AVX-512")
    del other["provenance"]  # written before the report recorded it: where this runs
    (tmp_path / "summary.json").write_text(json.dumps(other))
    stamp = write_docs(tmp_path / "summary.json", tmp_path / "results.md", repo=ROOT)
    assert stamp.commit == git_commit(ROOT) and stamp.cpu == machine()[0]


def test_the_verdict_names_each_protocol_won_and_lost():
    assert _verdict({"HM": 1.0, "cross-dataset": -3.4, "DG": -2.5}, 3.0) == (
        "on HM; not on cross-dataset, DG (under the +3 HM target)")
    assert _verdict({"HM": 7.4, "cross-dataset": -4.7, "DG": 6.9}, 3.0) == (
        "on HM, DG; not on cross-dataset (≥ the +3 HM target)")
    assert _verdict({"HM": -0.5, "cross-dataset": 1.0, "DG": None}, 3.0) == (
        "on cross-dataset; not on HM")
    assert _verdict({"cross-dataset": 2.0}, None) == "yes"
    # a difference within two standard errors is neither a win nor a loss
    assert _verdict({"HM": -3.0, "cross-dataset": 6.3, "DG": 10.9},
                    3.0, {"HM": 3.7, "cross-dataset": 5.2, "DG": 1.7}) == (
        "on DG; within 2 SE on HM, cross-dataset")
    assert _verdict({"HM": 0.5, "DG": -0.2}, 3.0, {"HM": 0.3, "DG": 0.4}) == (
        "within 2 SE on HM, DG (under the +3 HM target)")


def test_a_transfer_only_report_is_judged_on_its_transfer_average(tmp_path):
    (tmp_path / "evals").mkdir()
    params = {"protocols": {"cross_dataset": PARAMS["protocols"]["cross_dataset"]},
              "methods": ["coop"], "seeds": [1], "presets": PARAMS["presets"]}
    inputs = [p for p in _evaluations(tmp_path / "evals")
              if json.loads(p.read_text())["evaluations"][0]["target"] in ("shapes", *CROSS)
              and json.loads(p.read_text())["evaluations"][0]["split"] == "all"]
    make_report(inputs=inputs, params=params, out_dir=tmp_path / "report")
    out = tmp_path / "results.md"
    write_docs(tmp_path / "report" / "summary.json", out, label="a transfer study")
    text = out.read_text()
    assert "## Base-to-new generalisation" not in text and "## Cross-dataset transfer" in text
    assert "| Host method | Seeds | Host cross-dataset |" in text and "1 seed (1)" in text
    assert _line(text, "| CoOp | 1 |").endswith("| yes |")  # +6 points, no target set


def test_machine_and_commit_where_unknown(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f\n"
                       "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f\n")
    assert machine(cpuinfo)[0] == "Test CPU 9000" and machine(cpuinfo)[2] is True
    cpuinfo.write_text("model name\t: Old CPU\nflags\t\t: fpu avx2\n")
    assert machine(cpuinfo)[2] is False
    assert machine(tmp_path / "absent")[0::2] == ("CPU unknown", None)
    assert git_commit(tmp_path) == "unknown"  # not a repository


def test_docs_command_runs_without_torch(summary_path, tmp_path):
    """`python -m pdiff.report.docs` (what `make docs` runs) works without importing torch, so
    the docs rebuild outside the pipeline's environment."""
    out = tmp_path / "results.md"
    code = ("import sys, runpy; sys.argv = ['docs', sys.argv[1], '--out', sys.argv[2]]\n"
            "try:\n    runpy.run_module('pdiff.report.docs', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'pdiff docs imported torch'\n")
    subprocess.run([sys.executable, "-c", code, str(summary_path), str(out)], cwd=ROOT,
                   check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert "## Base-to-new generalisation" in out.read_text()


def test_pdiff_docs_subcommand(summary_path, tmp_path):
    from pdiff.cli import main

    out = tmp_path / "results.md"
    assert main(["docs", str(summary_path), "--out", str(out)]) == 0
    assert "# Results" in out.read_text()
    assert main(["docs", str(tmp_path / "missing.json"), "--out", str(out)]) == 2


# --- the repository's own documentation ---------------------------------------------------


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    fence = next(i for i, x in enumerate(lines) if x.startswith("```"))
    assert fence < 5, "the README opens with its commands"
    block = lines[fence + 1:lines.index("```", fence + 1)]
    assert [x.split()[:2] for x in block[:2]] == [["make", "demo"], ["make", "test"]]
    assert README.read_text().count(START) == 1 and README.read_text().count(END) == 1


LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def test_every_relative_link_points_to_a_file():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    assert len(pages) > 1
    broken = []
    for page in pages:
        for target in _relative_links(page):
            if not (page.parent / target.split("#")[0].strip("<>")).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
