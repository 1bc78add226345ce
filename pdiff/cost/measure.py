"""Throughputs of the cost model's units, measured on this machine (`pdiff plan-cost
--measure-only`): the config's backbone architecture with seeded random weights and its DiT,
each unit timed for a few seconds through the code paths the stages run.

Memory per unit is what autograd keeps for backward (summed with saved-tensor hooks over one
step): a property of the model and shapes, the same on any device.
"""

from __future__ import annotations

import io
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pdiff.backbone import Backbone, load_backbone
from pdiff.cost.model import Throughputs
from pdiff.data.images import load_image
from pdiff.diffusion.dit import PromptDiT
from pdiff.diffusion.objective import get_objective
from pdiff.methods.text import ClassTexts
from pdiff.plan.names import RANDOM

log = logging.getLogger(__name__)

#: Shapes timed (CPU, GPU): images per batch, prompts x classes of text, DiT rows; the class
#: names have 4 tokens and the context 4 vectors, the benchmark's typical sequence.
SHAPES = {"cpu": {"images": 2, "prompts": 2, "classes": 32, "rows": 32},
          "cuda": {"images": 64, "prompts": 32, "classes": 100, "rows": 128}}
N_CTX = 4
DIT_TOKENS = 16  # prompt rows of the timed DiT (a token-row rate scales to any layout)
MIN_CALLS = 3
PHOTO = (500, 375)  # a typical benchmark photo (ImageNet's median is about this size)
PHOTO_NOISE = 12.0  # grey levels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], object], units: float, seconds: float, device: torch.device) -> float:
    """Units per second of `fn`'s fastest call (at least MIN_CALLS, for about `seconds` after
    one warm-up call): on a shared machine the fastest call is the least disturbed one."""
    fn()
    _sync(device)
    best, start = float("inf"), time.perf_counter()
    calls = 0
    while calls < MIN_CALLS or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return units / best


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward while `fn` runs (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _decode_rate(backbone: Backbone, seconds: float) -> float:
    """Images/s one process decodes and preprocesses (a JPEG photo through the eval transform),
    as one DataLoader worker does."""
    rng = np.random.default_rng(0)
    # smooth regions plus sensor-like noise: a JPEG about as large as a real photo's
    grid = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(grid, "RGB").resize(PHOTO, Image.Resampling.BICUBIC))
    noise = rng.normal(0, PHOTO_NOISE, smooth.shape)
    image = Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    transform = backbone.transform()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        path.write_bytes(buffer.getvalue())
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a DataLoader worker runs one thread
        try:
            return rate(lambda: transform(load_image(path)), 1, seconds, torch.device("cpu"))
        finally:
            torch.set_num_threads(threads)


def measure(model: str, diffusion: Mapping[str, Any], seconds: float = 2.0,
            device: str | None = None, amp: bool = False) -> Throughputs:
    """Time every unit of the cost model for `model` (random weights) and the DiT of
    `diffusion` (width, depth, heads) on `device` (default: CUDA when present); with `amp`
    (`backbone.amp`) the towers run under the backbone's bf16 autocast, as the stages run them
    (a no-op off CUDA)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = SHAPES["cuda" if dev.type == "cuda" else "cpu"]
    t0 = time.perf_counter()
    backbone = load_backbone({"model": model, "pretrained": RANDOM, "amp": amp}, dev)
    _sync(dev)
    startup = time.perf_counter() - t0
    log.info("measuring %s on %s for about %.0f s per unit", model, dev, seconds)

    pixels = torch.rand(shape["images"], 3, backbone.image_size, backbone.image_size, device=dev)
    vision = torch.zeros(1, backbone.vision_layers, 8, backbone.vision_width, device=dev,
                         requires_grad=True)  # VPT-deep prompts on every layer

    def prompted() -> torch.Tensor:
        with backbone.autocast():
            return backbone.encode_images_prompted(pixels, vision)

    def image_train() -> torch.Tensor:
        loss = prompted().float().sum()
        loss.backward()
        return loss

    names = [f"name {i:03d}" for i in range(shape["classes"])]  # "name" + 3 digits: 4 tokens
    texts = ClassTexts(backbone, names, N_CTX).to(dev)
    # positions encoded: each prompt's "[SOT] context" once (shared by its classes, as the
    # stages encode them), then every class's own "name . [EOT]" (the cost model's unit)
    prefix = 1 + N_CTX
    seq = float(shape["prompts"] * (prefix + (texts.eot + 1 - prefix).sum()))
    ctx = torch.randn(shape["prompts"], N_CTX, backbone.text_width, device=dev) * 0.02

    def text_fwd() -> torch.Tensor:
        with torch.no_grad(), backbone.autocast():
            return texts(ctx)

    ctx_grad = ctx.clone().requires_grad_(True)

    def encoded() -> torch.Tensor:
        with backbone.autocast():
            return texts(ctx_grad)

    def text_train() -> torch.Tensor:
        loss = encoded().float().sum()
        loss.backward()
        return loss

    dit = PromptDiT(DIT_TOKENS, backbone.text_width, backbone.embed_dim,
                    width=int(diffusion["width"]), depth=int(diffusion["depth"]),
                    heads=int(diffusion["heads"])).to(dev)
    objective = get_objective("flow")
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-4)
    x1 = torch.randn(shape["rows"], DIT_TOKENS, backbone.text_width, device=dev)
    cond = torch.randn(shape["rows"], backbone.embed_dim, device=dev)
    t = torch.rand(shape["rows"], device=dev)
    rows = shape["rows"] * DIT_TOKENS

    def dit_train() -> torch.Tensor:
        loss = objective.loss(dit, x1, cond)[0].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def dit_fwd() -> torch.Tensor:
        with torch.no_grad():
            return dit(x1, t, cond)

    images = shape["images"]
    out = Throughputs(
        source="measured" + (", bf16 autocast of the towers (backbone.amp)"
                             if backbone.amp and dev.type == "cuda" else ""),
        device=_device_name(dev), model=model,
        threads=torch.get_num_threads() if dev.type == "cpu" else 0,
        image_fwd=rate(lambda: backbone.encode_images(pixels), images, seconds, dev),
        image_train=rate(image_train, images, seconds, dev),
        text_fwd=rate(text_fwd, seq, seconds, dev),
        text_train=rate(text_train, seq, seconds, dev),
        dit_train=rate(dit_train, rows, seconds, dev),
        dit_fwd=rate(dit_fwd, rows, seconds, dev),
        decode=_decode_rate(backbone, seconds),
        startup=startup,
        weights_bytes=float(sum(p.numel() * p.element_size()
                                for p in backbone.model.parameters())),
        image_bytes=saved_bytes(prompted) / images,
        text_bytes=saved_bytes(encoded) / seq,
        dit_bytes=saved_bytes(lambda: objective.loss(dit, x1, cond)) / rows,
        dit={k: int(diffusion[k]) for k in ("width", "depth", "heads")},
    )
    log.info("measured %s", out)
    return out


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    return f"cpu {cpu}, {torch.get_num_threads()} threads ({os.cpu_count()} cores)"
