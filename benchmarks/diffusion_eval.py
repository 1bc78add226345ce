"""Evaluation with prompt diffusion vs. baseline evaluation, per host method.

    python benchmarks/diffusion_eval.py [--methods coop vpt maple] [--images 384]
        [--classes 24] [--steps 5] [--rounds 3] [--model pdiff-tiny] [--device cpu|cuda]

Baseline evaluation applies the learned prompt to every test image; evaluation with prompt
diffusion first generates each image's own prompt (the DiT integrates the sampling ODE, batched
over the test images: the per-batch body of `pdiff.evaluate.predict` with the generator of
`pdiff evaluate`, here over in-memory batches so that the probabilities can be compared) and
then applies it to that image alone. Demo sizes: 384 test images, 24 classes, evaluation batches
of 256, Euler with 5 steps from zero, one draw, the demo's DiT (4 layers, width 128, 4 heads) and
method parameters, on a randomly initialised pdiff-tiny.

Check: a freshly built DiT outputs exactly zero (adaLN-Zero), so with the residual target every
generated prompt is the learned prompt and the diffusion path must give the baseline's
probabilities: this checks the per-image prompt path against the shared one. The DiT's weights
are then randomised (the cost of a dense network does not depend on its values) and both paths
are timed, interleaved. Prints seconds per image of each, the DiT sampling's share, and the ratio.

What the ratio is made of. A visual method (VPT) pays the same image forward on both paths, plus
the DiT: on the tiny demo backbone the DiT is as wide and deep as the image tower (4 layers,
width 128) and runs 5 times on the 8 prompt tokens where the tower runs once on 21 image
tokens, about twice the tower's arithmetic, so the ratio is ~3x there; the ODE sampling itself is
already one batched DiT call per step for all images of an evaluation batch. On ViT-B/16
(`--model ViT-B-16 --images 16`: 197 tokens, 12 layers of width 768) the same DiT is under 1% of
an image forward and the ratio is close to 1. A textual method (CoOp) pays, per test image, its
own class-text encoding (images x classes sequences, shared-prefix encoded) where the baseline
encodes the classes once for all images and reuses cached image features: its ratio is the price
of per-image prompts and grows with the number of classes. MaPLe pays both. Nothing in the
sampling is avoidable work at these sizes: the DiT's matrix products run near the core's peak,
and caching the image-feature embedding across ODE steps would save under 1%. Whole evaluation
jobs also load the backbone and the images, which both modes share: `benchmarks/rule_times.py
RESULTS --group 0 2` prints the job-level ratio of a pipeline run per method.
"""

from __future__ import annotations

import argparse

import torch
from _common import (
    DEMO_PARAMS,
    add_device_args,
    check_same,
    demo_params,
    interleaved,
    random_backbone,
    setup,
    table,
)

from pdiff.diffusion import DiffusionModel, FlowMatching, PromptDiT, TargetNormaliser
from pdiff.diffusion.sampler import SamplingConfig
from pdiff.evaluate import _draws
from pdiff.methods import Inputs, PromptMethod, get_method

DIT = {"width": 128, "depth": 4, "heads": 4}


def fresh_dit(method: PromptMethod, cond_dim: int, device: str) -> DiffusionModel:
    """An untrained demo-sized DiT whose residual target is centred on the learned prompt."""
    layout = method.layout
    mask = layout.mask()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = PromptDiT(layout.num_tokens, layout.token_dim, cond_dim, **DIT).eval().to(device)
    shape = (layout.num_tokens, layout.token_dim)
    normaliser = TargetNormaliser(offset=layout.pack(method.init_prompt())[0].cpu(),
                                  mean=torch.zeros(shape), std=torch.ones(shape), mask=mask,
                                  target="residual", normalise="scalar")
    return DiffusionModel(net, FlowMatching(token_mask=mask), normaliser, {}, mask)


@torch.no_grad()
def probabilities(method: PromptMethod, inputs: Inputs, batch: int, generate=None
                  ) -> torch.Tensor:
    """Class probabilities [N, C], batch by batch as `pdiff.evaluate.predict` computes them."""
    out = []
    for i in range(0, len(inputs), batch):
        b = inputs[i : i + batch]
        if generate is None:
            out.append(method.logits(b, None).softmax(-1))
        else:
            probs, _, _ = generate(method.condition(b))
            out.append(probs(b))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["coop", "vpt", "maple"],
                    choices=sorted(DEMO_PARAMS))
    ap.add_argument("--model", default="pdiff-tiny")
    ap.add_argument("--images", type=int, default=384, help="test images")
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--batch", type=int, default=256, help="evaluation batch size")
    ap.add_argument("--solver", default="euler")
    ap.add_argument("--steps", type=int, default=5, help="ODE steps")
    ap.add_argument("--rounds", type=int, default=3)
    add_device_args(ap)
    args = ap.parse_args()
    setup(args.threads)
    bb = random_backbone(args.model, device=args.device)
    names = [f"colour{i} thing{i}" for i in range(args.classes)]
    g = torch.Generator().manual_seed(0)
    n = args.images
    images = torch.rand(n, 3, bb.image_size, bb.image_size, generator=g).to(args.device)
    features = bb.encode_images(images)  # cached once per stage, as `load_inputs` does
    sampling = SamplingConfig(solver=args.solver, steps=args.steps)

    rows = []
    for name in args.methods:
        method = get_method(name)(bb, names, "a photo of a {}.", demo_params(name, bb))
        method.to(args.device).requires_grad_(False)
        inputs = Inputs(features, images if method.needs_images else None)
        dm = fresh_dit(method, bb.embed_dim, args.device)

        def baseline(method=method, inputs=inputs) -> torch.Tensor:
            return probabilities(method, inputs, args.batch)

        def diffusion(method=method, inputs=inputs, dm=dm) -> torch.Tensor:
            gen = torch.Generator().manual_seed(0)
            generate = _draws(method, dm, method.layout, sampling, gen)
            return probabilities(method, inputs, args.batch, generate)

        def dit_only(dm=dm) -> torch.Tensor:
            return torch.cat([dm.generate(c, solver=args.solver, steps=args.steps)[0]
                              for c in features.split(args.batch)])

        diff = check_same(diffusion(), baseline(), 1e-5,
                          f"{name}: probabilities with a zero DiT vs. the learned prompt")
        with torch.no_grad():  # a trained DiT is not zero: time a random one
            for p in dm.model.parameters():
                p.add_(torch.randn(p.shape, generator=g).to(p.device) * 0.02)
        t = interleaved({"baseline": baseline, "diffusion": diffusion, "dit": dit_only},
                        args.rounds)
        rows.append([name, method.layout.num_tokens, t.median("baseline") / n * 1e3,
                     t.median("diffusion") / n * 1e3, t.median("dit") / n * 1e3,
                     f"{t.ratio('diffusion', 'baseline'):.2f}x", diff])
    print(f"{args.model} (random init) on {args.device}: {n} test images x {args.classes} "
          f"classes, batches of {args.batch}; DiT {DIT['depth']} layers x {DIT['width']}, "
          f"{args.solver} {args.steps} steps; {args.threads} thread(s); median of {args.rounds} "
          "interleaved rounds")
    print(table(["method", "prompt tokens", "baseline (ms/img)", "diffusion (ms/img)",
                 "of which DiT (ms/img)", "ratio", "max abs diff (zero DiT)"], rows))


if __name__ == "__main__":
    main()
