"""`pdiff evaluate`: zero-shot CLIP, a host prompt, or prompt diffusion on test sets (rules
evaluate_zeroshot, evaluate_baseline, evaluate_diffusion)."""

from __future__ import annotations

import argparse

from pdiff.stages.common import (
    add_backbone,
    add_data_root,
    add_params,
    json_object,
    json_value,
    workers,
)

NAME = "evaluate"
HELP = "evaluate zero-shot, baseline or prompt diffusion"
SPLITS = ("base", "new", "all", "val")

# The inputs each --mode needs; the others' inputs are refused rather than silently ignored.
NEEDS = {"zeroshot": (), "baseline": ("prompt",), "diffusion": ("prompt", "dit", "store")}
DIFFUSION_ONLY = ("dit", "store", "variant")


def sets_arg(text: str) -> list[dict]:
    """--sets: a JSON list of {"dataset": {...}, "split": "base" | "new" | "all" | "val"}; a
    "val" set also names its run's "classes" and "fewshot" draw (checked by pdiff.evaluate)."""
    value = json_value(text)
    ok = isinstance(value, list) and all(
        isinstance(s, dict) and isinstance(s.get("dataset"), dict) and s.get("split") in SPLITS
        for s in value)
    if not ok:
        raise argparse.ArgumentTypeError(
            'expected a JSON list of {"dataset": {...}, "split": "base"|"new"|"all"|"val"}')
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=list(NEEDS), required=True)
    p.add_argument("--prompt", help="the host prompt (`pdiff train`); baseline and diffusion")
    p.add_argument("--dit", help="the prompt DiT (`pdiff fit-diffusion`); diffusion only")
    p.add_argument("--store", help="the run's prompt store (`pdiff overfit`), for the "
                                   "memorisation check; diffusion only")
    p.add_argument("--variant", type=json_object,
                   help="ablation setting names {overfit, diffusion, sampling}, kept in "
                        "records; diffusion only")
    add_backbone(p)
    add_data_root(p)
    p.add_argument("--sets", type=sets_arg, required=True,
                   help='JSON list of {"dataset": <catalogue entry>, "split": base|new|all|val}')
    add_params(p, "{evaluation: ..., sampling: ...}")
    p.add_argument("--max-images", type=int,
                   help="evaluate a seeded subset of at most this many test images (limit)")
    p.add_argument("--features", type=json_object, default={},
                   help='test-split feature caches by dataset name, {"name": "file.h5", ...}')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)


def check(args: argparse.Namespace) -> str | None:
    missing = [f"--{n}" for n in NEEDS[args.mode] if not getattr(args, n)]
    if missing:
        return f"--mode {args.mode} needs {' and '.join(missing)}"
    if args.mode != "diffusion":
        extra = [f"--{n}" for n in DIFFUSION_ONLY if getattr(args, n) is not None]
        if args.mode == "zeroshot" and args.prompt is not None:
            extra.insert(0, "--prompt")
        if extra:
            return f"--mode {args.mode} takes no {', '.join(extra)}"
    return None


def run(args: argparse.Namespace) -> None:
    from pdiff.evaluate import evaluate

    evaluate(mode=args.mode, backbone_spec=args.backbone, data_root=args.data_root,
             sets=args.sets, params=args.params, seed=args.seed, out=args.out,
             prompt=args.prompt, dit=args.dit, store=args.store, variant=args.variant,
             features=args.features, workers=workers(args), max_images=args.max_images)
