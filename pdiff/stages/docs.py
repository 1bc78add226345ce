"""`pdiff docs`: docs/results.md (and the README's results block) from a report's summary.json."""

from __future__ import annotations

import argparse

NAME = "docs"
HELP = "docs/results.md (and the README's results) from a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pdiff.report.docs import add_arguments as docs_arguments  # torch-free, light

    docs_arguments(p)


def run(args: argparse.Namespace) -> None:
    from pdiff.report.docs import write_docs

    stamp = write_docs(args.summary, args.out, args.readme, args.label)
    print(f"{args.out} written ({stamp.line()})")
