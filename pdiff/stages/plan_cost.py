"""`pdiff plan-cost`: the work, hours and peak memory of every job a config plans."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "plan-cost"
HELP = ("the work, hours and peak memory of every job a config plans, per rule, from measured "
        "(or given) throughputs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configfile", nargs="+", type=Path, required=True,
                   help="the config file(s) as given to snakemake, merged over config/config.yaml")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--throughputs", type=Path,
                     help="a throughput file (plan-cost --measure-only --out) instead of "
                          "measuring here")
    how.add_argument("--assume", choices=["gpu", "cpu"],
                     help="FLOP-count guesses for a device instead of measuring (an assumption)")
    p.add_argument("--measure-only", action="store_true",
                   help="only measure the throughputs of the config's backbone here")
    p.add_argument("--out", type=Path, help="write the throughputs used to this JSON file")
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per unit")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    p.add_argument("--directory", type=Path, help="where the workflow runs (default: here)")


def check(args: argparse.Namespace) -> str | None:
    if args.measure_only and args.throughputs:
        return "--measure-only measures; drop --throughputs"
    return None


def run(args: argparse.Namespace) -> None:
    from pdiff.cost.plan import plan_cost_command

    print(plan_cost_command(configfiles=args.configfile, throughputs=args.throughputs,
                            assume=args.assume, measure_only=args.measure_only, out=args.out,
                            seconds=args.seconds, device=args.device, directory=args.directory))
