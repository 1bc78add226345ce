"""`pdiff pretrain`: pretrain the demo backbone on the synthetic world (rule pretrain)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdiff.stages.common import add_params, json_object

NAME = "pretrain"
HELP = "pretrain the demo backbone on the synthetic world"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_params(p, "the backbone.pretrain config")
    p.add_argument("--world", type=json_object, required=True, help="the `world` config")
    p.add_argument("--model", default="pdiff-tiny")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)


def run(args: argparse.Namespace) -> None:
    from pdiff.pretrain import pretrain

    pretrain(params=args.params, world=args.world, model_name=args.model, out=args.out,
             metrics_out=args.metrics)
