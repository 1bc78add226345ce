"""The `pdiff` command line: one subcommand per workflow stage, registered from pdiff.stages.

Every rule of the Snakemake workflow is one of these commands, so each stage can be rerun and
debugged by hand, and a SLURM job is just that command. Config slices arrive as JSON objects
(`--params`, `--dataset`, `--backbone`) exactly as the rule's `params:` hold them. Each stage's
options and its call live in its own module, pdiff/stages/<stage>.py; this file only builds
the parser from them and runs the chosen one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from pdiff import __version__
from pdiff.errors import PdiffError
from pdiff.stages import (
    check_data,
    docs,
    evaluate,
    features,
    fetch_weights,
    fewshot,
    fit_diffusion,
    overfit,
    plan_cost,
    prepare,
    pretrain,
    report,
    train_prompt,
)
from pdiff.stages.common import add_run_options
from pdiff.utils import keep_freed_memory, setup_logging

# The subcommands, in workflow order (the order of `pdiff --help`).
STAGES: tuple[ModuleType, ...] = (prepare, pretrain, fetch_weights, check_data, fewshot, features,
                                  train_prompt, overfit, fit_diffusion, evaluate, plan_cost,
                                  report, docs)


class StageParser(argparse.ArgumentParser):
    """A subcommand's parser: after parsing, its stage's `check` may still refuse the
    combination (e.g. an option one --mode needs), as a usage error of that subcommand."""

    stage: ModuleType | None = None

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        check = getattr(self.stage, "check", None)
        message = check(namespace) if check else None
        if message:
            self.error(message)
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdiff", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=StageParser)
    for stage in STAGES:
        p = sub.add_parser(stage.NAME, help=stage.HELP, description=stage.HELP)
        p.stage = stage
        stage.add_arguments(p)
        add_run_options(p)
        p.set_defaults(stage=stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    keep_freed_memory()
    if args.threads and not getattr(args.stage, "TORCH_FREE", False):
        import torch

        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # compute jobs never touch the network
    try:
        args.stage.run(args)
    except PdiffError as exc:
        print(f"pdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
