"""Exact text-encoder truncation vs. running all 77 positions (CoOp-style prompts).

    python benchmarks/text_truncation.py [--batch 1024] [--model pdiff-tiny]

Checks that both paths give the same features, then prints the time of each and the ratio.
"""

from __future__ import annotations

import argparse
import time

import open_clip
import torch

from pdiff.backbone import encode_text_embeddings, register_model_configs
from pdiff.data.synthetic import WorldSpec
from pdiff.utils import keep_freed_memory


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pdiff-tiny")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the `pdiff` CLI does
    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None).eval()
    tok = open_clip.get_tokenizer(args.model)
    # Class names as in the demo world ("<colour> <object>"), repeated to the batch size.
    world = WorldSpec().classnames("shapes") + WorldSpec().classnames("icons")
    names = [world[i % len(world)] for i in range(args.batch)]
    tokens = tok([" ".join(["X"] * 16) + f" {n}." for n in names])
    emb = model.token_embedding(tokens)
    eot = tokens.argmax(-1)
    with torch.no_grad():
        fast = encode_text_embeddings(model, emb, eot, truncate=True)
        full = encode_text_embeddings(model, emb, eot, truncate=False)
        diff = (torch.nn.functional.normalize(fast, dim=-1)
                - torch.nn.functional.normalize(full, dim=-1)).abs().max().item()
        assert diff < 1e-4, diff
        t_fast = timed(lambda: encode_text_embeddings(model, emb, eot, True), args.repeats)
        t_full = timed(lambda: encode_text_embeddings(model, emb, eot, False), args.repeats)
    print(f"model {args.model}, batch {args.batch}, positions {int(eot.max()) + 1} of 77")
    print(f"max abs difference of normalised features: {diff:.2e}")
    print(f"77 positions: {t_full * 1e3:.1f} ms   truncated: {t_fast * 1e3:.1f} ms   "
          f"speed-up {t_full / t_fast:.1f}x")


if __name__ == "__main__":
    main()
