"""Train the prompt DiT on a prompt store (`pdiff fit-diffusion`).

The glue between a host method and the method-agnostic diffusion package: it checks that the
store belongs to this prompt (its method and backbone), and hands the optional classification
term (through the model's clean-prompt estimate) to the trainer (:mod:`pdiff.diffusion.trainer`)
as a plain callable; only that term needs the backbone. With `holdout` > 0 a seeded fraction of
the store stays out of training, and the diagnostics file records how well the prompts generated
for those unseen images follow their true overfitted deltas.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pdiff.budget import max_pairs, stage_params
from pdiff.checkpoint import read_prompt_meta
from pdiff.diagnose import delta_agreement
from pdiff.diffusion import fit_diffusion, save_diffusion
from pdiff.diffusion.config import DiffusionConfig
from pdiff.diffusion.trainer import ClsLoss
from pdiff.errors import PdiffError
from pdiff.resume import Resume, file_digest
from pdiff.sampled_softmax import draw_classes, sampled_cross_entropy
from pdiff.store import PromptStore, read_store
from pdiff.utils import get_device, set_seed, write_json

if TYPE_CHECKING:
    from pdiff.methods import PromptMethod

log = logging.getLogger(__name__)


DIAGNOSTIC_SAMPLING = {"solver": "euler", "steps": 5, "start": "zero"}


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) row indices; at least one of each when fraction > 0."""
    k = min(n - 1, max(1, round(n * fraction))) if fraction > 0 and n > 1 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(perm[k:]), np.sort(perm[:k])


def subset(store: PromptStore, rows: np.ndarray) -> PromptStore:
    return replace(store, prompts=store.prompts[rows], features=store.features[rows],
                   labels=store.labels[rows], sample_ids=[store.sample_ids[i] for i in rows],
                   loss_before=store.loss_before[rows], loss_after=store.loss_after[rows],
                   done=store.done[rows])


def diagnostics(dm, store: PromptStore, train: np.ndarray, held: np.ndarray) -> dict:
    """Generated vs true deltas on held-out rows, and on as many training rows for contrast."""
    init = torch.from_numpy(store.init_prompt)
    mask = (torch.from_numpy(store.token_mask) if store.token_mask is not None
            else torch.ones_like(init, dtype=torch.bool))
    out = {"sampling": DIAGNOSTIC_SAMPLING, "stored": int(store.num_samples)}
    for name, rows in (("held_out", held), ("train", train[: max(len(held), 1)])):
        if len(rows):
            with torch.no_grad():
                gen, _ = dm.generate(store.features[rows], **DIAGNOSTIC_SAMPLING)
            out[name] = delta_agreement(gen.cpu(), torch.from_numpy(store.prompts[rows]), init,
                                        mask)
    return out


def classification_loss(method: PromptMethod, negatives: int | None) -> ClsLoss:
    """The DiT's classification term: cross-entropy of the method's logits under the decoded
    prompts, over every class or (`negatives`) a sampled-class softmax."""
    from pdiff.methods import Inputs

    num_classes, layout = len(method.classnames), method.layout

    def cls_loss(tokens: torch.Tensor, labels: torch.Tensor, features: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        inputs, prompts = Inputs(features=features), layout.unpack(tokens)
        if negatives is None or negatives >= num_classes - 1:  # every class: the exact term
            return F.cross_entropy(method.logits(inputs, prompts), labels)
        classes = draw_classes(labels, num_classes, negatives, generator)
        return sampled_cross_entropy(method.logits(inputs, prompts, classes), num_classes).mean()

    return cls_loss


def host_classification_loss(prompt: str, backbone_spec: dict, *, pairs: int,
                             negatives: int | None, device: torch.device) -> ClsLoss:
    """The classification term through `prompt`'s host method on the backbone, which must be
    the one the prompt was trained with."""
    from pdiff.backbone import load_backbone
    from pdiff.checkpoint import load_prompt

    backbone = load_backbone(backbone_spec, device)
    backbone.max_pairs = pairs
    method, _ = load_prompt(prompt, backbone)
    method.requires_grad_(False)
    if method.needs_images:
        raise PdiffError(
            f"diffusion.cls_weight > 0 needs prompts that act on cached image features; "
            f"{method.name} prompts the image encoder and the store holds no images; set "
            "diffusion.cls_weight: 0 for it"
        )
    return classification_loss(method, negatives)


def fit_dit(*, prompt: str, store: str, backbone_spec: dict, params: dict, seed: int, out: str,
            diagnostics_out: str | None = None) -> None:
    set_seed(seed)
    device = get_device()
    pairs = max_pairs(params)
    params = stage_params(params)  # what the resume key holds
    cfg = DiffusionConfig.from_dict(params)
    # The DiT sees only the store: the backbone (and open_clip's import, seconds of every job)
    # is loaded only for the classification term.
    meta = read_prompt_meta(prompt)
    data = read_store(store, expect_method=meta["method"], expect_backbone=meta["backbone"])
    cls_loss = (host_classification_loss(prompt, backbone_spec, pairs=pairs,
                                         negatives=cfg.cls_negatives, device=device)
                if cfg.cls_weight > 0 else None)

    resume = Resume(out, {"params": params, "seed": seed, "backbone": meta["backbone"],
                          "prompt": file_digest(prompt), "store": file_digest(store)},
                    "diffusion training")
    train, held = split_holdout(data.num_samples, float(cfg.holdout), seed)
    t0 = time.time()
    dm = fit_diffusion(subset(data, train) if len(held) else data, params, seed=seed,
                       cls_loss=cls_loss, device=str(device), resume=resume)
    if diagnostics_out:
        report = {"method": meta["method"], "seed": seed, "held_out_rows": len(held),
                  **diagnostics(dm, data, train, held)}
        write_json(diagnostics_out, report)
    save_diffusion(out, dm)
    resume.clear()
    log.info("prompt DiT trained on %d of %d prompts in %.1fs", len(train), data.num_samples,
             time.time() - t0)
