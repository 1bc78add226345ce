"""The images x classes memory budget and length-bucketed class texts at ImageNet's scale.

    python benchmarks/pair_budget.py [--eval-images 4] [--overfit-images 2] [--max-pairs 1000]
        [--rounds 1] [--threads 1] [--device cpu|cuda] [--amp]

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

`--device cuda` runs the same on a GPU (`benchmarks/device_check.sh`): peak memory is then the
CUDA caching allocator's peak above the call's start (`torch.cuda.max_memory_allocated`), each
variant is timed after one warm-up call, and the throughput in (image, class) pairs per second
is printed. `--amp` (CUDA only) runs the text tower under the backbone's bf16 autocast
(`backbone.amp`); the checks then allow bf16 rounding, since chunks change the matrix shapes and
so the kernels' accumulation order.
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
from _common import (
    add_device_args,
    check_same,
    interleaved,
    peak_memory,
    random_backbone,
    setup,
    sync,
    table,
)

import pdiff.overfit
from pdiff.budget import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PAIRS
from pdiff.cost.model import Arch, Throughputs
from pdiff.data.templates import GENERIC_TEMPLATE
from pdiff.methods import Inputs, get_method
from pdiff.methods.text import ClassTexts
from pdiff.overfit import overfit_batch

BENCHMARK_CONFIG = Path(__file__).resolve().parents[1] / "config" / "benchmark.yaml"
CARD = 16 * 2**30
MIB, GIB = 2**20, 2**30
LR = 0.002  # the overfitting step's learning rate
#: Max abs differences allowed against the unbudgeted, bucketed result (evaluation logits,
#: overfitted prompts): fp32 reorders sums only; under bf16 autocast a chunk's other matrix
#: shapes round differently (~0.4% per op), and one Adam step moves an entry by up to lr either
#: way wherever its gradient is within that rounding, so the step's check only bounds it.
TOLERANCE = {False: (1e-4, 1e-5), True: (5e-2, 2 * LR)}


def profiled(fn: Callable[[], object], device: str = "cpu") -> tuple[object, int, float]:
    """fn's result, its peak memory in bytes (above the start) and its seconds. On CUDA after
    one warm-up call (kernel selection and the allocator's first growth are not the work)."""
    if device == "cuda":
        fn()
    t0 = time.perf_counter()
    out, peak = peak_memory(fn, device)
    sync()
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


def precision(amp: bool) -> str:
    return "bf16 autocast" if amp else "fp32"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-images", type=int, default=4, help="images of the evaluation batch")
    ap.add_argument("--overfit-images", type=int, default=2, help="images overfitted at once")
    ap.add_argument("--max-pairs", type=int, default=1000,
                    help="the budget measured here (1000: one image's classes at a time)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of bucketed vs padded")
    ap.add_argument("--amp", action="store_true",
                    help="bf16 autocast of the text tower (backbone.amp; needs --device cuda)")
    add_device_args(ap)
    args = ap.parse_args()
    if args.amp and args.device != "cuda":
        ap.error("--amp is the backbone's CUDA autocast (a no-op on the CPU): add --device cuda")
    setup(args.threads)
    dev = args.device
    eval_tol, step_tol = TOLERANCE[args.amp]
    bb = random_backbone("ViT-B-16", device=dev)
    bb.amp = args.amp
    weights = sum(p.numel() * p.element_size() for p in bb.model.parameters())
    bb.model.visual = None  # only the text tower runs (image features are cached)
    names = list(open_clip.IMAGENET_CLASSNAMES)
    coop = get_method("coop")(bb, names, GENERIC_TEMPLATE, {"n_ctx": 4, "init": "a photo of a"})
    coop.to(dev).requires_grad_(False)
    g = torch.Generator().manual_seed(0)  # on the CPU: the same draws on every device
    n, c, limit = max(args.eval_images, args.overfit_images), len(names), args.max_pairs
    inputs = Inputs(F.normalize(torch.randn(n, bb.embed_dim, generator=g), dim=-1).to(dev))
    labels = torch.randint(c, (n,), generator=g).to(dev)
    prompts = {k: v.expand(n, *v.shape[1:])
               + 0.02 * torch.randn(n, *v.shape[1:], generator=g).to(dev)
               for k, v in coop.init_prompt().items()}
    lengths = coop.texts.eot + 1
    bucket = int(lengths.unique(return_counts=True)[1].max())  # classes of the largest bucket
    print(f"ImageNet's {c} class names, CoOp (4 context tokens), random ViT-B/16 text tower; "
          f"budget {limit} (image, class) pairs; {args.threads} thread(s)"
          + (f"; {torch.cuda.get_device_name()}, {precision(args.amp)}" if dev == "cuda" else ""))
    print(f"sequence length: padded {int(lengths.max())}, mean {lengths.float().mean():.1f}; "
          f"{len(lengths.unique())} length buckets, the largest of {bucket} classes")

    def evaluate() -> torch.Tensor:
        m = args.eval_images
        with torch.no_grad():
            return coop.logits(inputs[:m], {k: v[:m] for k, v in prompts.items()})

    def step() -> torch.Tensor:
        m = args.overfit_images
        return overfit_batch(coop, inputs[:m], labels[:m], 1, LR)[0]["ctx"]

    def budgeted(pairs: int, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            bb.max_pairs = pairs
            return fn()
        return run

    unlimited = n * c
    eval_pairs = args.eval_images * c
    eval_chunk, step_pairs = args.eval_images * bucket, args.overfit_images * c
    micro = max(1, limit // c) * c if limit >= c else limit
    rows = []
    ref, eval_whole, t_eval = profiled(budgeted(unlimited, evaluate), dev)
    rows.append(["evaluation batch", "no budget: bucket chunks", eval_chunk, eval_whole / MIB,
                 t_eval, 0.0])
    out, eval_budget, t_eval_budget = profiled(budgeted(limit, evaluate), dev)
    rows.append(["evaluation batch", "budget: pair chunks", min(limit, eval_chunk),
                 eval_budget / MIB, t_eval_budget,
                 check_same(out, ref, eval_tol, "evaluation in the budget")])
    ref_step, step_whole, t_step = profiled(budgeted(unlimited, step), dev)
    rows.append(["overfitting step", "no budget", step_pairs, step_whole / MIB, t_step, 0.0])
    out, step_budget, t_micro = profiled(budgeted(limit, step), dev)
    rows.append(["overfitting step", "budget: micro-batches", micro, step_budget / MIB,
                 t_micro, check_same(out, ref_step, step_tol, "overfitting in micro-batches")])
    micro_batch = pdiff.overfit.micro_batch
    pdiff.overfit.micro_batch = lambda method, size: size  # the whole batch, chunks recomputed
    try:
        out, step_ckpt, t_ckpt = profiled(budgeted(limit, step), dev)
    finally:
        pdiff.overfit.micro_batch = micro_batch
    rows.append(["overfitting step", "budget: checkpointed chunks", limit, step_ckpt / MIB,
                 t_ckpt,
                 check_same(out, ref_step, step_tol, "overfitting in checkpointed chunks")])
    print()
    print(table(["what", "path", "pairs at once", "peak MiB",
                 "s (profiled)" if dev == "cpu" else "s", "max abs diff"], rows))
    if dev == "cuda":  # the CPU's output stays the one docs/performance.md quotes
        print(f"throughput, (image, class) pairs/s: evaluation {eval_pairs / t_eval:,.0f} "
              f"without the budget, {eval_pairs / t_eval_budget:,.0f} within it; overfitting "
              f"step {step_pairs / t_step:,.0f} without, {step_pairs / t_micro:,.0f} in "
              f"micro-batches, {step_pairs / t_ckpt:,.0f} in checkpointed chunks")
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
        diff = check_same(padded(False)(), ref, eval_tol, "padded vs bucketed class texts")
        timing = interleaved({"padded": padded(False), "bucketed": padded(True)}, args.rounds,
                             warmup=False)
    finally:
        ClassTexts.bucket = True
    print(f"\nclass texts, evaluation batch: padded {timing.median('padded'):.1f} s, bucketed "
          f"{timing.median('bucketed'):.1f} s: {timing.ratio('padded', 'bucketed'):.2f}x faster "
          f"bucketed (max abs diff {diff:.1e})")
    if dev == "cuda":
        print(f"  {eval_pairs / timing.median('padded'):,.0f} pairs/s padded, "
              f"{eval_pairs / timing.median('bucketed'):,.0f} bucketed (median of "
              f"{args.rounds} round(s))")

    cfg = yaml.safe_load(BENCHMARK_CONFIG.read_text())
    print(f"\nEstimate per rule of config/benchmark.yaml at {c} classes, ViT-B/16 "
          f"{precision(args.amp)} on a "
          f"16 GiB card: {weights / GIB:.2f} GiB of weights + pairs held x the per-pair memory "
          f"above (text activations only); pdiff's default budget {DEFAULT_MAX_PAIRS} pairs; "
          f"the last row: images under autograd, {DEFAULT_MAX_IMAGES} at most")
    print(table(["rule", "pairs per step", "autograd", "no budget GiB", "fits",
                 "held in budget", "budget GiB", "fits"],
                rule_estimates(cfg, per_grad, per_eval, weights, c)))


if __name__ == "__main__":
    main()
