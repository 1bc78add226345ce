"""`pdiff overfit`: overfit the prompt per training sample into a prompt store (rule overfit)."""

from __future__ import annotations

import argparse

from pdiff.stages.common import add_backbone, add_dataset, add_features, add_params, workers

NAME = "overfit"
HELP = "overfit the prompt per training sample into a store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="the host prompt (`pdiff train`)")
    add_backbone(p)
    add_dataset(p)
    p.add_argument("--fewshot", required=True)
    add_params(p, "the `overfit` config")
    add_features(p)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> None:
    from pdiff.overfit import overfit

    overfit(prompt=args.prompt, backbone_spec=args.backbone, data_root=args.data_root,
            dataset=args.dataset, fewshot=args.fewshot, params=args.params, seed=args.seed,
            out=args.out, features=args.features, workers=workers(args))
