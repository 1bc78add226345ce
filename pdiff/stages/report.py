"""`pdiff report`: tables and figures from the evaluation JSON files (rule report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdiff.stages.common import add_params

NAME = "report"
HELP = "tables and figures from evaluation JSON files"
TORCH_FREE = True  # reads JSON and tables only: --threads does not load torch (1.5 s a job)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", nargs="+", type=Path, required=True)
    p.add_argument("--diagnostics", nargs="*", type=Path, default=[],
                   help="DiT diagnostics files (fit-diffusion --diagnostics)")
    add_params(p, "{protocols, methods, seeds, ...}: the report's config")
    p.add_argument("--out-dir", type=Path, required=True)


def run(args: argparse.Namespace) -> None:
    from pdiff.report import make_report

    make_report(inputs=args.inputs, params=args.params, out_dir=args.out_dir,
                diagnostics=args.diagnostics)
