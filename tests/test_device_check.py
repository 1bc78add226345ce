"""benchmarks/device_check.sh on a CPU: every command it runs parses its arguments (a flag the
script passes that a script or `pdiff` lacks fails here, not on a lent GPU), and the benchmarks
that take small sizes run once on the CPU with the script's own flags, the device and the sizes
swapped for tiny ones. No GPU is needed or used."""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shlex
import subprocess
import sys

import pytest

from pdiff.cli import build_parser
from tests.helpers import REPO

SCRIPT = REPO / "benchmarks" / "device_check.sh"
#: The shell variables a step line may hold, and what stands for them here.
VARIABLES = {"$out": "OUT", "$fp32": "fp32.yaml"}
#: Appended to a step's arguments for its CPU smoke run (the last value of a flag wins); a
#: script not named here is only parsed (pair_budget.py needs ViT-B/16 at 1,000 classes).
SMOKE = {
    "benchmarks/batched_overfit.py": ["--model", "pdiff-tiny", "--samples", "2", "--classes", "3",
                                      "--steps", "1", "--batch", "2", "--rounds", "1",
                                      "--methods", "coop", "vpt"],
    "benchmarks/diffusion_eval.py": ["--model", "pdiff-tiny", "--images", "4", "--classes", "3",
                                     "--batch", "2", "--steps", "1", "--rounds", "1",
                                     "--methods", "coop", "vpt"],
    "benchmarks/amp_agreement.py": ["--tiny-images", "4", "--skip-vit", "--overfit-images", "1",
                                    "--overfit-steps", "1", "--methods", "coop"],
}


def steps() -> list[list[str]]:
    """The python arguments of every `step NAME ARGS...` line, variables filled in."""
    out = []
    for line in SCRIPT.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line.startswith('step "'):
            continue
        for var, value in VARIABLES.items():
            line = line.replace(var, value)
        assert "$" not in line, f"a step uses a shell variable this test does not know: {line}"
        out.append(shlex.split(line)[2:])
    return out


STEPS = steps()


def test_the_script_runs_every_kind_of_check():
    scripts = {args[0] for args in STEPS}
    assert {"benchmarks/pair_budget.py", "benchmarks/amp_agreement.py",
            "benchmarks/batched_overfit.py", "benchmarks/diffusion_eval.py", "-m"} <= scripts
    assert all((REPO / s).is_file() for s in scripts - {"-m"})
    plans = [a for a in STEPS if a[:3] == ["-m", "pdiff.cli", "plan-cost"]]
    assert sum("--measure-only" in a for a in plans) == 2 and len(plans) == 3


class _Parsed(Exception):
    """Raised in place of running a benchmark once its arguments parsed."""


@pytest.mark.parametrize("args", STEPS, ids=[" ".join(a[:3]) for a in STEPS])
def test_every_step_parses_its_arguments(args, monkeypatch):
    if args[:2] == ["-m", "pdiff.cli"]:
        build_parser().parse_args(args[2:])  # a usage error exits with status 2
        return
    parse = argparse.ArgumentParser.parse_args

    def parse_only(self, *a, **k):
        parse(self, *a, **k)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.setattr(sys, "argv", [str(REPO / args[0]), *args[1:]])
    with pytest.raises(_Parsed):
        runpy.run_path(str(REPO / args[0]), run_name="__main__")


def test_the_small_benchmarks_run_on_the_cpu_with_the_scripts_flags():
    runs, seen = [], set()
    for args in STEPS:
        if args[0] in SMOKE and args[0] not in seen:
            seen.add(args[0])
            flags = ["cpu" if a == "cuda" else a for a in args[1:]]
            runs.append([args[0], *flags, *SMOKE[args[0]]])
    assert len(runs) == len(SMOKE)
    # one fresh process for all (the scripts set global torch state, amp_agreement patches
    # Backbone.autocast), each script run as `python benchmarks/<name>.py` runs it
    driver = ("import json, runpy, sys\nsys.path.insert(0, 'benchmarks')\n"
              "for argv in json.loads(sys.argv[1]):\n"
              "    sys.argv = argv\n    runpy.run_path(argv[0], run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", driver, json.dumps(runs)], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("max abs diff") >= 2, res.stdout
