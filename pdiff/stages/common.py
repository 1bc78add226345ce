"""Argument types and groups that several stages share, declared once."""

from __future__ import annotations

import argparse
import json


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def json_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--threads and --log-level: every stage takes them (the rules pass --threads to all)."""
    g = p.add_argument_group("run options")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads; stages that read images also decode them in "
                        "threads - 1 DataLoader workers")
    g.add_argument("--log-level", default="INFO")


def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", required=True, help="folder holding the datasets")


def add_dataset(p: argparse.ArgumentParser) -> None:
    """--data-root and one --dataset: the stages that read a single dataset."""
    add_data_root(p)
    p.add_argument("--dataset", type=json_object, required=True,
                   help='dataset spec, e.g. {"name": "pets", "folder": ..., "split_file": ...}')


def add_params(p: argparse.ArgumentParser, what: str) -> None:
    """--params: the config slice a rule's `params:` hold, as one JSON object."""
    p.add_argument("--params", type=json_object, required=True, help=what)


def add_backbone(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", type=json_object, required=True,
                   help='the `backbone` config, e.g. {"model": "ViT-B-16", "pretrained": '
                        '"openai"}')


def add_features(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", help="the draw's feature cache (`pdiff features --fewshot`)")


def workers(args: argparse.Namespace) -> int:
    """DataLoader workers decoding images: the job's threads but one."""
    return max((args.threads or 1) - 1, 0)
