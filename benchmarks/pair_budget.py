"""The images x classes memory budget and length-bucketed class texts at ImageNet's scale.

    python benchmarks/pair_budget.py [--eval-images 4] [--overfit-images 2] [--max-pairs 1000]
        [--rounds 1] [--threads 1]

ImageNet's 1,000 class names (open_clip ships them), a randomly initialised ViT-B/16 text tower
and CoOp as config/benchmark.yaml has it (4 context tokens from "a photo of a"), with one prompt
per image, as overfitting and diffusion evaluation have them:

- **evaluation batch** (no autograd): logits of `--eval-images` images x 1,000 classes, without
  a budget (each length bucket at once) and within `--max-pairs` (its chunks);
- **overfitting step** (autograd): one step of `overfit_batch` on `--overfit-images` images,
  without a budget, within it (micro-batches of samples: what pdiff runs), and with the whole
  batch encoded in checkpointed class chunks of the same size instead (the alternative at equal
  memory);
- **bucketed vs padded**: the evaluation batch with each class text cut after its own
  end-of-text vs every text padded to the longest name (median of interleaved rounds).

Peak memory is the CPU allocator's peak above the call's start, from the torch profiler's memory
events (fp32; a GPU's fused attention keeps a little less); the memory per pair is that peak
over the pairs alive at once (without autograd: the largest chunk; under it: the micro-batch).
Every variant is checked against the unbudgeted, bucketed result. Last, from the measured memory
per (image, class) pair, each rule of config/benchmark.yaml at 1,000 classes with pdiff's
default budget and without any (every pair of a step at once, as before the budget), against a
16 GiB card, and overfitting VPT's images under autograd with and without `compute.max_images`
(per image the cost model's ViT-B/16 count, not measured here).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
import yaml
from _common import check_same, interleaved, random_backbone, setup, table

import pdiff.overfit
from pdiff.budget import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PAIRS, allocator_peak
from pdiff.cost.model import Arch, Throughputs
from pdiff.data.templates import GENERIC_TEMPLATE
from pdiff.methods import Inputs, get_method
from pdiff.methods.text import ClassTexts
from pdiff.overfit import overfit_batch

BENCHMARK_CONFIG = Path(__file__).resolve().parents[1] / "config" / "benchmark.yaml"
CARD = 16 * 2**30
MIB, GIB = 2**20, 2**30


def profiled(fn: Callable[[], object]) -> tuple[object, int, float]:
    """fn's result, its allocator peak in bytes (above the start) and its seconds."""
    t0 = time.perf_counter()
    out, peak = allocator_peak(fn)
    return out, peak, time.perf_counter() - t0


