"""The smoke pipeline on a real single-node Slurm on localhost, through workflow/profiles/slurm.

tests/slurm/start-slurm.sh installs Slurm and munge with apt-get (once) and starts munged,
slurmctld and slurmd: no accounting, one node `localhost` with every CPU and fake GPUs. The
smoke config then runs with `--executor slurm` and the SLURM profile, with `gpu: 1`, so every
GPU-capable rule asks Slurm for a GPU (the node has two fake ones) and gets one. The report is
checked as tests/test_workflow_run.py checks a local run, and compared with that local run: same
files, same JSON keys, same table rows. tests/slurm/stop-slurm.sh then stops exactly the daemons
the start script started, by their PIDs.

Skipped when Slurm cannot be started here (not root, no apt-get), unless PDIFF_REQUIRE_SLURM=1
(CI: .ci/slurm), which makes that a failure. The wall times are printed (`pytest -s`) and, with
PDIFF_SLURM_TIMING=<file>, appended to that file.

    sudo -E .venv/bin/pytest -s -m slurm tests/test_slurm.py
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import (
    BIN,
    REPO,
    check_smoke_backbone_and_stores,
    check_smoke_metrics,
    check_smoke_report,
    smoke_config,
)

pytestmark = pytest.mark.slurm

PROFILE = REPO / "workflow" / "profiles" / "slurm"
START = REPO / "tests" / "slurm" / "start-slurm.sh"
STOP = REPO / "tests" / "slurm" / "stop-slurm.sh"
REQUIRE = os.environ.get("PDIFF_REQUIRE_SLURM") == "1"
RUN_TIMEOUT = 1800  # s, the whole Slurm run; the smoke DAG takes minutes

# Installing and starting Slurm (root, apt-get) is opt-in: CI sets PDIFF_REQUIRE_SLURM=1.
if not (REQUIRE or os.environ.get("PDIFF_SLURM_TEST") == "1"):
    pytest.skip("set PDIFF_SLURM_TEST=1 to run the smoke pipeline on a local single-node Slurm "
                "(as root: installs slurm and munge with apt-get)", allow_module_level=True)


def _timing(line: str) -> None:
    print(f"\n[slurm test] {line}", flush=True)
    path = os.environ.get("PDIFF_SLURM_TIMING")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running single-node Slurm: yields the environment that reaches it; stops it after."""
    state = tmp_path_factory.mktemp("slurm-state")
    t0 = time.monotonic()
    try:
        # Two fake GPUs, one per CPU: the GPU jobs run two at a time, as in the local run.
        env = {"PDIFF_SLURM_GPUS": "2", **os.environ}
        res = subprocess.run(["timeout", "-k", "10", "900", str(START), str(state)],
                             env=env, capture_output=True, text=True, timeout=960)
        rc, err = res.returncode, res.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = "timeout", str(e.stderr or "")
    except OSError as e:  # no `timeout`, no bash
        rc, err = "oserror", str(e)
    if rc != 0:
        subprocess.run(["timeout", "-k", "5", "60", str(STOP), str(state)], capture_output=True)
        why = f"cannot start a local Slurm (start-slurm.sh exit {rc}):\n{err[-3000:]}"
        if REQUIRE:
            pytest.fail(why + "\n(PDIFF_REQUIRE_SLURM=1)")
        pytest.skip(why.splitlines()[0] + " " + (err.strip().splitlines() or [""])[-1])
    out = dict(line.split("=", 1) for line in res.stdout.split() if "=" in line)
    _timing(f"Slurm installed/started in {time.monotonic() - t0:.1f} s")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(
        PATH=os.pathsep.join([out["SLURM_BIN"], str(BIN), os.environ["PATH"]]),
        SLURM_CONF=out["SLURM_CONF"],
        HF_HUB_OFFLINE="1",
        HDF5_USE_FILE_LOCKING="FALSE",
    )
    try:
        yield {"env": env, "state": state}
    finally:
        stop = subprocess.run(["timeout", "-k", "5", "120", str(STOP), str(state)],
                              capture_output=True, text=True)
        print(stop.stderr, flush=True)


def _slurm_jobs(env: dict, run_id: str) -> list[dict]:
    """Every job of this Snakemake run still known to slurmctld (MinJobAge), as key=value dicts."""
    res = subprocess.run(["timeout", "-k", "5", "30", "scontrol", "show", "job", "--oneliner"],
                         env=env, capture_output=True, text=True, check=True)
    jobs = []
    for line in res.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("JobName") == run_id:
            jobs.append(fields)
    return jobs


