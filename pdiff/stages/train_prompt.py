"""`pdiff train`: learn a host method's prompt, the baseline (rule train).

The host prompt, not the prompt DiT: that is `pdiff fit-diffusion` (:mod:`.fit_diffusion`).
"""

from __future__ import annotations

import argparse

from pdiff.stages.common import (
    add_backbone,
    add_dataset,
    add_features,
    add_params,
    json_object,
    workers,
)

NAME = "train"
HELP = "learn a host method's prompt (baseline)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True)
    add_params(p, "the method's config")
    add_backbone(p)
    add_dataset(p)
    p.add_argument("--fewshot", required=True)
    p.add_argument("--classes", choices=["base", "new", "all"], default="all")
    add_features(p)
    p.add_argument("--augment", type=json_object, help="the `augment` config")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> None:
    from pdiff.host_prompt import train_host_prompt

    train_host_prompt(method_name=args.method, params=args.params, backbone_spec=args.backbone,
                      data_root=args.data_root, dataset=args.dataset, fewshot=args.fewshot,
                      classes=args.classes, seed=args.seed, out=args.out,
                      features=args.features, augment=args.augment,
                      workers=workers(args))
