"""The `pdiff` command line: argument parsing only, one subcommand per workflow rule.

Every rule of the Snakemake workflow is one of these commands, so each stage can be rerun and
debugged by hand, and a SLURM job is just that command. Config slices arrive as JSON objects
(`--params`, `--dataset`, `--backbone`) exactly as the rule's `params:` hold them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pdiff import __version__
from pdiff.errors import PdiffError
from pdiff.utils import keep_freed_memory, setup_logging, write_json

log = logging.getLogger("pdiff")


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _json_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _sets_arg(text: str) -> list[dict]:
    """--sets: a JSON list of {"dataset": {...}, "split": "base" | "new" | "all" | "val"}; a
    "val" set also names its run's "classes" and "fewshot" draw (checked by pdiff.evaluate)."""
    value = _json_value(text)
    ok = isinstance(value, list) and all(
        isinstance(s, dict) and isinstance(s.get("dataset"), dict)
        and s.get("split") in ("base", "new", "all", "val") for s in value)
    if not ok:
        raise argparse.ArgumentTypeError(
            'expected a JSON list of {"dataset": {...}, "split": "base"|"new"|"all"|"val"}')
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads; stages that read images also decode them in "
                        "threads - 1 DataLoader workers")
    p.add_argument("--log-level", default="INFO")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", required=True, help="folder holding the datasets")
    p.add_argument("--dataset", type=_json_arg, required=True,
                   help='dataset spec, e.g. {"name": "pets", "folder": ..., "split_file": ...}')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdiff", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="generate the demo world (world.kind synthetic, the "
                       "default) or the rehearsal world (rehearsal: the 15 benchmark datasets)")
    p.add_argument("--params", type=_json_arg, required=True, help="the `world` config")
    p.add_argument("--data-root", required=True)
    p.add_argument("--manifest", required=True, help="JSON written last, when all is done")
    _common(p)

    p = sub.add_parser("pretrain", help="pretrain the demo backbone on the synthetic world")
    p.add_argument("--params", type=_json_arg, required=True, help="backbone.pretrain config")
    p.add_argument("--world", type=_json_arg, required=True, help="the `world` config")
    p.add_argument("--model", default="pdiff-tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    _common(p)

    p = sub.add_parser("fetch-weights", help="download open_clip weights once into the cache")
    p.add_argument("--model", required=True, help="open_clip model name, e.g. ViT-B-16")
    p.add_argument("--pretrained", required=True, help="open_clip pretrained tag, e.g. openai")
    p.add_argument("--cache-dir", help="default: $PDIFF_WEIGHTS or ~/.cache/pdiff/weights")
    _common(p)

    p = sub.add_parser("check-data", help="check that the configured datasets are on disk")
    p.add_argument("--data-root", required=True, help="folder holding the datasets")
    p.add_argument("--datasets", type=_json_value, required=True,
                   help='JSON list of entries/CoOp names, or the config catalogue {name: entry}, '
                        'e.g. \'["OxfordPets", {"name": "mine", "folder": "mine", '
                        '"split_file": "split.json"}]\'')
    p.add_argument("--out", help="also write the report as JSON (written atomically)")
    p.add_argument("--sample", type=int, default=10, help="missing images listed per dataset")
    _common(p)

    p = sub.add_parser("fewshot", help="draw the K-shot training/validation split (CoOp)")
    _data_args(p)
    p.add_argument("--shots", type=int, required=True)
    p.add_argument("--max-images", type=int, help="cap train and val at this many (limit)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    _common(p)

    p = sub.add_parser("features", help="cache frozen image features of a split or draw")
    p.add_argument("--backbone", type=_json_arg, required=True)
    _data_args(p)
    p.add_argument("--fewshot", help="encode this draw's train and val images (default: the "
                                     "test split, all classes)")
    p.add_argument("--augment", type=_json_arg, help="the `augment` config (train views)")
    p.add_argument("--max-images", type=int, help="the test split capped as evaluate caps it")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True)
    _common(p)

    p = sub.add_parser("train", help="learn a host method's prompt (baseline)")
    p.add_argument("--method", required=True)
    p.add_argument("--params", type=_json_arg, required=True, help="the method's config")
    p.add_argument("--backbone", type=_json_arg, required=True)
    _data_args(p)
    p.add_argument("--fewshot", required=True)
    p.add_argument("--classes", choices=["base", "new", "all"], default="all")
    p.add_argument("--features", help="the draw's feature cache (`pdiff features --fewshot`)")
    p.add_argument("--augment", type=_json_arg, help="the `augment` config")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    _common(p)

    p = sub.add_parser("overfit", help="overfit the prompt per training sample into a store")
    p.add_argument("--prompt", required=True)
    p.add_argument("--backbone", type=_json_arg, required=True)
    _data_args(p)
    p.add_argument("--fewshot", required=True)
    p.add_argument("--params", type=_json_arg, required=True, help="the `overfit` config")
    p.add_argument("--features", help="the draw's feature cache (`pdiff features --fewshot`)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    _common(p)

    p = sub.add_parser("fit-diffusion", help="train the prompt DiT on a prompt store")
    p.add_argument("--prompt", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--backbone", type=_json_arg, required=True)
    p.add_argument("--params", type=_json_arg, required=True, help="the `diffusion` config")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--diagnostics", help="also write generated-vs-true delta diagnostics (JSON)")
    _common(p)

    p = sub.add_parser("evaluate", help="evaluate zero-shot, baseline or prompt diffusion")
    p.add_argument("--mode", choices=["zeroshot", "baseline", "diffusion"], required=True)
    p.add_argument("--prompt")
    p.add_argument("--dit")
    p.add_argument("--store", help="the run's prompt store: adds the memorisation check")
    p.add_argument("--variant", type=_json_arg,
                   help="ablation setting names {overfit, diffusion, sampling}, kept in records")
    p.add_argument("--backbone", type=_json_arg, required=True)
    p.add_argument("--data-root", required=True, help="folder holding the datasets")
    p.add_argument("--sets", type=_sets_arg, required=True,
                   help='JSON list of {"dataset": <catalogue entry>, "split": base|new|all}'
                        ' (test subsets), or {..., "split": "val", "classes": base|all, '
                        '"fewshot": <draw>, "features": <its cache>} (the run\'s validation)')
    p.add_argument("--params", type=_json_arg, required=True,
                   help="{evaluation: ..., sampling: ...}")
    p.add_argument("--max-images", type=int,
                   help="evaluate a seeded subset of at most this many test images (limit)")
    p.add_argument("--features", type=_json_arg, default={},
                   help='test-split feature caches by dataset name, {"name": "file.h5", ...}')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    _common(p)

    p = sub.add_parser("plan-cost", help="the work, hours and peak memory of every job a "
                       "config plans, per rule, from measured (or given) throughputs")
    p.add_argument("--configfile", nargs="+", type=Path, required=True,
                   help="the config file(s) as given to snakemake, merged over config/config.yaml")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--throughputs", type=Path,
                     help="a throughput file (plan-cost --measure-only --out) instead of "
                          "measuring here")
    how.add_argument("--assume", choices=["gpu", "cpu"],
                     help="FLOP-count guesses for a device instead of measuring (an assumption)")
    p.add_argument("--measure-only", action="store_true",
                   help="only measure the throughputs of the config's backbone here")
    p.add_argument("--out", type=Path, help="write the throughputs used to this JSON file")
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per unit")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    p.add_argument("--directory", type=Path, help="where the workflow runs (default: here)")
    _common(p)

    p = sub.add_parser("report", help="tables and figures from evaluation JSON files")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--diagnostics", nargs="*", default=[],
                   help="DiT diagnostics files (fit-diffusion --diagnostics)")
    p.add_argument("--params", type=_json_arg, required=True)
    p.add_argument("--out-dir", required=True)
    _common(p)

    from pdiff.report.docs import add_arguments  # torch-free, light

    p = sub.add_parser("docs", help="docs/results.md (and the README's results) from a report")
    add_arguments(p)
    _common(p)
    return parser


def run(args: argparse.Namespace) -> None:
    # Imports are local so that `pdiff --help` stays fast and light.
    cmd = args.command
    workers = max((args.threads or 1) - 1, 0)  # DataLoader workers decoding images
    if cmd == "prepare":
        kind = args.params.get("kind", "synthetic")
        if kind == "rehearsal":
            from pdiff.data.rehearsal import write_rehearsal as write
        elif kind == "synthetic":
            from pdiff.data.synthetic import write_world as write
        else:
            raise PdiffError(f"unknown world.kind {kind!r}; use synthetic or rehearsal")
        manifest = write(args.data_root, args.params)
        write_json(args.manifest, manifest)
    elif cmd == "pretrain":
        from pdiff.pretrain import pretrain

        pretrain(args.params, args.world, args.model, Path(args.out), Path(args.metrics))
    elif cmd == "fetch-weights":
        from pdiff.backbone import fetch_weights

        cache = Path(args.cache_dir) if args.cache_dir else None
        print(fetch_weights(args.model, args.pretrained, cache))
    elif cmd == "check-data":
        from pdiff.check_data import assert_ok, check_data, format_report

        report = check_data(args.data_root, args.datasets, args.sample)
        print(format_report(report))
        if args.out:
            write_json(args.out, report)
        assert_ok(report)
    elif cmd == "fewshot":
        from pdiff.data import DatasetSpec, draw_fewshot, limit_draw, read_split, save_fewshot

        splits = read_split(args.data_root, DatasetSpec.from_dict(args.dataset))
        draw = draw_fewshot(splits, args.shots, args.seed)
        save_fewshot(args.out, limit_draw(draw, args.max_images))
    elif cmd == "features":
        from pdiff.features import features_stage

        features_stage(args.backbone, args.data_root, args.dataset, args.out, args.fewshot,
                       args.augment, args.batch_size, workers, args.max_images)
    elif cmd == "train":
        from pdiff.train import train

        train(args.method, args.params, args.backbone, args.data_root, args.dataset,
              args.fewshot, args.classes, args.seed, args.out, features=args.features,
              augment=args.augment, workers=workers)
    elif cmd == "overfit":
        from pdiff.overfit import overfit

        overfit(args.prompt, args.backbone, args.data_root, args.dataset, args.fewshot,
                args.params, args.seed, args.out, features=args.features, workers=workers)
    elif cmd == "fit-diffusion":
        from pdiff.fit_diffusion import fit_stage

        fit_stage(args.prompt, args.store, args.backbone, args.params, args.seed, args.out,
                  args.diagnostics)
    elif cmd == "evaluate":
        from pdiff.evaluate import evaluate

        evaluate(args.mode, args.backbone, args.data_root, args.sets, args.params, args.seed,
                 args.out, prompt=args.prompt, dit=args.dit, store=args.store,
                 variant=args.variant, features=args.features, workers=workers,
                 max_images=args.max_images)
    elif cmd == "plan-cost":
        from pdiff.cost.plan import plan_cost_command

        if args.measure_only and args.throughputs:
            raise PdiffError("--measure-only measures; drop --throughputs")
        print(plan_cost_command(args.configfile, args.throughputs, args.assume,
                                args.measure_only, args.out, args.seconds, args.device,
                                args.directory))
    elif cmd == "report":
        from pdiff.report import make_report

        make_report([Path(p) for p in args.inputs], args.params, Path(args.out_dir),
                    [Path(p) for p in args.diagnostics])
    elif cmd == "docs":
        from pdiff.report.docs import write_docs

        stamp = write_docs(args.summary, args.out, args.readme, args.label)
        print(f"{args.out} written ({stamp.line()})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    keep_freed_memory()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # compute jobs never touch the network
    try:
        run(args)
    except PdiffError as exc:
        print(f"pdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
