"""Batched per-sample overfitting vs. the one-sample-at-a-time loop (CoOp, 16 context tokens).

    python benchmarks/batched_overfit.py [--samples 64] [--classes 24] [--steps 5]

Checks that both give the same prompts, then prints samples/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import time

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pdiff.backbone import load_backbone, register_model_configs
from pdiff.methods import Inputs, get_method
from pdiff.overfit import overfit_batch
from pdiff.utils import keep_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16, help="samples optimised together")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", default=None, help="default: a random pdiff-tiny")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the `pdiff` CLI does
    ckpt = args.checkpoint
    if ckpt is None:
        register_model_configs()
        torch.manual_seed(0)
        ckpt = "/tmp/pdiff-bench-tiny.safetensors"
        model = open_clip.create_model("pdiff-tiny", pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
    bb = load_backbone({"model": "pdiff-tiny", "pretrained": ckpt})
    names = [f"colour{i} thing{i}" for i in range(args.classes)]
    method = get_method("coop")(bb, names, "a photo of a {}.", {"n_ctx": 16, "init": "random"})
    method.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = Inputs(features=F.normalize(torch.randn(args.samples, bb.embed_dim, generator=g), dim=-1))
    y = torch.randint(args.classes, (args.samples,), generator=g)

    t0 = time.perf_counter()
    parts = [overfit_batch(method, x[i : i + args.batch], y[i : i + args.batch], args.steps,
                           0.01)[0]["ctx"] for i in range(0, args.samples, args.batch)]
    batched = {"ctx": torch.cat(parts)}
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = torch.cat([overfit_batch(method, x[i : i + 1], y[i : i + 1], args.steps, 0.01)[0]
                        ["ctx"] for i in range(args.samples)])
    t_single = time.perf_counter() - t0
    diff = (batched["ctx"] - single).abs().max().item()
    assert diff < 1e-4, diff
    n = args.samples
    print(f"{n} samples x {args.classes} classes, {args.steps} Adam steps, 16 context tokens, "
          f"batches of {args.batch}")
    print(f"max abs difference of the overfitted prompts: {diff:.2e}")
    print(f"one at a time: {n / t_single:.1f} samples/s   batched: {n / t_batched:.1f} samples/s"
          f"   speed-up {t_single / t_batched:.1f}x")


if __name__ == "__main__":
    main()
