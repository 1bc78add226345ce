"""benchmarks/demo_time.py, with a stand-in for `make`: it clones, times install and demo apart,
states the machine and the verdict, prints the per-rule table, and leaves nothing behind (or
everything, with the failing step's log, when a step fails)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPT = REPO / "benchmarks" / "demo_time.py"
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
# A `make` that installs nothing and whose demo writes one job's benchmark file, or fails.
FAKE_MAKE = f"""\
import pathlib, sys
if sys.argv[1] == "demo":
    if pathlib.Path("FAIL").exists():
        print("the demo broke")
        sys.exit(3)
    bench = pathlib.Path("results/quick/benchmarks/train/shapes.tsv")
    bench.parent.mkdir(parents=True)
    bench.write_text({BENCH_HEADER!r} + "2.5\\t0:00:02\\t100\\t1\\t1\\t1\\t0\\t0\\t50\\t2.0\\n")
"""


def _source(tmp_path: Path, fail: bool = False) -> Path:
    repo = tmp_path / "src"
    repo.mkdir()
    (repo / "fake_make.py").write_text(FAKE_MAKE)
    if fail:
        (repo / "FAIL").write_text("")
    for cmd in (["init", "-q"], ["add", "."],
                ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "fake"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    return repo


def _run(tmp_path: Path, source: Path, *args: str) -> subprocess.CompletedProcess:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(source),
         "--make", f"{sys.executable} fake_make.py", *args],
        env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=120)


def test_times_the_clone_and_cleans_up(tmp_path):
    out = tmp_path / "time.json"
    res = _run(tmp_path, _source(tmp_path), "--avx2", "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "kernels restricted to AVX2" in res.stdout
    assert "make install 0 min" in res.stdout and "not counted" in res.stdout
    assert "within the 12-minute target" in res.stdout
    assert "| train | 1 | 2.5 |" in res.stdout  # the clone's per-rule table
    record = json.loads(out.read_text())
    assert record["within"] is True and record["avx2_env"] is True
    assert record["demo_s"] > 0 and record["install_s"] > 0
    assert not list((tmp_path / "tmp").iterdir())  # the clone is gone


def test_a_failing_step_names_its_log_and_keeps_it(tmp_path):
    res = _run(tmp_path, _source(tmp_path, fail=True))
    assert res.returncode != 0
    assert "failed (exit 3)" in res.stderr and "demo.log" in res.stderr
    (log,) = (tmp_path / "tmp").glob("pdiff-demo-time.*/demo.log")
    assert "the demo broke" in log.read_text()


@pytest.mark.parametrize(("seconds", "avx512", "avx2", "expected"), [
    (600, False, False, "within the 12-minute target, on an AVX2-only machine"),
    (800, False, False, "over the 12-minute target by 1 min 20 s, on an AVX2-only machine"),
    (300, True, True, "not the issue's AVX2-only check; kernels restricted to AVX2 emulate"),
    (300, None, False, "AVX-512 support is unknown"),
])
def test_verdict_says_which_check_it_is(seconds, avx512, avx2, expected):
    verdict = runpy.run_path(str(SCRIPT))["verdict"]
    assert expected in verdict(seconds, avx512, avx2, 12.0)
