"""How training augmentation meets the frozen-feature cache: K cached views against fresh crops.

CoOp, CoCoOp and KgCoOp train on frozen image features. With the published augmentation every
epoch should see a new random crop of each image; the cache instead holds `views` augmented
features per image and each epoch draws one. This script trains CoOp (the demo recipe) on the
base classes of one demo-world dataset under: no augmentation, K cached views for several K,
and fresh crops encoded every epoch (no cache, the plain path), then prints base and new test
accuracy, training seconds, and the difference to fresh crops. Run it on the demo world (make
one with `pdiff prepare`, or point --data-root at results/data/world after `make demo`).

    python benchmarks/augment_views.py --data-root results/data/world [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import table

COOP = {"n_ctx": 16, "init": "random", "optimizer": "adam", "lr": 0.001, "momentum": 0.9,
        "weight_decay": 0.0, "batch_size": 32, "epochs": 50, "warmup_epochs": 1}
BACKBONE = json.dumps({"model": "pdiff-tiny", "pretrained": "shipped"})


def pdiff(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("pdiff")), *args, "--threads", "1",
                    "--log-level", "WARNING"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--views", type=int, nargs="+", default=[1, 4, 8, 16])
    args = ap.parse_args()
    spec = json.dumps({"name": args.dataset, "folder": args.dataset,
                       "split_file": f"split_zhou_{args.dataset}.json",
                       "template": "a photo of a {}."})
    data = ["--data-root", args.data_root, "--dataset", spec]
    sets = json.dumps([{"dataset": json.loads(spec), "split": s} for s in ("base", "new")])
    settings = {"none": None, **{f"{k} views": k for k in args.views}, "fresh crops": 0}
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as tmp:
        pdiff("features", "--backbone", BACKBONE, *data, "--out", f"{tmp}/test.h5")
        for seed in args.seeds:
            draw = f"{tmp}/fs{seed}.json"
            pdiff("fewshot", *data, "--shots", "16", "--seed", str(seed), "--out", draw)
            for name, views in settings.items():
                run = f"{tmp}/{seed}-{name.replace(' ', '_')}"
                extra = []
                if views is not None:
                    augment = json.dumps({"enabled": True, "views": max(views, 1)})
                    extra = ["--augment", augment]
                    if views:  # cached views; fresh crops read no cache
                        pdiff("features", "--backbone", BACKBONE, *data, "--fewshot", draw,
                              "--augment", augment, "--out", f"{run}.h5")
                        extra += ["--features", f"{run}.h5"]
                t0 = time.perf_counter()
                pdiff("train", "--method", "coop", "--params", json.dumps(COOP), "--backbone",
                      BACKBONE, *data, "--fewshot", draw, "--classes", "base", "--seed",
                      str(seed), "--out", f"{run}.safetensors", *extra)
                seconds = time.perf_counter() - t0
                pdiff("evaluate", "--mode", "baseline", "--prompt", f"{run}.safetensors",
                      "--backbone", BACKBONE, "--data-root", args.data_root, "--sets", sets,
                      "--features", json.dumps({args.dataset: f"{tmp}/test.h5"}), "--params",
                      json.dumps({"evaluation": {"batch_size": 256}}), "--out",
                      f"{run}.json")
                base, new = (r["accuracy"] for r in
                             json.loads(Path(f"{run}.json").read_text())["evaluations"])
                results[name].append((base, new, seconds))
    fresh = results["fresh crops"]
    rows = []
    for name, runs in results.items():
        base = statistics.mean(r[0] for r in runs)
        new = statistics.mean(r[1] for r in runs)
        hm = [2 * b * n / (b + n) for b, n, _ in runs]
        d_hm = [h - 2 * f[0] * f[1] / (f[0] + f[1]) for h, f in zip(hm, fresh, strict=True)]
        rows.append([name, base, new, statistics.mean(hm), statistics.mean(d_hm),
                     statistics.mean(r[2] for r in runs)])
    print(f"CoOp on {args.dataset} base classes, seeds {args.seeds} (demo world, pdiff-tiny)")
    print(table(["augmentation", "base", "new", "HM", "HM - fresh", "train s"], rows))


if __name__ == "__main__":
    main()
