"""One memory budget for images x classes text encodings (`compute.max_pairs`).

A per-image textual prompt gives every image its own class texts: at ImageNet's 1,000 classes a
batch of 64 images is 64,000 text sequences. Every such encoding (evaluation, overfitting,
baseline training of CoCoOp, the DiT's classification term) runs in chunks of at most
`max_pairs` (image, class) sequences, and class texts are grouped by token length so that no
sequence is padded to the dataset's longest class name.

The default fits ViT-B/16 on a 16 GiB card under autograd, the costliest case. Measured with the
torch profiler on CPU, fp32 (`benchmarks/pair_budget.py`): a CoOp overfitting step over
ImageNet's class names keeps 1.41 MiB per (image, class) pair with 4 context tokens (texts of
9.2 tokens on average) and 2.1 MiB with 16, so 4,096 pairs hold 5.6 GiB (8.4 GiB) beside 0.56 GiB
of weights. A chunk holds one token length, and ImageNet's longest text (18 tokens, 4.1 MiB per
pair) is a bucket of one class, so no realistic chunk comes near that. Without autograd a pair
costs 0.16 MiB at its peak.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pdiff.errors import PdiffError

if TYPE_CHECKING:  # torch only where a function needs it: the cost model reads the default
    import torch

DEFAULT_MAX_PAIRS = 4096


def max_pairs(params: dict) -> int:
    """The budget a stage's `--params` carry under `compute.max_pairs` (else the default)."""
    value = params.get("compute", {}).get("max_pairs", DEFAULT_MAX_PAIRS)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PdiffError(f"compute.max_pairs must be a positive integer, got {value!r}")
    return value


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
