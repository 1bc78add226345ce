"""Exact text-encoder fast paths vs. running all 77 positions (CoOp-style per-sample prompts).

    python benchmarks/text_truncation.py [--prompts 64 --classes 24] [--vit-prompts 2
        --vit-classes 12] [--rounds 3] [--no-vit]

P per-sample prompts x C classes, each sequence ``[SOT] ctx_1..ctx_16 <class name> . [EOT]``,
encoded three ways by the same frozen text tower:

- **77 positions**: every (prompt, class) sequence in full, as open_clip encodes text;
- **truncated**: the same sequences cut after the batch's last end-of-text token (the tower is
  causal and pools at end-of-text, so the cut positions cannot change any output);
- **truncated + shared prefix**: what the methods run (`ClassTexts`): the ``[SOT] + context``
  prefix once per prompt, only the class suffixes per (prompt, class), truncated likewise.

On the tiny demo model (random init, demo sizes: 64 prompts x 24 classes) and on a randomly
initialised ViT-B-16 text tower (a smaller batch, so that it runs in seconds on a CPU). Checks
that all paths give the same normalised features (max abs difference), then prints the time of
each, median over interleaved rounds, and the speed-up over 77 positions.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import check_same, interleaved, random_backbone, setup, table

from pdiff.backbone import Backbone, encode_text_embeddings
from pdiff.data.synthetic import WorldSpec
from pdiff.methods.text import ClassTexts

N_CTX = 16


def bench(bb: Backbone, prompts: int, classes: int, rounds: int) -> list[list[object]]:
    world = WorldSpec().classnames("shapes") + WorldSpec().classnames("icons")
    names = [world[i % len(world)] for i in range(classes)]
    texts = ClassTexts(bb, names, N_CTX)
    gen = torch.Generator().manual_seed(0)
    ctx = torch.randn(prompts, N_CTX, bb.text_width, generator=gen) * 0.02
    # the full 77-token sequences with the context spliced in, as the plain path sees them
    tokens = bb.tokenize([" ".join(["X"] * N_CTX) + f" {n}." for n in names])
    emb = bb.token_embeddings(tokens)  # [C, 77, W]
    eot = tokens.argmax(-1)
    seq = torch.cat([emb[None, :, :1].expand(prompts, -1, -1, -1),
                     ctx[:, None].expand(-1, classes, -1, -1),
                     emb[None, :, 1 + N_CTX :].expand(prompts, -1, -1, -1)], dim=2)
    seq = seq.reshape(prompts * classes, -1, bb.text_width)
    eot_all = eot.repeat(prompts)

    def full() -> torch.Tensor:
        return F.normalize(encode_text_embeddings(bb.model, seq, eot_all, truncate=False), dim=-1)

    def truncated() -> torch.Tensor:
        return F.normalize(encode_text_embeddings(bb.model, seq, eot_all, truncate=True), dim=-1)

    def shared() -> torch.Tensor:
        texts.share_prefix = True
        return texts(ctx).reshape(prompts * classes, -1)

    with torch.no_grad():
        ref = full()
        diffs = {"truncated": check_same(truncated(), ref, 1e-4, "truncation"),
                 "shared": check_same(shared(), ref, 1e-4, "truncation + shared prefix")}
        t = interleaved({"full": full, "truncated": truncated, "shared": shared}, rounds)
    length = int(eot.max()) + 1
    n = prompts * classes
    return [
        ["77 positions", f"{n} x 77", t.median("full") * 1e3, "1.0x", 0.0],
        ["truncated", f"{n} x {length}", t.median("truncated") * 1e3,
         f"{t.ratio('full', 'truncated'):.1f}x", diffs["truncated"]],
        ["truncated + shared prefix", f"{prompts} x {1 + N_CTX} + {n} x {length - 1 - N_CTX}",
         t.median("shared") * 1e3, f"{t.ratio('full', 'shared'):.1f}x", diffs["shared"]],
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64, help="per-sample prompts on pdiff-tiny")
    ap.add_argument("--classes", type=int, default=24, help="classes on pdiff-tiny")
    ap.add_argument("--vit-prompts", type=int, default=2, help="per-sample prompts on ViT-B-16")
    ap.add_argument("--vit-classes", type=int, default=12, help="classes on ViT-B-16")
    ap.add_argument("--no-vit", action="store_true", help="only the tiny model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="1 by default: on a shared 2-core machine 2 threads wait on each other")
    args = ap.parse_args()
    setup(args.threads)
    runs = [("pdiff-tiny", args.prompts, args.classes)]
    if not args.no_vit:
        runs.append(("ViT-B-16", args.vit_prompts, args.vit_classes))
    rows = []
    for model, prompts, classes in runs:
        bb = random_backbone(model)
        if model != "pdiff-tiny":  # only the text tower runs: free the image tower's memory
            bb.model.visual = None
        for row in bench(bb, prompts, classes, args.rounds):
            rows.append([f"{model} ({prompts} x {classes})", *row])
        del bb
    print(f"CoOp-style prompts: {N_CTX} context tokens + class name, P prompts x C classes; "
          f"random init; {args.threads} thread(s); median of {args.rounds} interleaved rounds")
    print(table(["model (P x C)", "path", "sequences x positions", "ms", "speed-up",
                 "max abs diff"], rows))


if __name__ == "__main__":
    main()
