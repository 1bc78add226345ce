"""Time the newcomer's first run: `make install`, then `make demo`, in a fresh clone.

    python benchmarks/demo_time.py [--source REPO] [--rev REV] [--avx2] [--keep] [--json OUT]

The house issue's check, in one command: it clones REV (default HEAD) of SOURCE (default this
checkout) into a temporary folder, runs `make install` and `make demo` there one after the other,
timed apart (the target, 12 minutes, is for the pipeline after install), and prints the machine
(CPU, usable CPUs, AVX-512 or not), both times, whether the pipeline kept within the target, and
the per-rule table (`benchmarks/rule_times.py`). The issue asks for an AVX2-only machine
(`grep -c avx512 /proc/cpuinfo` is 0); the output says whether this one is. `--avx2` restricts
torch's CPU kernels, oneDNN and MKL to AVX2: that emulates the instruction set, not the machine
(a core that runs AVX-512 in two halves is barely slowed by it), and the output says so. The
clone is deleted afterwards unless `--keep`; `--json` writes every number at full precision.
Run it alone on the machine: anything else running slows the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pdiff.provenance import describe_machine, machine  # noqa: E402  (torch-free)

TARGET_MIN = 12.0
#: What `--avx2` sets: torch's dispatch, oneDNN and MKL limited to AVX2 kernels.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
QUICK_RESULTS = "results/quick"  # config/quick.yaml's `results:`


def minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Run `cmd` in `cwd` with its output in `log`; its wall seconds, or exit naming the log."""
    start = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.call(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if rc:
        raise SystemExit(f"`{shlex.join(cmd)}` failed (exit {rc}) after {seconds:.0f} s; "
                         f"its output is in {log} (kept)")
    return seconds


def verdict(demo_s: float, avx512: bool | None, avx2_env: bool, target_min: float) -> str:
    within = (f"within the {target_min:g}-minute target" if demo_s <= target_min * 60
              else f"over the {target_min:g}-minute target by {minutes(demo_s - target_min * 60)}")
    if avx512 is False:
        kind = "an AVX2-only machine (no AVX-512): the issue's check"
    elif avx512 is None:
        kind = "a machine whose AVX-512 support is unknown: not the issue's check"
    else:
        kind = "a machine with AVX-512: not the issue's AVX2-only check" + (
            "; kernels restricted to AVX2 emulate its instruction set, not its speed"
            if avx2_env else "")
    return f"make demo {minutes(demo_s)}: {within}, on {kind}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(HERE.parent),
                    help="the repository to clone (a path or URL; default: this checkout)")
    ap.add_argument("--rev", default="HEAD", help="the commit to time (default: HEAD)")
    ap.add_argument("--avx2", action="store_true",
                    help="restrict the CPU kernels to AVX2 (" + " ".join(
                        f"{k}={v}" for k, v in AVX2_ENV.items()) + ")")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    ap.add_argument("--json", type=Path, help="write the times, machine and verdict here")
    ap.add_argument("--target-min", type=float, default=TARGET_MIN,
                    help=f"the pipeline's target in minutes (default {TARGET_MIN:g})")
    ap.add_argument("--make", default="make",
                    help="the make command (default: make; the tests give a stand-in)")
    args = ap.parse_args(argv)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(AVX2_ENV if args.avx2 else {})}
    work = Path(tempfile.mkdtemp(prefix="pdiff-demo-time."))
    clone = work / "pdiff"
    try:
        subprocess.run(["git", "clone", "-q", args.source, str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", args.rev], cwd=clone, check=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(work)
        raise SystemExit(f"cannot clone {args.source} at {args.rev}: {exc}") from exc
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, check=True,
                            capture_output=True, text=True).stdout.strip()
    make = shlex.split(args.make)
    install_s = timed([*make, "install"], clone, env, work / "install.log")
    demo_s = timed([*make, "demo"], clone, env, work / "demo.log")

    cpu, cpus, avx512 = machine()
    line = verdict(demo_s, avx512, args.avx2, args.target_min)
    print(f"commit {commit}; machine: {describe_machine(cpu, cpus, avx512)}"
          + ("; kernels restricted to AVX2" if args.avx2 else ""))
    print(f"make install {minutes(install_s)} (before the pipeline, not counted)")
    print(line)
    sys.stdout.flush()
    subprocess.run([sys.executable, str(HERE / "rule_times.py"), str(clone / QUICK_RESULTS),
                    "--markdown"], check=True)
    if args.json:
        args.json.write_text(json.dumps({
            "commit": commit, "cpu": cpu, "cpus": cpus, "avx512": avx512,
            "avx2_env": args.avx2, "install_s": install_s, "demo_s": demo_s,
            "target_min": args.target_min, "within": demo_s <= args.target_min * 60,
            "verdict": line}, indent=2) + "\n")
    if args.keep:
        print(f"the clone: {clone}")
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
