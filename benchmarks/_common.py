"""What every benchmark shares: process setup, random backbones, interleaved timing, checks, tables.

The benchmarks run the fast and the plain path in one process, interleaved round by round, so
that load from other processes on a shared machine hits both alike; a ratio is the median of
the per-round ratios. Run them as scripts (`python benchmarks/<name>.py`): this module is found
beside them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import open_clip
import torch

from pdiff.backbone import Backbone, register_model_configs
from pdiff.budget import allocator_peak
from pdiff.utils import keep_freed_memory

# The demo config's method parameters (config/config.yaml; cocoop, kgcoop and promptsrc as in
# config/all-methods.yaml), without the training schedule.
DEMO_PARAMS = {
    "coop": {"n_ctx": 16, "init": "random"},
    "cocoop": {"n_ctx": 4, "init": "a photo of a"},
    "kgcoop": {"n_ctx": 16, "init": "random"},
    "vpt": {"n_ctx": 4, "depth": 2},
    "maple": {"n_ctx": 2, "init": "a photo of a", "depth": 3},
    "promptsrc": {"n_ctx": 4, "init": "a photo of a", "n_ctx_vision": 4, "depth": 3},
}


def demo_params(method: str, backbone: Backbone) -> dict:
    """The demo's parameters for `method`, prompt depth capped at the backbone's layers."""
    params = dict(DEMO_PARAMS[method])
    if "depth" in params:
        params["depth"] = min(params["depth"], backbone.vision_layers)
    return params


def setup(threads: int, seed: int = 0) -> None:
    """Thread count, glibc heap tuning (as the `pdiff` CLI does), pdiff's model configs, seed."""
    torch.set_num_threads(threads)
    # fp32 everywhere on a GPU too: TF32 would make the fast/plain checks compare rounding
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    keep_freed_memory()
    register_model_configs()
    torch.manual_seed(seed)


def add_device_args(ap: argparse.ArgumentParser) -> None:
    """`--device` and `--threads` for the benchmarks that can also time a GPU."""
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda times on the GPU (fp32, as the exactness checks need)")
    ap.add_argument("--threads", type=int, default=1,
                    help="1 by default: on a shared 2-core machine 2 threads wait on each other")


def random_backbone(model: str = "pdiff-tiny", seed: int = 0, device: str = "cpu") -> Backbone:
    """A frozen, randomly initialised open_clip model wrapped as pdiff's Backbone."""
    register_model_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = open_clip.create_model(model, pretrained=None)
    net.eval().requires_grad_(False).float().to(device)
    return Backbone(net, open_clip.get_tokenizer(model), {"model": model, "pretrained": None},
                    net.visual.image_size[0])


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Mean seconds of `fn` over `repeats` calls after one warm-up call."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


class Timing(dict):
    """{path name: [seconds per round]} with medians and paired ratios."""

    def median(self, name: str) -> float:
        return statistics.median(self[name])

    def ratio(self, slow: str, fast: str) -> float:
        """Median over rounds of slow/fast, each pair timed back to back."""
        return statistics.median(s / f for s, f in zip(self[slow], self[fast], strict=True))


def sync() -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(paths: dict[str, Callable[[], object]], rounds: int, warmup: bool = True
                ) -> Timing:
    """Time every path once per round, the paths alternating, after one warm-up call each."""
    if warmup:
        for fn in paths.values():
            fn()
    out = Timing({name: [] for name in paths})
    for r in range(rounds):
        # alternate the order so neither path always runs right after the other
        order = list(paths.items()) if r % 2 == 0 else list(reversed(paths.items()))
        for name, fn in order:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out[name].append(time.perf_counter() - t0)
    return out


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> tuple[object, int]:
    """fn's result and its peak memory in bytes above the start: on CUDA the caching
    allocator's own peak (`max_memory_allocated`), on the CPU the torch profiler's memory
    events (`pdiff.budget.allocator_peak`, the measure behind `compute.max_pairs`' default)."""
    if device != "cuda":
        return allocator_peak(fn)
    sync()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    out = fn()
    sync()
    return out, torch.cuda.max_memory_allocated() - start


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float() - b.detach().float()).abs().max().item()


def check_same(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> float:
    """Max abs difference of two results; stops the benchmark when it exceeds `tol`."""
    if a.shape != b.shape:
        raise SystemExit(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = max_abs_diff(a, b)
    if not diff <= tol:
        raise SystemExit(f"{what}: the fast and the plain path differ by {diff:.3g} > {tol:g}")
    return diff


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = [all(_numeric(row[i]) for row in rows) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if a else c.ljust(w)
                         for c, w, a in zip(r, widths, right, strict=True)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _numeric(x: object) -> bool:
    """Numbers, and strings such as '3.2x' or 'n/a', are right-aligned."""
    if isinstance(x, (int, float)):
        return True
    try:
        float(str(x).rstrip("x").split(":")[-1])
    except ValueError:
        return str(x) == "n/a"
    return True


def _fmt(x: object) -> str:
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) < 1e-3:
            return f"{x:.1e}"
        return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)
