"""Train the prompt diffusion model on a prompt store (`pdiff fit-diffusion`).

The glue between a host method and the method-agnostic diffusion package: it checks that the
store belongs to this prompt and backbone, and hands the optional classification term (through
the model's clean-prompt estimate) to the trainer as a plain callable.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from pdiff.backbone import load_backbone
from pdiff.checkpoint import load_prompt
from pdiff.diffusion import fit_diffusion, save_diffusion
from pdiff.methods import Inputs
from pdiff.resume import Resume, file_digest
from pdiff.store import read_store
from pdiff.utils import get_device, set_seed

log = logging.getLogger(__name__)


def fit_stage(prompt: str, store: str, backbone_spec: dict, params: dict, seed: int, out: str
              ) -> None:
    set_seed(seed)
    device = get_device()
    backbone = load_backbone(backbone_spec, device)
    method, _ = load_prompt(prompt, backbone)
    method.requires_grad_(False)
    data = read_store(store, expect_method=method.name, expect_backbone=backbone.identity)
    layout = method.layout

    def cls_loss(tokens: torch.Tensor, labels: torch.Tensor, features: torch.Tensor
                 ) -> torch.Tensor:
        logits = method.logits(Inputs(features=features), layout.unpack(tokens))
        return F.cross_entropy(logits, labels)

    resume = Resume(out, {"params": params, "seed": seed, "backbone": backbone.identity,
                          "prompt": file_digest(prompt), "store": file_digest(store)},
                    "diffusion training")
    t0 = time.time()
    dm = fit_diffusion(data, params, seed=seed,
                       cls_loss=cls_loss if params.get("cls_weight", 0) > 0 else None,
                       device=str(device), resume=resume)
    save_diffusion(out, dm)
    resume.clear()
    log.info("prompt DiT trained on %d prompts in %.1fs", data.num_samples, time.time() - t0)
