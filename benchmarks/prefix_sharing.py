"""Shared-prefix text encoding vs. encoding every (prompt, class) sequence in full.

    python benchmarks/prefix_sharing.py [--prompts 64] [--n-ctx 16] [--model pdiff-tiny]

Per-sample prompts of a textual method (CoOp here): P prompts x C classes. The plain path
encodes P*C sequences (already truncated after the last end-of-text); the fast path encodes the
[SOT] + context prefix once per prompt and only the class suffixes per (prompt, class). Checks
that both give the same features and gradients, then prints the time of each (median of
interleaved rounds) and the ratio, for the forward pass and for a forward + backward (an
overfitting step).
"""

from __future__ import annotations

import argparse

import torch
from _common import interleaved, random_backbone, setup

from pdiff.data.synthetic import WorldSpec
from pdiff.methods.text import ClassTexts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pdiff-tiny")
    ap.add_argument("--prompts", type=int, default=64, help="per-sample prompts (P)")
    ap.add_argument("--classes", type=int, default=24, help="classes (C)")
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    setup(args.threads)
    bb = random_backbone(args.model)
    names = WorldSpec().classnames("shapes")[: args.classes]
    texts = ClassTexts(bb, names, args.n_ctx)
    ctx = torch.randn(args.prompts, args.n_ctx, bb.text_width) * 0.02

    def run(shared: bool, backward: bool):
        texts.share_prefix = shared
        x = ctx.clone().requires_grad_(backward)
        feats = texts(x)
        if backward:
            feats.sum().backward()
            return feats.detach(), x.grad
        return feats, None

    with torch.no_grad():
        fast, _ = run(True, False)
        plain, _ = run(False, False)
    diff = (fast - plain).abs().max().item()
    _, g_fast = run(True, True)
    _, g_plain = run(False, True)
    gdiff = ((g_fast - g_plain).abs().max() / g_plain.abs().max()).item()
    assert diff < 1e-4 and gdiff < 1e-3, (diff, gdiff)

    print(f"model {args.model}: {args.prompts} prompts x {len(names)} classes, "
          f"{args.n_ctx} context tokens, sequences of {int(texts.eot.max()) + 1} positions")
    print(f"max abs difference: features {diff:.2e}, gradients (relative) {gdiff:.2e}")
    for what, backward in (("forward", False), ("forward+backward", True)):
        ctx_mgr = torch.enable_grad if backward else torch.no_grad
        with ctx_mgr():
            t = interleaved({"plain": lambda b=backward: run(False, b),
                             "fast": lambda b=backward: run(True, b)}, args.repeats)
        print(f"{what:17s} full sequences: {t.median('plain') * 1e3:8.1f} ms   shared prefix: "
              f"{t.median('fast') * 1e3:8.1f} ms   speed-up {t.ratio('plain', 'fast'):.1f}x")


if __name__ == "__main__":
    main()
