"""Peak RSS of `pdiff evaluate` on a test split of N and of 4N images (same classes).

Evaluation streams images through a DataLoader and keeps O(1) numbers per image, so its peak
memory must not grow with the split (the target: under 15% apart). Each size runs as its own
`pdiff evaluate` process (the shipped demo backbone, JPEGs of varied sizes and modes up to
400 px), zero-shot and VPT's baseline (pixels streamed through the prompted image tower),
without and with the feature cache; peak RSS is the child's ru_maxrss.

    python benchmarks/eval_memory.py [--images 200] [--classes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import table
from PIL import Image

SIZES = [(400, 300), (120, 90), (256, 256), (333, 200), (90, 380)]
MODES = ["RGB", "L", "CMYK", "RGB", "RGB"]


def write_dataset(root: Path, n: int, classes: int) -> dict:
    """A CoOp-layout dataset of `n` test images (and one train image per class)."""
    rng = np.random.default_rng(0)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for i in range(n + classes):
        label = i % classes
        w, h = SIZES[i % len(SIZES)]
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        rel = f"c{label}/{i}.jpg"
        (root / "images" / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).convert(MODES[i % len(MODES)]).save(root / "images" / rel)
        split["train" if i < classes else "test"].append([rel, label, f"class {label}"])
    (root / "split.json").write_text(json.dumps(split))
    return {"name": "mem", "folder": root.name, "split_file": "split.json",
            "image_dir": "images", "template": "a photo of a {}."}


def pdiff(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("pdiff")), *args, "--threads", "1",
                    "--log-level", "WARNING"], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="N: the smaller split")
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()
    backbone = json.dumps({"model": "pdiff-tiny", "pretrained": "shipped"})
    vpt = {"n_ctx": 4, "depth": 2, "optimizer": "adam", "lr": 0.001, "batch_size": 8,
           "epochs": 1}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        for n in (args.images, 4 * args.images):
            root = Path(tmp) / f"n{n}"
            spec = write_dataset(root, n, args.classes)
            sizes[n] = (root, spec)
        # One VPT prompt for both sizes (trained on the smaller dataset's train images), and
        # each size's feature cache, made before anything is measured.
        root, spec = sizes[args.images]
        draw = f"{tmp}/fs.json"
        data = ["--data-root", tmp, "--dataset", json.dumps(spec)]
        pdiff("fewshot", *data, "--shots", "1", "--seed", "1", "--out", draw)
        pdiff("train", "--method", "vpt", "--params", json.dumps(vpt), "--backbone", backbone,
              *data, "--fewshot", draw, "--seed", "1", "--out", f"{tmp}/vpt.safetensors")
        for root, spec in sizes.values():
            pdiff("features", "--backbone", backbone, "--data-root", tmp, "--dataset",
                  json.dumps(spec), "--out", f"{root}/test.h5")
        for mode in ("zeroshot", "baseline"):
            for cached in (False, True):
                peaks = [_measure(tmp, *sizes[n], backbone, mode, cached)
                         for n in (args.images, 4 * args.images)]
                rows.append([f"{mode}{' (VPT)' if mode == 'baseline' else ''}",
                             "cache" if cached else "stream", args.images, peaks[0],
                             4 * args.images, peaks[1], peaks[1] / peaks[0]])
    print(table(["evaluate", "features", "N", "peak MiB", "4N", "peak MiB", "ratio"], rows))
    worst = max(r[-1] for r in rows)
    print(f"largest ratio 4N/N: {worst:.3f} (target < 1.15)")


def _measure(tmp: str, root: Path, spec: dict, backbone: str, mode: str, cached: bool) -> float:
    """Peak RSS (MiB) of one `pdiff evaluate`, the only child of a fresh measuring process
    (ru_maxrss of children is the largest child so far)."""
    here = str(Path(__file__).parent)
    code = (f"import json, sys; sys.path.insert(0, {here!r}); from eval_memory import _child; "
            "print(_child(*json.loads(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code,
                          json.dumps([tmp, str(root), spec, backbone, mode, cached])],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _child(tmp: str, root: str, spec: dict, backbone: str, mode: str, cached: bool) -> float:
    extra = ["--features", json.dumps({spec["name"]: f"{root}/test.h5"})] if cached else []
    prompt = ["--prompt", f"{tmp}/vpt.safetensors"] if mode == "baseline" else []
    sets = json.dumps([{"dataset": spec, "split": "all"}])
    pdiff("evaluate", "--mode", mode, *prompt, "--backbone", backbone, "--data-root", tmp,
          "--sets", sets, "--params", json.dumps({"evaluation": {"batch_size": 64}}), *extra,
          "--out", f"{root}/eval-{mode}-{cached}.json")
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


if __name__ == "__main__":
    main()
