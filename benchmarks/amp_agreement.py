"""bf16 autocast of the frozen towers (`backbone.amp`) against fp32: logits, predictions, time.

    python benchmarks/amp_agreement.py [--tiny-images 256] [--vit-images 16]
        [--overfit-images 2] [--overfit-steps 5] [--methods coop vpt maple] [--threads 1]
        [--skip-vit] [--device cpu|cuda]

`backbone.amp: true` wraps the frozen towers' forwards in `torch.autocast("cuda", bf16)`
(`Backbone.autocast`, used by every method's `encode` and by `encode_images`). This script runs
the same code paths with that autocast pointed at the CPU instead (`torch.autocast("cpu",
dtype=torch.bfloat16)`, patched into `Backbone.autocast` here only) and compares against fp32:

- **evaluation**: logits of the learned prompt on a batch of images (image features encoded
  under the same precision, as the feature cache would be): max abs logit difference, top-1
  agreement, accuracy under each;
- **overfitting**: `overfit_batch` with per-sample prompts for `--overfit-steps` steps (the
  benchmark's 5, its lr): the losses before and after, and the difference of the two runs'
  prompt updates relative to the fp32 update (norms over all prompt entries);
- **time**: the bf16 / fp32 time of the evaluation (CPU; says nothing about a GPU's tensor cores).

Two worlds: the shipped pdiff-tiny (trained on the demo world) on demo-world images (shapes, 48
classes), and ViT-B/16 with seeded random weights over ImageNet's 1,000 class names (open_clip
ships them) on random pixels. Random weights make near-ties among 1,000 classes: a flipped
prediction is counted as within rounding when fp32's own top-1 margin is below the max abs
logit difference.

CPU bf16 is a proxy for CUDA bf16 numerics (the same format and autocast op lists, different
kernels and accumulation order), not a GPU measurement. `--device cuda` is the GPU measurement
(`benchmarks/device_check.sh`): the backbone's own CUDA autocast, unpatched, against fp32 with
TF32 off (`_common.setup`), so the fp32 side is exact fp32 and the time ratio is the GPU's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import open_clip
import torch
from _common import add_device_args, demo_params, random_backbone, setup, sync, table

from pdiff.backbone import Backbone, load_backbone, normalise_images
from pdiff.data.synthetic import COLOURS, FAMILIES, WorldSpec, render_batch
from pdiff.data.templates import GENERIC_TEMPLATE
from pdiff.methods import Inputs, PromptMethod, get_method
from pdiff.overfit import overfit_batch

#: The benchmark's recipes where they differ from the demo's (config/benchmark.yaml).
VIT_PARAMS = {
    "coop": {"n_ctx": 4, "init": "a photo of a"},
    "vpt": {"n_ctx": 8, "depth": 12},
    "maple": {"n_ctx": 2, "init": "a photo of a", "depth": 9},
}
OVERFIT_LR = 0.003  # config/benchmark.yaml's overfit.lr


def cpu_autocast(self: Backbone):
    """Backbone.autocast with the CPU as the autocast device (this script only)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp)


def demo_world(n: int, seed: int = 0) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Class names, normalised-later pixels [n, 3, 32, 32] and labels of the demo's shapes."""
    spec = WorldSpec()
    g = torch.Generator().manual_seed(seed)
    objects = torch.randint(spec.objects, (n,), generator=g)
    colours = torch.randint(spec.colours, (n,), generator=g)
    pixels = render_batch("shapes", objects, colours, ["photo"] * n, g, spec.image_size)
    assert len(COLOURS) >= spec.colours and len(FAMILIES["shapes"]) >= spec.objects
    return spec.classnames("shapes"), pixels, colours * spec.objects + objects


def perturbed(method: PromptMethod, n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Per-sample prompts near the learned one (as overfitting starts from it)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v.expand(n, *v.shape[1:]) + 0.02 * torch.randn(n, *v.shape[1:], generator=g)
            for k, v in method.init_prompt().items()}


