"""`pdiff fit-diffusion`: train the prompt DiT on a prompt store (rule fit_diffusion).

The stage is :func:`pdiff.fit_dit.fit_dit`; the method-agnostic training loop it calls is
:mod:`pdiff.diffusion.trainer`.
"""

from __future__ import annotations

import argparse

from pdiff.stages.common import add_backbone, add_params

NAME = "fit-diffusion"
HELP = "train the prompt DiT on a prompt store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True, help="the host prompt (`pdiff train`)")
    p.add_argument("--store", required=True, help="its prompt store (`pdiff overfit`)")
    add_backbone(p)
    add_params(p, "the `diffusion` config")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--diagnostics", help="also write generated-vs-true delta diagnostics (JSON)")


def run(args: argparse.Namespace) -> None:
    from pdiff.fit_dit import fit_dit

    fit_dit(prompt=args.prompt, store=args.store, backbone_spec=args.backbone,
            params=args.params, seed=args.seed, out=args.out, diagnostics_out=args.diagnostics)