def rule_estimates(cfg: dict, per_pair_grad: float, per_pair_eval: float, weights: int,
                   classes: int) -> list[list[object]]:
    """Per rule: (image, class) pairs one step encodes, those held at once without a budget and
    with pdiff's default, and the memory that implies (weights + pairs x measured per pair)."""
    budget = DEFAULT_MAX_PAIRS
    mp, ov, dit = cfg["method_params"], cfg["overfit"], cfg["diffusion"]
    rows_cls = dit.get("cls_batch") or dit["batch_size"]
    per_class = min(classes, 1 + (dit.get("cls_negatives") or classes))
    accuracy_images = max(1, budget // classes)
    overfit_held = budget // classes * classes or budget  # micro-batches, else class chunks
    rules = [  # (rule, pairs per step, held without a budget, held within it, autograd)
        ("train coop (shared prompt)", classes, classes, min(classes, budget), True),
        (f"train cocoop (batch {mp['cocoop']['batch_size']})",
         mp["cocoop"]["batch_size"] * classes, mp["cocoop"]["batch_size"] * classes,
         min(mp["cocoop"]["batch_size"] * classes, budget), True),
        ("train cocoop accuracy pass", accuracy_images * classes, 512 * classes,
         accuracy_images * classes, False),
        (f"overfit (batch {ov['batch_size']})", ov["batch_size"] * classes,
         ov["batch_size"] * classes, overfit_held, True),
        (f"fit_diffusion cls term ({rows_cls} rows x all classes)", rows_cls * classes,
         rows_cls * classes, budget, True),
        (f"fit_diffusion cls term ({rows_cls} rows x {per_class} classes)",
         rows_cls * per_class, rows_cls * per_class, min(rows_cls * per_class, budget), True),
        (f"evaluate diffusion/cocoop (batch {cfg['evaluation']['batch_size']})",
         cfg["evaluation"]["batch_size"] * classes, cfg["evaluation"]["batch_size"] * classes,
         budget, False),
    ]
    out = []
    for name, pairs, unbudgeted, held, grad in rules:
        per = per_pair_grad if grad else per_pair_eval
        without, within = weights + unbudgeted * per, weights + held * per
        out.append([name, pairs, "yes" if grad else "no", without / GIB,
                    "yes" if without <= CARD else "NO", held, within / GIB,
                    "yes" if within <= CARD else "NO"])
    # Image-prompt methods (VPT): images under autograd, per image the cost model's ViT-B/16
    # count (fp32), within compute.max_images; the "pairs" columns count images here.
    image = Throughputs.assumed(Arch.of("ViT-B-16"), dit, "gpu").image_bytes
    held = min(ov["batch_size"], DEFAULT_MAX_IMAGES)
    without, within = weights + ov["batch_size"] * image, weights + held * image
    out.append([f"overfit vpt (batch {ov['batch_size']}): images, not pairs",
                ov["batch_size"], "yes", without / GIB, "yes" if without <= CARD else "NO",
                held, within / GIB, "yes" if within <= CARD else "NO"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-images", type=int, default=4, help="images of the evaluation batch")
    ap.add_argument("--overfit-images", type=int, default=2, help="images overfitted at once")
    ap.add_argument("--max-pairs", type=int, default=1000,
                    help="the budget measured here (1000: one image's classes at a time)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of bucketed vs padded")
    ap.add_argument("--threads", type=int, default=1,
                    help="1 by default: on a shared 2-core machine 2 threads wait on each other")
    args = ap.parse_args()
    setup(args.threads)
    bb = random_backbone("ViT-B-16")
    weights = sum(p.numel() * p.element_size() for p in bb.model.parameters())
    bb.model.visual = None  # only the text tower runs (image features are cached)
    names = list(open_clip.IMAGENET_CLASSNAMES)
    coop = get_method("coop")(bb, names, GENERIC_TEMPLATE, {"n_ctx": 4, "init": "a photo of a"})
    coop.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    n, c, limit = max(args.eval_images, args.overfit_images), len(names), args.max_pairs
    inputs = Inputs(F.normalize(torch.randn(n, bb.embed_dim, generator=g), dim=-1))
    labels = torch.randint(c, (n,), generator=g)
    prompts = {k: v.expand(n, *v.shape[1:]) + 0.02 * torch.randn(n, *v.shape[1:], generator=g)
               for k, v in coop.init_prompt().items()}
    lengths = coop.texts.eot + 1
    bucket = int(lengths.unique(return_counts=True)[1].max())  # classes of the largest bucket
    print(f"ImageNet's {c} class names, CoOp (4 context tokens), random ViT-B/16 text tower; "
          f"budget {limit} (image, class) pairs; {args.threads} thread(s)")
    print(f"sequence length: padded {int(lengths.max())}, mean {lengths.float().mean():.1f}; "
          f"{len(lengths.unique())} length buckets, the largest of {bucket} classes")

    def evaluate() -> torch.Tensor:
        m = args.eval_images
        with torch.no_grad():
            return coop.logits(inputs[:m], {k: v[:m] for k, v in prompts.items()})

    def step() -> torch.Tensor:
        m = args.overfit_images
        return overfit_batch(coop, inputs[:m], labels[:m], 1, 0.002)[0]["ctx"]

    def budgeted(pairs: int, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            bb.max_pairs = pairs
            return fn()
        return run

    unlimited = n * c
    eval_chunk, step_pairs = args.eval_images * bucket, args.overfit_images * c
    micro = max(1, limit // c) * c if limit >= c else limit
    rows = []
    ref, eval_whole, t = profiled(budgeted(unlimited, evaluate))
    rows.append(["evaluation batch", "no budget: bucket chunks", eval_chunk, eval_whole / MIB,
                 t, 0.0])
    out, eval_budget, t = profiled(budgeted(limit, evaluate))
    rows.append(["evaluation batch", "budget: pair chunks", min(limit, eval_chunk),
                 eval_budget / MIB, t, check_same(out, ref, 1e-4, "evaluation in the budget")])
    ref_step, step_whole, t = profiled(budgeted(unlimited, step))
    rows.append(["overfitting step", "no budget", step_pairs, step_whole / MIB, t, 0.0])
    out, step_budget, t_micro = profiled(budgeted(limit, step))
    rows.append(["overfitting step", "budget: micro-batches", micro, step_budget / MIB,
                 t_micro, check_same(out, ref_step, 1e-5, "overfitting in micro-batches")])
    micro_batch = pdiff.overfit.micro_batch
    pdiff.overfit.micro_batch = lambda method, size: size  # the whole batch, chunks recomputed
    try:
        out, step_ckpt, t_ckpt = profiled(budgeted(limit, step))
    finally:
        pdiff.overfit.micro_batch = micro_batch
    rows.append(["overfitting step", "budget: checkpointed chunks", limit, step_ckpt / MIB,
                 t_ckpt, check_same(out, ref_step, 1e-5, "overfitting in checkpointed chunks")])
    print()
    print(table(["what", "path", "pairs at once", "peak MiB", "s (profiled)", "max abs diff"],
                rows))
    per_eval, per_grad = eval_whole / eval_chunk, step_whole / step_pairs
    print(f"per pair: {per_grad / MIB:.2f} MiB under autograd, {per_eval / MIB:.3f} MiB "
          "without (unbudgeted peak / pairs at once)")
    for what, peak, per in (("evaluation", eval_budget, per_eval),
                            ("overfitting", step_budget, per_grad)):
        bound = 1.05 * limit * per  # 5% for the allocator's granularity
        print(f"budget holds ({what}): peak {peak / MIB:.0f} MiB <= 1.05 x {limit} pairs x "
              f"{per / MIB:.3f} MiB = {bound / MIB:.0f} MiB: {'yes' if peak <= bound else 'NO'}")
    print(f"micro-batches vs checkpointed class chunks at equal memory: checkpointing takes "
          f"{t_ckpt / t_micro:.2f}x the time")

    def padded(bucketed: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            ClassTexts.bucket = bucketed
            return evaluate()
        return run

    bb.max_pairs = unlimited
    try:
        diff = check_same(padded(False)(), ref, 1e-4, "padded vs bucketed class texts")
        timing = interleaved({"padded": padded(False), "bucketed": padded(True)}, args.rounds,
                             warmup=False)
    finally:
        ClassTexts.bucket = True
    print(f"\nclass texts, evaluation batch: padded {timing.median('padded'):.1f} s, bucketed "
          f"{timing.median('bucketed'):.1f} s: {timing.ratio('padded', 'bucketed'):.2f}x faster "
          f"bucketed (max abs diff {diff:.1e})")

    cfg = yaml.safe_load(BENCHMARK_CONFIG.read_text())
    print(f"\nEstimate per rule of config/benchmark.yaml at {c} classes, ViT-B/16 fp32 on a "
          f"16 GiB card: {weights / GIB:.2f} GiB of weights + pairs held x the per-pair memory "
          f"above (text activations only); pdiff's default budget {DEFAULT_MAX_PAIRS} pairs; "
          f"the last row: images under autograd, {DEFAULT_MAX_IMAGES} at most")
    print(table(["rule", "pairs per step", "autograd", "no budget GiB", "fits",
                 "held in budget", "budget GiB", "fits"],
                rule_estimates(cfg, per_grad, per_eval, weights, c)))


if __name__ == "__main__":
    main()
