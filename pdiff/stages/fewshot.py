"""`pdiff fewshot`: draw the K-shot training/validation split, as CoOp does (rule fewshot)."""

from __future__ import annotations

import argparse

from pdiff.stages.common import add_dataset

NAME = "fewshot"
HELP = "draw the K-shot training/validation split (CoOp)"
TORCH_FREE = True  # reads splits and JSON only: --threads does not load torch (1.5 s a job)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset(p)
    p.add_argument("--shots", type=int, required=True)
    p.add_argument("--max-images", type=int, help="cap train and val at this many (limit)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> None:
    from pdiff.data import DatasetSpec, draw_fewshot, limit_draw, read_split, save_fewshot

    splits = read_split(args.data_root, DatasetSpec.from_dict(args.dataset))
    draw = draw_fewshot(splits, args.shots, args.seed)
    save_fewshot(args.out, limit_draw(draw, args.max_images))
