"""The DiT's classification term at 1,000 classes: a sampled-class softmax vs every class.

    python benchmarks/sampled_cls.py [--rows 16] [--steps 25] [--negatives 63] [--threads 1]

The shipped pdiff-tiny and CoOp as config/benchmark.yaml has it (4 context tokens from "a photo
of a") over ImageNet's 1,000 class names, on a small synthetic store: each sample's image
feature is its class's zero-shot text feature plus noise, its target prompt the initial prompt
plus noise. The same DiT (seed,
batches, times and noise alike) is trained with the classification term (`cls_weight` 0.1) over
every class, as `diffusion.cls_negatives` null does, and over each row's class plus
`--negatives` sampled ones. Checks that the sampled term with every other class drawn is the
full term, then prints seconds per DiT step, the last logged training loss, the sampled term
against the full one on the same prompts, and the full cross-entropy and accuracy (all 1,000
classes) of the prompts each trained DiT generates for held-out samples.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from _common import check_same, setup, table

from pdiff.backbone import load_backbone
from pdiff.data.templates import GENERIC_TEMPLATE
from pdiff.diffusion import fit_diffusion
from pdiff.fit_dit import classification_loss
from pdiff.methods import Inputs, get_method
from pdiff.methods.text import template_features
from pdiff.sampled_softmax import draw_classes, sampled_cross_entropy
from pdiff.store import PromptStore

DIT = {"objective": "flow", "target": "residual", "normalise": "scalar", "depth": 2,
       "width": 64, "heads": 4, "lr": 0.002, "weight_decay": 0.0, "ema": 0.9,
       "cls_weight": 0.1, "log_every": 1}


def synthetic_store(method, n: int, seed: int) -> PromptStore:
    g = torch.Generator().manual_seed(seed)
    text = template_features(method.backbone, method.classnames, [GENERIC_TEMPLATE])
    labels = torch.randint(len(method.classnames), (n,), generator=g)
    noise = 0.5 * torch.randn(n, text.shape[1], generator=g) / text.shape[1] ** 0.5
    features = F.normalize(text[labels] + noise, dim=-1)
    init = method.layout.pack(method.init_prompt())[0]
    prompts = init + 0.05 * torch.randn(n, *init.shape, generator=g)
    return PromptStore(
        prompts=prompts.numpy(), init_prompt=init.numpy(), features=features.numpy(),
        labels=labels.numpy(), sample_ids=[f"{i}" for i in range(n)],
        loss_before=np.ones(n, np.float32), loss_after=np.zeros(n, np.float32),
        done=np.ones(n, bool), attrs={"method": method.name})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16, help="DiT batch (all rows in the term)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--negatives", type=int, default=63)
    ap.add_argument("--samples", type=int, default=256, help="store rows (a quarter held out)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    setup(args.threads)
    bb = load_backbone({"model": "pdiff-tiny", "pretrained": "shipped"})
    names = list(open_clip.IMAGENET_CLASSNAMES)
    coop = get_method("coop")(bb, names, GENERIC_TEMPLATE, {"n_ctx": 4, "init": "a photo of a"})
    coop.requires_grad_(False)
    store = synthetic_store(coop, args.samples, seed=0)
    held = args.samples // 4
    train = replace(store, **{k: getattr(store, k)[held:] for k in (
        "prompts", "features", "labels", "loss_before", "loss_after", "done")})
    c = len(names)

    inputs = Inputs(features=torch.from_numpy(store.features[:8]))
    prompts, labels = coop.layout.unpack(torch.from_numpy(store.prompts[:8])), \
        torch.from_numpy(store.labels[:8])
    with torch.no_grad():
        full = F.cross_entropy(coop.logits(inputs, prompts), labels, reduction="none")
        every = draw_classes(labels, c, c - 1, torch.Generator().manual_seed(0))
        sampled = sampled_cross_entropy(coop.logits(inputs, prompts, every), c)
    diff = check_same(sampled, full, 1e-4, "sampled term with every other class vs full term")

    rows, estimates = [], []
    for name, negatives in (("every class (today's term)", None),
                            (f"1 + {args.negatives} classes", args.negatives)):
        bb.max_pairs = args.rows * c  # no chunks: the term exactly as it ran before the budget
        term = classification_loss(coop, negatives)
        t0 = time.perf_counter()
        dm = fit_diffusion(train, {**DIT, "steps": args.steps, "batch_size": args.rows},
                           seed=0, cls_loss=term)
        per_step = (time.perf_counter() - t0) / args.steps
        with torch.no_grad():
            x, _ = dm.generate(store.features[:held], generator=torch.Generator().manual_seed(0))
            y = torch.from_numpy(store.labels[:held])
            logits = coop.logits(Inputs(features=torch.from_numpy(store.features[:held])),
                                 coop.layout.unpack(x))
            ce = F.cross_entropy(logits, y).item()
            acc = 100.0 * (logits.argmax(-1) == y).float().mean().item()
            if negatives is not None:  # the estimate on these prompts, over 20 draws
                g = torch.Generator().manual_seed(1)
                estimates = [term(x, y, torch.from_numpy(store.features[:held]), g).item()
                             for _ in range(20)]
        rows.append([name, args.rows * (c if negatives is None else 1 + negatives),
                     per_step, dm.history[-1][1], ce, acc])
    base = rows[0][2]
    print(f"pdiff-tiny (shipped), CoOp over ImageNet's {c} classes; store of {args.samples} "
          f"synthetic samples ({held} held out); DiT {args.steps} steps of {args.rows} rows, "
          f"cls_weight {DIT['cls_weight']}; {args.threads} thread(s)")
    print(f"sampled term with all {c - 1} other classes vs full term: max abs diff {diff:.1e}")
    print(table(["classification term", "pairs per step", "s per step", "last train loss",
                 "held-out full CE", "held-out acc %"], rows))
    print(f"speed-up {base / rows[1][2]:.1f}x; on the sampled DiT's held-out prompts the full "
          f"term is {rows[1][4]:.3f}, the sampled estimate {np.mean(estimates):.3f} +- "
          f"{np.std(estimates):.3f} (20 draws)")


if __name__ == "__main__":
    main()
