"""Summarise a pipeline run's per-rule times from Snakemake's `benchmark:` files.

    python benchmarks/rule_times.py [RESULTS] [--markdown] [--group 0 2]

Every rule writes `<results>/benchmarks/<rule>/<job>.tsv` (columns s, h:m:s, max_rss, max_vms,
max_uss, max_pss, io_in, io_out, mean_load, cpu_time; one row per repeat). Prints, per rule, the
number of jobs, total, mean and longest wall seconds, CPU seconds, and the largest resident set
size; then the grand total. Jobs run side by side (`--cores`), so the total of job times is more
than the pipeline's wall time; it is the time one core-slot was busy. RESULTS defaults to
`results`; a `benchmarks` folder itself is accepted too. `--group` picks the parts of a job's
path (below benchmarks/, 0 = the rule) that name a row: `--group 0 2` splits the run rules by
method (`<rule>/<dataset>/<method>/<classes>/seed<S>`).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _common import table


@dataclass
class Rule:
    name: str
    wall: list[float] = field(default_factory=list)  # seconds per job (mean over repeats)
    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)  # MB


def _number(value: str | None) -> float:
    try:
        x = float(value) if value not in (None, "", "NA", "-") else math.nan
    except ValueError:
        return math.nan
    return x


def read_job(path: Path) -> tuple[float, float, float] | None:
    """(wall s, CPU s, max RSS MB) of one benchmark file, averaged over its repeats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        return None

    def mean(key: str) -> float:
        vals = [v for v in (_number(r.get(key)) for r in rows) if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else math.nan

    return mean("s"), mean("cpu_time"), max((_number(r.get("max_rss")) for r in rows),
                                             default=math.nan)


def collect(bench_dir: Path, group: tuple[int, ...] = (0,)) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for path in sorted(bench_dir.rglob("*.tsv")):
        parts = path.relative_to(bench_dir).with_suffix("").parts
        if len(parts) == 1:  # a rule without wildcards may write benchmarks/<rule>.tsv
            parts = (parts[0], "")
        name = "/".join(parts[i] for i in group if i < len(parts) - 1 or i == 0)
        job = read_job(path)
        if job is None:
            print(f"skipping {path}: not a Snakemake benchmark file", file=sys.stderr)
            continue
        rule = rules.setdefault(name, Rule(name))
        rule.wall.append(job[0])
        rule.cpu.append(job[1])
        rule.rss.append(job[2])
    return rules


def _sum(xs: list[float]) -> float:
    vals = [x for x in xs if not math.isnan(x)]
    return sum(vals) if vals else math.nan


def _max(xs: list[float]) -> float:
    vals = [x for x in xs if not math.isnan(x)]
    return max(vals) if vals else math.nan


def summary_rows(rules: dict[str, Rule]) -> list[list[object]]:
    rows = []
    for r in sorted(rules.values(), key=lambda r: -_sum(r.wall)):
        total = _sum(r.wall)
        rows.append([r.name, len(r.wall), total, total / len(r.wall), _max(r.wall), _sum(r.cpu),
                     _max(r.rss)])
    every = list(rules.values())
    wall = [w for r in every for w in r.wall]
    rows.append(["total", len(wall), _sum(wall), _sum(wall) / max(1, len(wall)), _max(wall),
                 _sum([c for r in every for c in r.cpu]), _max([m for r in every for m in r.rss])])
    return rows


HEADERS = ["rule", "jobs", "total s", "mean s", "max s", "CPU s", "max RSS MB"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default="results",
                    help="the results folder of a run (default: results)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--group", type=int, nargs="+", default=[0],
                    help="path parts naming a row (0: the rule; 0 2: rule/method for run rules)")
    args = ap.parse_args()
    root = Path(args.results)
    bench_dir = root if root.name == "benchmarks" else root / "benchmarks"
    if not bench_dir.is_dir():
        raise SystemExit(f"{bench_dir} does not exist: give the results folder of a pipeline run "
                         "(its rules write benchmarks/<rule>/*.tsv)")
    rules = collect(bench_dir, tuple(args.group))
    if not rules:
        raise SystemExit(f"no benchmark files under {bench_dir}")
    rows = [[_cell(c) for c in row] for row in summary_rows(rules)]
    print(f"per-rule job times from {bench_dir} (sum of job times; jobs may run side by side)")
    if args.markdown:
        print("| " + " | ".join(HEADERS) + " |")
        print("|---|" + "---:|" * (len(HEADERS) - 1))
        for row in rows:
            print("| " + " | ".join(str(c) for c in row) + " |")
    else:
        print(table(HEADERS, rows))


def _cell(x: object) -> object:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.1f}"
    return x


if __name__ == "__main__":
    main()