@pytest.fixture(scope="module")
def slurm_smoke(cluster, tmp_path_factory) -> dict:
    """The smoke config run through Slurm with the profile; the results folder, log and jobs."""
    workdir = tmp_path_factory.mktemp("smoke-slurm")
    env = cluster["env"]
    cmd = [
        "timeout", "-k", "30", str(RUN_TIMEOUT),
        str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(smoke_config(workdir)),
        "--workflow-profile", str(PROFILE), "--executor", "slurm",
        "--config", "gpu=1",
        # GPU jobs ask for loader threads (the cost model); the test node has 2 CPUs, and a
        # cluster caps threads at its nodes' the same way
        "--max-threads", "2",
        # No accounting on the test cluster: poll with squeue (as the profile's comment says),
        # and early, so that second-long jobs do not wait 40 s for their first status check.
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "5",
        "--slurm-logdir", str(workdir / "slurm-logs"), "--slurm-keep-successful-logs",
    ]
    t0 = time.monotonic()
    res = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT + 60)
    wall = time.monotonic() - t0
    _timing(f"smoke pipeline through Slurm: {wall:.1f} s (exit {res.returncode})")
    log = res.stdout + res.stderr
    (workdir / "snakemake.log").write_text(log)
    ctld_log = _tail(cluster["state"] / "log" / "slurmctld.log")
    assert res.returncode == 0, log[-6000:] + "\n--- slurmctld.log ---\n" + ctld_log
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    return {"results": workdir / "results" / "smoke", "log": log,
            "jobs": _slurm_jobs(env, run_id), "workdir": workdir}


def _rule(job: dict) -> str:
    """A Slurm job's rule, from the comment the plugin gives it: rule_<name>[_wildcards_...]."""
    return re.match(r"rule_(\w+?)(?:_wildcards_|$)", job["Comment"]).group(1)


def _job_stats(log: str) -> dict[str, int]:
    """rule -> number of jobs, from the first `Job stats` table of the run (the whole DAG)."""
    table = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if m[0] != "total"}


def _resources(log: str, rule: str) -> list[str]:
    """The resources line of every `rule <rule>:` job block Snakemake printed (cluster jobs; a
    job's own log, printed on failure, says `localrule`)."""
    return re.findall(rf"^rule {rule}:\n(?:    .*\n)*?    resources: (.*)$", log, re.M)


def test_every_cluster_job_ran_through_slurm(slurm_smoke):
    log, jobs = slurm_smoke["log"], slurm_smoke["jobs"]
    done: dict[str, set[str]] = {}  # rule -> comments of completed jobs (a retry repeats one)
    for job in jobs:
        if job["JobState"] == "COMPLETED":
            done.setdefault(_rule(job), set()).add(job["Comment"])
    assert done, "no job was submitted to Slurm"
    for rule, count in _job_stats(log).items():
        ran = len(done.get(rule, ()))
        if ran == 0:  # one of the Snakefile's localrules: Snakemake ran it itself
            assert re.search(rf"^localrule {rule}:$", log, re.M), rule
        else:
            assert ran == count, (rule, ran, count)
    for rule in ("pretrain", "train", "overfit", "fit_diffusion"):
        assert rule in done, rule
    # Every cluster job left its SLURM log (kept with --slurm-keep-successful-logs).
    logs = list((slurm_smoke["workdir"] / "slurm-logs").rglob("*.log"))
    assert len(logs) == len(jobs)


def test_gpu_rules_get_the_gpu(slurm_smoke):
    """`gpu: 1` becomes `--gpus=1` for the GPU-capable rules, and Slurm grants it (gres gpu:1);
    a rule without the resource asks for no GPU."""
    log = slurm_smoke["log"]
    gpu_rules = set()
    for job in slurm_smoke["jobs"]:
        rule = _rule(job)
        wants = [bool(re.search(r"\bgpu=1\b", r)) for r in _resources(log, rule)]
        assert wants and len(set(wants)) == 1, (rule, wants)
        gres = job.get("TresPerJob", "") + job.get("TresPerNode", "")
        assert bool(re.search(r"gpu:1\b", gres)) == wants[0], (rule, job)
        if wants[0]:
            gpu_rules.add(rule)
    assert {"pretrain", "train", "overfit", "fit_diffusion"} <= gpu_rules, gpu_rules


def test_report_and_metrics_as_in_a_local_run(slurm_smoke):
    """The same checks tests/test_workflow_run.py makes on a local run of the smoke config."""
    results = slurm_smoke["results"]
    check_smoke_report(results)
    check_smoke_metrics(results)
    check_smoke_backbone_and_stores(results)


def _outputs(results: Path) -> set[str]:
    skip = ("logs", "benchmarks")
    return {str(p.relative_to(results)) for p in results.rglob("*")
            if p.is_file() and p.relative_to(results).parts[0] not in skip}


def _shape(obj):
    """The structure of a JSON value: dict keys and value types, list lengths, recursively."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return "number"
    return type(obj).__name__


def test_outputs_match_a_local_run(slurm_smoke, smoke):
    """Same files, same metrics structure (JSON keys and types), same report rows and columns.
    Values are not compared: timings differ, and determinism has tests of its own."""
    slurm_results, local_results = slurm_smoke["results"], smoke
    files = _outputs(slurm_results)
    assert files == _outputs(local_results)
    jsons = sorted(f for f in files if f.endswith(".json"))
    assert any(f.startswith("report/") for f in jsons) and len(jsons) > 5
    for name in jsons:
        a = json.loads((slurm_results / name).read_text())
        b = json.loads((local_results / name).read_text())
        assert _shape(a) == _shape(b), name
    for name in sorted(f for f in files if f.endswith(".csv")):
        with (slurm_results / name).open() as fa, (local_results / name).open() as fb:
            ra, rb = list(csv.reader(fa)), list(csv.reader(fb))
        assert ra[0] == rb[0], name  # header
        assert [r[0] for r in ra] == [r[0] for r in rb], name  # row labels
