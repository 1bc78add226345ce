"""Frozen features computed once per stage vs. once per step (a training epoch of CoOp and VPT).

    python benchmarks/cached_features.py [--classes 24] [--shots 16] [--batch 32] [--rounds 3]

Half of every prompt-learning step is frozen: a textual method (CoOp) never changes the image
encoder's output, and a visual method (VPT) never changes the class text features. `pdiff`
computes those once per stage (`pdiff.inputs.ImageList.features` encodes a few-shot list's images
once, or reads the feature cache; VPT encodes the class prompts when the class names are set).
The plain path recomputes them in every step, as a naive implementation would: CoOp encodes its
batch of images, VPT its class prompts, before each step.

One training epoch at demo sizes (24 classes x 16 shots = 384 images, batches of 32, Adam, the
demo's method parameters) on a randomly initialised pdiff-tiny, both paths from the same prompt
with the same batch order. Checks that both give the same logits before training and the same
prompt after the epoch, then prints the one-off cost of the cached features, the time of an epoch
each way and their ratio, and the ratio for the demo's whole training run (50 CoOp or 20 VPT
epochs: once + epochs x cached epoch vs. epochs x per-step epoch; a single epoch encodes every
image once either way, so caching pays from the second epoch on). On the tiny model the frozen
half is cheap (a 4-layer ViT on 32 px images, 24 short class prompts), so the ratios are modest;
with ViT-B/16 at 224 px a batch's frozen image forward is dozens of times CoOp's text step.
"""

from __future__ import annotations

import argparse

import torch
from _common import check_same, interleaved, random_backbone, setup, table

from pdiff.data.templates import GENERIC_TEMPLATE
from pdiff.methods import Inputs, Prompts
from pdiff.methods.coop import CoOp
from pdiff.methods.text import template_features
from pdiff.methods.vpt import VPT

PARAMS = {"coop": {"n_ctx": 16, "init": "random", "lr": 0.001, "epochs": 50},
          "vpt": {"n_ctx": 4, "depth": 2, "lr": 0.001, "epochs": 20}}


class CoOpPerStep(CoOp):
    """CoOp that encodes its batch's images in every step instead of using cached features."""

    def features(self, inputs: Inputs, prompts: Prompts, classes: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.encode_images(inputs.images), self.texts(prompts["ctx"],
                                                                      classes=classes)


class VPTPerStep(VPT):
    """VPT that encodes its class prompts in every step instead of using the cached table."""

    def features(self, inputs: Inputs, prompts: Prompts, classes: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.backbone.encode_images_prompted(inputs.images, prompts.get("vision"))
        text = template_features(self.backbone, self.classnames, [GENERIC_TEMPLATE])
        return image, text[None] if classes is None else text[classes]


def epoch(method, inputs: Inputs, labels: torch.Tensor, batch: int, lr: float, seed: int = 0
          ) -> torch.Tensor:
    """One epoch of baseline prompt learning from a fresh copy of the initial prompt."""
    with torch.no_grad():
        for k, v in method.prompt.items():
            v.copy_(method.initial[k])
    opt = torch.optim.Adam(method.learnable_parameters(), lr=lr)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(labels), batch):
        idx = order[i : i + batch]
        loss = method.loss(inputs[idx], labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return method.layout.pack(method.learned_prompts()).detach().clone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="1 by default: on a shared 2-core machine 2 threads wait on each other")
    args = ap.parse_args()
    setup(args.threads)
    bb = random_backbone()
    names = [f"colour{i} thing{i}" for i in range(args.classes)]
    g = torch.Generator().manual_seed(0)
    n = args.classes * args.shots
    images = torch.rand(n, 3, bb.image_size, bb.image_size, generator=g)
    labels = torch.arange(args.classes).repeat_interleave(args.shots)

    rows = []
    for name, cached_cls, plain_cls in (("coop", CoOp, CoOpPerStep), ("vpt", VPT, VPTPerStep)):
        params = PARAMS[name]
        cached = cached_cls(bb, names, "a photo of a {}.", params)
        plain = plain_cls(bb, names, "a photo of a {}.", params)
        for m in (cached, plain):
            m.initial = {k: v.detach().clone() for k, v in m.prompt.items()}

        if name == "coop":  # the frozen half: image features, once for the whole stage
            def once(cached=cached) -> Inputs:
                return Inputs(bb.encode_images(images))
            plain_inputs = Inputs(None, images)
        else:  # the frozen half: class text features, once when the class names are set
            def once(cached=cached) -> Inputs:
                cached.set_classnames(names)
                return Inputs(None, images)
            plain_inputs = Inputs(None, images)
        cached_inputs = once()

        with torch.no_grad():
            d_logits = check_same(cached.logits(cached_inputs[:64]),
                                  plain.logits(plain_inputs[:64]), 1e-4, f"{name}: logits")
        d_prompt = check_same(epoch(cached, cached_inputs, labels, args.batch, params["lr"]),
                              epoch(plain, plain_inputs, labels, args.batch, params["lr"]),
                              1e-4, f"{name}: prompt after one epoch")

        t = interleaved({
            "once": once,
            "cached": lambda m=cached, x=cached_inputs, p=params:
                epoch(m, x, labels, args.batch, p["lr"]),
            "plain": lambda m=plain, x=plain_inputs, p=params:
                epoch(m, x, labels, args.batch, p["lr"]),
        }, args.rounds, warmup=False)
        once_s, cached_s, plain_s = t.median("once"), t.median("cached"), t.median("plain")
        e = params["epochs"]
        rows.append([name, "image features" if name == "coop" else "class text features",
                     once_s * 1e3, cached_s, plain_s, f"{t.ratio('plain', 'cached'):.2f}x",
                     f"{e}: {e * plain_s / (once_s + e * cached_s):.2f}x",
                     max(d_logits, d_prompt)])
    print(f"one epoch: {n} images ({args.classes} classes x {args.shots} shots), batches of "
          f"{args.batch}, Adam; random pdiff-tiny; {args.threads} thread(s); median of "
          f"{args.rounds} interleaved rounds")
    print(table(["method", "frozen features", "once per stage (ms)", "epoch, cached (s)",
                 "epoch, per step (s)", "speed-up per epoch", "demo training (epochs)",
                 "max abs diff"], rows))


if __name__ == "__main__":
    main()
