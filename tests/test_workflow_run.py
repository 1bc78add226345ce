"""The whole DAG for real on the smoke config: every stage, the report's contents, the HTML report.

Runs the real `pdiff` CLI (from this venv) through Snakemake in a temporary working directory,
so the repository's own results/ is never touched.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import (
    SMOKE_ROWS,
    check_smoke_backbone_and_stores,
    check_smoke_metrics,
    check_smoke_report,
    csv_rows,
    smoke_snakemake,
)

pytestmark = pytest.mark.workflow

# `smoke` (the smoke DAG run once per session) is a fixture of conftest.py, and the checks of
# its outputs are in helpers.py: the Slurm test makes the same checks, and compares its run with
# this one.


def test_report_has_every_row_in_every_protocol(smoke):
    check_smoke_report(smoke)


def test_metrics_are_full_precision_json(smoke):
    check_smoke_metrics(smoke)


def test_backbone_pretrained_by_the_dag_and_stores_written(smoke):
    check_smoke_backbone_and_stores(smoke)


def test_a_dataset_added_by_config_alone_runs_through(smoke):
    """`custom` is a CoOp-layout dataset only the config knows: checked, evaluated, reported."""
    assert json.loads((smoke / "data" / "check" / "custom.json").read_text())["ok"]
    rows = csv_rows(smoke / "report" / "cross_dataset.csv")
    assert all(0 <= float(r["custom"]) <= 100 for r in rows) and len(rows) == len(SMOKE_ROWS)


def test_second_run_has_nothing_to_do(smoke):
    res = smoke_snakemake(smoke.parent.parent, "-n", "--cores", "2")
    assert res.returncode == 0
    assert "Nothing to be done" in res.stdout + res.stderr


def test_html_report_builds(smoke):
    html = smoke.parent.parent / "report.html"
    res = smoke_snakemake(smoke.parent.parent, "--report", str(html))
    assert res.returncode == 0, res.stderr[-3000:]
    assert html.stat().st_size > 10_000