def compare(bb: Backbone, method: PromptMethod, pixels: torch.Tensor, labels: torch.Tensor,
            overfit_images: int, overfit_steps: int) -> list[object]:
    """One row: evaluation agreement and timing, and one overfitting step, fp32 vs bf16."""

    def inputs() -> Inputs:
        return Inputs(bb.encode_images(pixels), pixels if method.needs_images else None)

    def evaluate() -> torch.Tensor:
        with torch.no_grad():
            return method.logits(inputs())

    def step() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        k = overfit_images
        x = inputs()[:k]
        return overfit_batch(method, x, labels[:k], steps=overfit_steps, lr=OVERFIT_LR)

    out: dict[bool, tuple] = {}
    for amp in (False, True):
        bb.amp = amp
        logits, seconds = timed(evaluate)
        out[amp] = logits, seconds, step()
    bb.amp = False
    (l32, t32, (p32, b32, a32)), (l16, t16, (p16, b16, a16)) = out[False], out[True]
    diff = (l16 - l32).abs().max().item()
    top32, top16 = l32.argmax(-1), l16.argmax(-1)
    flipped = top32 != top16
    two = l32.topk(2, -1).values
    near_tie = (two[:, 0] - two[:, 1]) <= diff
    init = method.init_prompt()
    moved = torch.cat([(p32[k] - init[k]).flatten() for k in p32]).norm().item()
    apart = torch.cat([(p16[k] - p32[k]).flatten() for k in p32]).norm().item()
    return [method.name, len(labels), l32.shape[1], diff, (l32.abs().max().item()),
            f"{int((~flipped).sum())}/{len(labels)}", int((flipped & ~near_tie).sum()),
            100.0 * (top32 == labels).float().mean().item(),
            100.0 * (top16 == labels).float().mean().item(),
            (b16 - b32).abs().max().item(), (a16 - a32).abs().max().item(),
            apart / max(moved, 1e-12), t16 / t32]


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    fn()  # warm-up: autocast's weight casts and the allocator
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


HEADERS = ["method", "images", "classes", "max |dlogit|", "max |logit|", "top-1 agree",
           "flips beyond ties", "acc fp32 %", "acc bf16 %", "|dloss| before", "|dloss| after",
           "|update diff| / |update|", "time bf16/fp32"]


def method_rows(args: argparse.Namespace, bb: Backbone, names: list[str], pixels: torch.Tensor,
                labels: torch.Tensor, params_of: Callable[[str], dict]) -> list[list[object]]:
    """One table row per method of `args.methods`: fp32 against bf16 autocast."""
    rows = []
    for name in args.methods:
        method = get_method(name)(bb, names, GENERIC_TEMPLATE, params_of(name))
        method.to(bb.device).requires_grad_(False)
        rows.append(compare(bb, method, pixels, labels, args.overfit_images, args.overfit_steps))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny-images", type=int, default=256, help="demo-world images, pdiff-tiny")
    ap.add_argument("--vit-images", type=int, default=16, help="random images, ViT-B/16")
    ap.add_argument("--overfit-images", type=int, default=2,
                    help="images of the overfitting step (per-sample prompts)")
    ap.add_argument("--overfit-steps", type=int, default=5, help="overfitting steps compared")
    ap.add_argument("--methods", nargs="+", default=["coop", "vpt", "maple"])
    ap.add_argument("--skip-vit", action="store_true", help="only the pdiff-tiny world")
    add_device_args(ap)
    args = ap.parse_args()
    setup(args.threads)
    dev = args.device
    if dev == "cpu":
        Backbone.autocast = cpu_autocast  # the stages' autocast, on the CPU
    where = ("CPU bf16 autocast" if dev == "cpu"
             else f"CUDA bf16 autocast ({torch.cuda.get_device_name()})")

    bb = load_backbone({"model": "pdiff-tiny", "pretrained": "shipped"}, dev)
    names, images, labels = demo_world(args.tiny_images)
    pixels, labels = normalise_images(bb.model, images).to(dev), labels.to(dev)
    rows = method_rows(args, bb, names, pixels, labels, lambda name: demo_params(name, bb))
    print(f"pdiff-tiny (shipped weights), demo world (shapes, {len(names)} classes), {where} "
          f"vs fp32, {args.threads} thread(s); learned prompts as initialised")
    print(table(HEADERS, rows))
    if args.skip_vit:
        return

    bb = random_backbone("ViT-B-16", device=dev)
    names = list(open_clip.IMAGENET_CLASSNAMES)
    g = torch.Generator().manual_seed(0)  # on the CPU: the same draws on every device
    pixels = normalise_images(bb.model, torch.rand(args.vit_images, 3, bb.image_size,
                                                   bb.image_size, generator=g)).to(dev)
    labels = torch.randint(len(names), (args.vit_images,), generator=g).to(dev)
    rows = method_rows(args, bb, names, pixels, labels, VIT_PARAMS.__getitem__)
    print(f"\nViT-B/16 (random weights), ImageNet's {len(names)} class names, random pixels, "
          f"{where} vs fp32 (accuracy is chance: random weights and labels)")
    print(table(HEADERS, rows))
    if dev == "cpu":
        print("\nCPU bf16 autocast is a proxy for CUDA bf16 numerics, not a GPU measurement; the "
              "time ratio is the CPU's.")


if __name__ == "__main__":
    main()
