"""Jobs on a small CPU: one after the other on two threads each (with the DataLoader worker
that `--threads 2` starts), against side by side on one thread each, the workflow's CPU default
(`PLAN.threads`). Checks that both ways write the same outputs and prints the ratio.

Runs the real commands of a finished quick demo (`make demo` first), as Snakemake's dry run
prints them, with their outputs sent to a temporary folder; the demo's own files are only read.

    python benchmarks/job_threads.py [--rule overfit] [--jobs 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from _common import table

from pdiff.cost.plan import dry_run, parse_jobs

REPO = Path(__file__).resolve().parent.parent
#: The rules this can time: each reads images and writes HDF5.
RULES = ("overfit", "features_test", "features_fewshot")


def commands(configfile: str, rule: str) -> list[list[str]]:
    """The rule's `pdiff` commands, as the workflow's dry run plans them."""
    planned = parse_jobs(dry_run([REPO / configfile], REPO))
    return sorted(list(p.argv) for p in planned if p.rule == rule and p.argv)


def with_options(argv: list[str], out: Path, threads: int) -> list[str]:
    """`argv` writing to `out` on `threads` threads."""
    argv = list(argv)
    for flag, value in (("--out", str(out)), ("--threads", str(threads))):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def run(jobs: list[list[str]], folder: Path, threads: int, side_by_side: bool) -> float:
    """Wall seconds to run `jobs` (all at once, or one after the other)."""
    argvs = [with_options(a, folder / f"{i}.h5", threads) for i, a in enumerate(jobs)]
    t0 = time.perf_counter()
    if side_by_side:
        procs = [subprocess.Popen(a, cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for a in argvs]
        codes = [p.wait() for p in procs]
    else:
        codes = [subprocess.run(a, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL).returncode for a in argvs]
    if any(codes):
        raise SystemExit(f"a job failed (exit codes {codes}): run it by hand: {argvs[0]}")
    return time.perf_counter() - t0


def same_outputs(a: Path, b: Path) -> bool:
    """Every float dataset of two HDF5 files equal, bit for bit."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names: list[str] = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        return all(np.array_equal(fa[n][()], fb[n][()]) for n in names
                   if fa[n].dtype.kind == "f")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", default="config/quick.yaml")
    ap.add_argument("--rule", default="overfit", choices=RULES)
    ap.add_argument("--jobs", type=int, default=2, help="jobs run each way (the cores)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    jobs = commands(args.configfile, args.rule)[: args.jobs]
    if len(jobs) < args.jobs:
        raise SystemExit(f"found {len(jobs)} {args.rule} jobs; run `make demo` first")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ways = {"one after the other, 2 threads": (2, False), "side by side, 1 thread": (1, True)}
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for w, (threads, together) in ways.items():
                folder = Path(tmp) / f"{r}-{threads}"
                folder.mkdir()
                seconds[w].append(run(jobs, folder, threads, together))
        same = all(same_outputs(Path(tmp) / f"0-2/{i}.h5", Path(tmp) / f"0-1/{i}.h5")
                   for i in range(len(jobs)))
    print(f"{len(jobs)} `{args.rule}` jobs of {args.configfile}, "
          f"{os.cpu_count()} CPUs, median of {args.rounds} rounds")
    print(table(["way", "wall s"], [[w, float(np.median(s))] for w, s in seconds.items()]))
    plain, fast = (float(np.median(s)) for s in seconds.values())
    print(f"same outputs: {same}; ratio: {plain / fast:.2f}x")
    if not same:
        raise SystemExit("the two ways wrote different outputs")


if __name__ == "__main__":
    main()
