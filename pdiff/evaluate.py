"""Evaluation (`pdiff evaluate`): zero-shot, the learned prompt (baseline), or prompt diffusion.

With prompt diffusion no label exists at test time: each test image's prompt is generated from
its frozen image feature by integrating the sampling ODE in a few steps, then used for that image
alone. Every evaluation writes full-precision JSON metrics; the report reads only those files.
"""

from __future__ import annotations

import logging
import time

import torch

from pdiff.backbone import load_backbone
from pdiff.budget import max_pairs
from pdiff.checkpoint import load_prompt
from pdiff.data import DatasetSpec, class_subset, read_split, subsample_classes
from pdiff.diagnose import memorisation
from pdiff.diffusion.train import load_diffusion
from pdiff.errors import PdiffError
from pdiff.inputs import load_inputs
from pdiff.methods import Inputs, PromptMethod, get_method
from pdiff.store import read_store
from pdiff.utils import get_device, set_seed, write_json

log = logging.getLogger(__name__)

MODES = ("zeroshot", "baseline", "diffusion")
MEMORISATION_CAP = 2000


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15
                               ) -> float:
    """ECE (%) with equal-width confidence bins, as in Guo et al. (2017)."""
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.float().mean() * (conf[sel].mean() - correct[sel].mean()).abs()
    return 100.0 * float(ece)


@torch.no_grad()
def predict(method: PromptMethod, inputs: Inputs, batch_size: int, generate=None
            ) -> tuple[torch.Tensor, int]:
    """Class probabilities [N, C]; `generate(cond) -> (prompts, nfe)` gives per-image prompts."""
    probs, nfe = [], 0
    for i in range(0, len(inputs), batch_size):
        batch = inputs[i : i + batch_size]
        if generate is None:
            probs.append(method.logits(batch, None).softmax(-1))
        else:
            p, n = generate(method.condition(batch))
            probs.append(p(batch))
            nfe = n
    return torch.cat(probs).cpu(), nfe


def evaluate(mode: str, backbone_spec: dict, data_root: str, sets: list[dict], params: dict,
             seed: int, out: str, prompt: str | None = None, dit: str | None = None,
             store: str | None = None, variant: dict | None = None) -> list[dict]:
    """Evaluate one prompt (or zero-shot CLIP) on every (dataset, split) of `sets`.

    One job per trained run loads the backbone, the prompt and the DiT once; each set still gets
    its own full-precision record, and the bundle is written only when all sets are done.
    """
    if mode not in MODES:
        raise PdiffError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
    if mode != "zeroshot" and not prompt:
        raise PdiffError(f"--mode {mode} needs --prompt (a checkpoint from `pdiff train`)")
    if mode == "diffusion" and not dit:
        raise PdiffError("--mode diffusion needs --dit (a model from `pdiff fit-diffusion`)")
    if not sets:
        raise PdiffError("--sets is empty; give at least one {dataset, split} to evaluate on")
    set_seed(seed)
    backbone = load_backbone(backbone_spec, get_device())
    backbone.max_pairs = max_pairs(params)
    method, meta = (None, {}) if mode == "zeroshot" else load_prompt(prompt, backbone)
    dm = load_diffusion(dit) if mode == "diffusion" else None
    stored = None
    if store is not None and mode == "diffusion":
        st = read_store(store, expect_method=meta["method"], expect_backbone=backbone.identity)
        stored = torch.from_numpy(_subsample(st.prompts, seed))
    records = [_evaluate_set(mode, backbone, method, meta, dm, data_root, s["dataset"],
                             s["split"], params, seed, stored) for s in sets]
    if variant:  # the settings of an ablation (overfit, diffusion, sampling variant names)
        records = [{**r, "variant": variant} for r in records]
    write_json(out, {"evaluations": records})
    return records


def _subsample(x, seed: int, cap: int = MEMORISATION_CAP):
    """At most `cap` rows, a seeded choice: the nearest-neighbour check is quadratic."""
    if len(x) <= cap:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(len(x), generator=g)[:cap].sort().values.numpy()]


def _evaluate_set(mode: str, backbone, method: PromptMethod | None, meta: dict, dm,
                  data_root: str, dataset: dict, split: str, params: dict, seed: int,
                  stored: torch.Tensor | None = None) -> dict:
    spec = DatasetSpec.from_dict(dataset)
    splits = read_split(data_root, spec, with_train=False)
    (test,) = subsample_classes(splits.test, subsample=split)
    classnames = class_subset(splits.classnames, split)
    if method is None:  # zero-shot: the target dataset's own template
        method = get_method("zeroshot")(backbone, classnames, spec.template, {})
    else:
        method.set_classnames(classnames)
    inputs, labels = load_inputs(data_root, spec, test, backbone, method.needs_images)

    generate, sampling, generated = None, None, []
    if dm is not None:
        sampling = params["sampling"]
        # a fresh generator per set: a set's numbers do not depend on what ran before it
        gen = torch.Generator(device="cpu").manual_seed(seed)
        generate = _draws(method, dm, method.layout, sampling, gen, generated)

    t0 = time.time()
    probs, nfe = predict(method, inputs, params["evaluation"]["batch_size"], generate)
    seconds = time.time() - t0
    labels = labels.cpu()
    correct = int((probs.argmax(-1) == labels).sum())
    metrics = {
        "mode": mode,
        "method": "zeroshot" if mode == "zeroshot" else meta["method"],
        "train_dataset": meta.get("dataset"),
        "train_classes": meta.get("classes"),
        "seed": meta.get("seed"),
        "target": spec.name,
        "split": split,
        "accuracy": 100.0 * correct / len(labels),
        "correct": correct,
        "total": len(labels),
        "ece": expected_calibration_error(probs, labels),
        "seconds": seconds,
        "images_per_second": len(labels) / max(seconds, 1e-9),
        "nfe": nfe,
        "sampling": sampling,
        "backbone": backbone.identity,
    }
    if stored is not None:
        mask = method.layout.mask()
        metrics["memorisation"] = memorisation(
            torch.from_numpy(_subsample(torch.cat(generated).numpy(), seed)), stored, mask)
    log.info("%s %s on %s/%s: %.2f%% (%d/%d), %.1fs", mode, metrics["method"], spec.name, split,
             metrics["accuracy"], correct, len(labels), seconds)
    return metrics


def _draws(method: PromptMethod, dm, layout, sampling: dict, gen: torch.Generator,
           keep: list[torch.Tensor]):
    """Build the per-batch generator: `draws` ODE samples per image, probabilities averaged;
    the first draw's packed prompts are appended to `keep` (for the memorisation check)."""

    def generate(cond: torch.Tensor):
        prompts, nfe = [], 0
        for i in range(sampling["draws"]):
            tokens, n = dm.generate(cond, solver=sampling["solver"], steps=sampling["steps"],
                                    start=sampling["start"], generator=gen)
            if i == 0:
                keep.append(tokens.detach().cpu())
            prompts.append(layout.unpack(tokens.to(cond.device)))
            nfe += n

        def probs(batch: Inputs) -> torch.Tensor:
            return torch.stack([method.logits(batch, p).softmax(-1) for p in prompts]).mean(0)

        return probs, nfe

    return generate
