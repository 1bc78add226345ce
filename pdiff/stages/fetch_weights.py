"""`pdiff fetch-weights`: download open_clip weights once into the cache (rule fetch_weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "fetch-weights"
HELP = "download open_clip weights once into the cache"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="open_clip model name, e.g. ViT-B-16")
    p.add_argument("--pretrained", required=True, help="open_clip pretrained tag, e.g. openai")
    p.add_argument("--cache-dir", type=Path,
                   help="default: $PDIFF_WEIGHTS or ~/.cache/pdiff/weights")


def run(args: argparse.Namespace) -> None:
    from pdiff.backbone import fetch_weights

    print(fetch_weights(args.model, args.pretrained, args.cache_dir))
