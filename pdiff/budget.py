"""The memory budgets of the stages: images x classes text encodings (`compute.max_pairs`) and
images under autograd through the image tower (`compute.max_images`).

A per-image textual prompt gives every image its own class texts: at ImageNet's 1,000 classes a
batch of 64 images is 64,000 text sequences. Every such encoding (evaluation, overfitting,
baseline training of CoCoOp, the DiT's classification term) runs in chunks of at most
`max_pairs` (image, class) sequences, and class texts are grouped by token length so that no
sequence is padded to the dataset's longest class name.

The default fits ViT-B/16 on a 16 GiB card under autograd, the costliest case. Measured with the
torch profiler on CPU, fp32 (`benchmarks/pair_budget.py`): a CoOp overfitting step over
ImageNet's class names keeps 1.41 MiB per (image, class) pair with 4 context tokens (texts of
9.2 tokens on average) and 2.1 MiB with 16, so 2,048 pairs hold 2.8 GiB (4.2 GiB) beside 0.56 GiB
of weights. Memory per pair grows with the class name's own tokens: the cost model (calibrated
on the measure above) puts a pair of StanfordCars-length names (8 tokens) at 3.8 MB, so 4,096
pairs (the default before the image budget) would hold 15 GB in the DiT's classification term
on StanfordCars, and 2,048 hold 7.7 GB (`pdiff plan-cost`). Without autograd a pair costs
0.16 MiB at its peak.

Methods whose prompts enter the image tower (VPT, MaPLe, PromptSRC) also keep the image tower's
activations of every image under autograd: about 240 MB per ViT-B/16 image in fp32 (the cost
model's count, pdiff/cost/model.py), so overfitting's batch of 64 would hold 15 GB of them.
Overfitting runs those methods in micro-batches of at most `max_images` samples (each sample's
prompt is independent and the loss is summed, so this is exact); 16 hold about 3.8 GB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pdiff.errors import PdiffError

if TYPE_CHECKING:  # torch only where a function needs it: the cost model reads the default
    import torch

DEFAULT_MAX_PAIRS = 2048
DEFAULT_MAX_IMAGES = 16


def _budget(params: dict, key: str, default: int) -> int:
    value = params.get("compute", {}).get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PdiffError(f"compute.{key} must be a positive integer, got {value!r}; set it to "
                         f"a whole number >= 1 or leave it out (default {default})")
    return value


def max_pairs(params: dict) -> int:
    """The budget a stage's `--params` carry under `compute.max_pairs` (else the default)."""
    return _budget(params, "max_pairs", DEFAULT_MAX_PAIRS)


def max_images(params: dict) -> int:
    """Images through the image tower under autograd at once, from `compute.max_images` in a
    stage's `--params` (else the default)."""
    return _budget(params, "max_images", DEFAULT_MAX_IMAGES)


def micro_batch_size(n: int, *, text_classes: int | None, image_prompts: bool,
                     max_pairs: int | None, max_images: int | None) -> int:
    """Samples of `n` per overfitting forward/backward: as many as keep their own class texts
    (`text_classes` per sample, None when the texts are shared) within `max_pairs` and, for
    prompts that enter the image tower, their images within `max_images` (None: unbounded).
    The one rule both the stage (pdiff.overfit) and the cost model follow."""
    size = n
    if text_classes and max_pairs:
        size = min(size, max(1, max_pairs // text_classes))
    if image_prompts and max_images:
        size = min(size, max_images)
    return max(1, size)


def stage_params(params: dict) -> dict:
    """A stage's own parameters without the `compute` budget (which changes no result)."""
    return {k: v for k, v in params.items() if k != "compute"}


def length_chunks(lengths: torch.Tensor, limit: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(length, indices) of the rows of each length, in chunks of at most `limit` rows.

    Grouping by length lets each sequence be cut after its own end-of-text (exact for CLIP's
    causal, end-of-text-pooled text tower) instead of padding all to the longest.
    """
    import torch

    values, counts = torch.unique(lengths, sorted=True, return_counts=True)
    order = torch.argsort(lengths, stable=True)
    for value, group in zip(values.tolist(), order.split(counts.tolist()), strict=True):
        for chunk in group.split(limit):
            yield int(value), chunk


def allocator_peak(fn: Callable[[], object]) -> tuple[object, int]:
    """`fn`'s result and its allocator peak in bytes above the start, from the torch
    profiler's memory events (the measure behind `compute.max_pairs`' default)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    now = peak = 0
    for _, n in events:
        now += n
        peak = max(peak, now)
    return out, peak
