"""The whole DAG for real on the smoke config: every stage, the report's contents, the HTML report.

Runs the real `pdiff` CLI (from this venv) through Snakemake in a temporary working directory,
so the repository's own results/ is never touched.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import smoke_snakemake

ROWS = {"zero-shot CLIP", "CoOp", "CoOp + prompt diffusion", "MaPLe", "MaPLe + prompt diffusion"}

pytestmark = pytest.mark.workflow

# `smoke` (the smoke DAG run once per session) and `smoke_snakemake` live in conftest.py: the
# Slurm test compares its run with the same local run.


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_report_has_every_row_in_every_protocol(smoke):
    for table in ("base2new", "cross_dataset", "domain_generalization"):
        rows = _rows(smoke / "report" / f"{table}.csv")
        labels = {r.get("row") or r.get("method") for r in rows}
        assert ROWS <= labels, (table, labels)
        assert (smoke / "report" / f"{table}.md").read_text().count("|") > 10
    for fig in ("base2new.png", "transfer.png"):
        assert (smoke / "report" / "figures" / fig).read_bytes()[:4] == b"\x89PNG"


def test_metrics_are_full_precision_json(smoke):
    files = sorted((smoke / "runs").glob("*/*/*/*/eval/**/*.json"))
    assert len(files) == 12  # (2 base-to-new runs + 1 source run) x 2 methods x 2 modes
    records = [m for f in files for m in json.loads(f.read_text())["evaluations"]]
    # each method: 2 base-to-new x (base, new) + source, 2 cross (icons, custom), 1 DG target
    assert len(records) == (2 * 2 + 4) * 2 * 2
    for m in records:
        assert 0 <= m["accuracy"] <= 100 and m["total"] > 0
        assert m["accuracy"] == 100 * m["correct"] / m["total"]


def test_backbone_pretrained_by_the_dag_and_stores_written(smoke):
    metrics = json.loads((smoke / "backbone" / "pdiff-tiny.json").read_text())
    assert metrics["steps"] == 20 and "zero_shot_clean" in metrics
    assert len(list((smoke / "runs").rglob("store.h5"))) == 6
    assert not list(smoke.rglob("*.partial"))


def test_a_dataset_added_by_config_alone_runs_through(smoke):
    """`custom` is a CoOp-layout dataset only the config knows: checked, evaluated, reported."""
    assert json.loads((smoke / "data" / "check" / "custom.json").read_text())["ok"]
    rows = _rows(smoke / "report" / "cross_dataset.csv")
    assert all(0 <= float(r["custom"]) <= 100 for r in rows) and len(rows) == len(ROWS)


def test_second_run_has_nothing_to_do(smoke):
    res = smoke_snakemake(smoke.parent.parent, "-n", "--cores", "2")
    assert res.returncode == 0
    assert "Nothing to be done" in res.stdout + res.stderr


def test_html_report_builds(smoke):
    html = smoke.parent.parent / "report.html"
    res = smoke_snakemake(smoke.parent.parent, "--report", str(html))
    assert res.returncode == 0, res.stderr[-3000:]
    assert html.stat().st_size > 10_000
