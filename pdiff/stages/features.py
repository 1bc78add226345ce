"""`pdiff features`: cache frozen image features of a test split or a few-shot draw (rules
features_test and features_fewshot)."""

from __future__ import annotations

import argparse

from pdiff.stages.common import add_backbone, add_dataset, json_object, workers

NAME = "features"
HELP = "cache frozen image features of a split or draw"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_backbone(p)
    add_dataset(p)
    p.add_argument("--fewshot", help="encode this draw's train and val images (default: the "
                                     "test split, all classes)")
    p.add_argument("--augment", type=json_object,
                   help="the `augment` config (train views; with --fewshot only)")
    p.add_argument("--max-images", type=int,
                   help="the test split capped as evaluate caps it (without --fewshot only)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True)


def check(args: argparse.Namespace) -> str | None:
    # Augmented views are for training images, the cap for the test split: never silently
    # dropped.
    if args.augment and not args.fewshot:
        return "--augment needs --fewshot (augmented views are of training images)"
    if args.max_images is not None and args.fewshot:
        return "--max-images caps the test split; a draw is capped by `pdiff fewshot`"
    return None


def run(args: argparse.Namespace) -> None:
    from pdiff.features import features_stage

    features_stage(backbone_spec=args.backbone, data_root=args.data_root, dataset=args.dataset,
                   out=args.out, fewshot=args.fewshot, augment=args.augment,
                   batch_size=args.batch_size, workers=workers(args),
                   max_images=args.max_images)
