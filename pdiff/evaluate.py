"""Evaluation (`pdiff evaluate`): zero-shot, the learned prompt (baseline), or prompt diffusion.

With prompt diffusion no label exists at test time: each test image's prompt is generated from
its frozen image feature by integrating the sampling ODE in a few steps, then used for that image
alone. Every evaluation writes full-precision JSON metrics; the report reads only those files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from tqdm import tqdm

from pdiff.backbone import load_backbone
from pdiff.budget import max_pairs
from pdiff.checkpoint import load_prompt
from pdiff.config import Config
from pdiff.data import (
    DatasetSpec,
    Datum,
    class_subset,
    fewshot_data,
    limited,
    load_fewshot,
    read_split,
    subsample_classes,
)
from pdiff.diagnose import memorisation
from pdiff.diffusion.sampler import SamplingConfig
from pdiff.diffusion.trainer import load_diffusion
from pdiff.errors import PdiffError
from pdiff.inputs import ImageList, image_list
from pdiff.methods import Inputs, PromptMethod, get_method
from pdiff.store import read_store_rows
from pdiff.utils import get_device, set_seed, write_json

log = logging.getLogger(__name__)

MODES = ("zeroshot", "baseline", "diffusion")
MEMORISATION_CAP = 2000
#: The --sets split of a run's few-shot validation images (CoOp: min(K, 4) per class, drawn from
#: the dataset's `val` split with the training images); "base" | "new" | "all" are test subsets.
VAL = "val"


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig(Config):
    """The `evaluation` section."""

    SECTION: ClassVar[str] = "evaluation"

    batch_size: int = 256  # test images per batch


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15
                               ) -> float:
    """ECE (%) with equal-width confidence bins, as in Guo et al. (2017), from each image's top
    probability and whether its prediction was right."""
    correct = correct.float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (confidence > lo) & (confidence <= hi)
        if sel.any():
            ece += sel.float().mean() * (confidence[sel].mean() - correct[sel].mean()).abs()
    return 100.0 * float(ece)


@dataclass
class Predictions:
    """What evaluation keeps per image: its top probability and whether it was right (O(N)
    scalars, never the [N, C] probabilities), and the generated prompts of `keep` rows."""

    confidence: list[torch.Tensor] = field(default_factory=list)
    correct: list[torch.Tensor] = field(default_factory=list)
    generated: list[torch.Tensor] = field(default_factory=list)
    nfe: int = 0

    def add(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        conf, pred = probs.max(-1)
        self.confidence.append(conf.cpu())
        self.correct.append((pred == labels).cpu())


@torch.no_grad()
def predict(method: PromptMethod, images: ImageList, batch_size: int, generate=None,
            keep: np.ndarray | None = None) -> Predictions:
    """Stream `images` through the method; `generate(cond) -> (probs(batch), prompts, nfe)`
    gives per-image prompts, of which the rows in `keep` (sorted list indices) are kept."""
    out = Predictions()
    for batch, labels, index in tqdm(images.batches(method.needs_images, batch_size=batch_size),
                                     desc="evaluate", mininterval=10,
                                     total=-(-len(images) // batch_size)):
        if generate is None:
            out.add(method.logits(batch, None).softmax(-1), labels)
            continue
        probs, tokens, out.nfe = generate(method.condition(batch))
        out.add(probs(batch), labels)
        if keep is not None:
            out.generated.append(tokens[np.isin(index.numpy(), keep)])
    return out


def evaluate(*, mode: str, backbone_spec: dict, data_root: str, sets: list[dict], params: dict,
             seed: int, out: str, prompt: str | None = None, dit: str | None = None,
             store: str | None = None, variant: dict | None = None,
             features: dict[str, str] | None = None, workers: int = 0,
             max_images: int | None = None) -> list[dict]:
    """Evaluate one prompt (or zero-shot CLIP) on every (dataset, split) of `sets`.

    One job per trained run loads the backbone, the prompt and the DiT once; each set still gets
    its own full-precision record, and the bundle is written only when all sets are done.
    `features` maps a dataset's name to its test split's feature cache. A validation set
    (split "val") names its run's classes, few-shot draw and, optionally, the draw's feature
    cache itself: {"dataset", "split": "val", "classes": "base"|"all", "fewshot", "features"}.
    """
    features = features or {}
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
        stored = torch.from_numpy(read_store_rows(
            store, "prompts", lambda n: _subsample(n, seed), expect_method=meta["method"],
            expect_backbone=backbone.identity))
    records = [_evaluate_set(mode, backbone, method, meta, dm, data_root, s, params, seed,
                             stored, features.get(s["dataset"]["name"]), workers, max_images)
               for s in sets]
    if variant:  # the settings of an ablation (overfit, diffusion, sampling variant names)
        records = [{**r, "variant": variant} for r in records]
    write_json(out, {"evaluations": records})
    return records


def _subsample(n: int, seed: int, cap: int = MEMORISATION_CAP) -> np.ndarray:
    """At most `cap` of `n` row indices, a seeded sorted choice: the nearest-neighbour check is
    quadratic, and only these rows are ever read or kept."""
    if n <= cap:
        return np.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:cap].sort().values.numpy()


def _set_images(data_root: str, spec: DatasetSpec, entry: dict, max_images: int | None
                ) -> tuple[list[Datum], list[str]]:
    """The images and class names (relabelled order) of one --sets entry: a class subset of the
    test split (at most `max_images` before the subset), or a run's few-shot validation images
    in its classes (already capped by the draw's own `limit`)."""
    splits = read_split(data_root, spec, with_train=False)
    if entry["split"] != VAL:
        (test,) = subsample_classes(limited(splits.test, max_images), subsample=entry["split"])
        return test, class_subset(splits.classnames, entry["split"])
    classes, fewshot = entry.get("classes"), entry.get("fewshot")
    if classes not in ("base", "all") or not isinstance(fewshot, str):
        raise PdiffError(f'--sets: a "val" set of {spec.name} needs "classes" (base or all: the '
                         'run\'s classes) and "fewshot" (the run\'s draw, `pdiff fewshot`)')
    draw = load_fewshot(fewshot)
    if draw["dataset"] != spec.name:
        raise PdiffError(f"--sets: few-shot draw {fewshot} is of {draw['dataset']!r}, not of "
                         f"{spec.name!r}")
    # CoOp relabels val with the label set of the draw's training images, as training does
    _, val = subsample_classes(fewshot_data(draw, "train"), fewshot_data(draw, "val"),
                               subsample=classes)
    if not val:
        raise PdiffError(f"--sets: few-shot draw {fewshot} has no validation images of "
                         f"{spec.name} (its split has no `val` list)")
    return val, class_subset(splits.classnames, classes)


def _evaluate_set(mode: str, backbone, method: PromptMethod | None, meta: dict, dm,
                  data_root: str, entry: dict, params: dict, seed: int,
                  stored: torch.Tensor | None = None, features: str | None = None,
                  workers: int = 0, max_images: int | None = None) -> dict:
    spec = DatasetSpec.from_dict(entry["dataset"])
    split = entry["split"]
    items, classnames = _set_images(data_root, spec, entry, max_images)
    if split == VAL:  # the draw's own cache (its `val` part), not the test split's
        features = entry.get("features")
    if method is None:  # zero-shot: the target dataset's own template
        method = get_method("zeroshot")(backbone, classnames, spec.template, {})
    else:
        method.set_classnames(classnames)
    batch_size = EvaluationConfig.from_dict(params.get("evaluation", {})).batch_size
    images = image_list(backbone, data_root, spec, items, features,
                        part="val" if split == VAL else "test", batch_size=batch_size,
                        workers=workers)

    generate, sampling, keep = None, None, None
    if dm is not None:
        sampling = params["sampling"]  # recorded as given
        # a fresh generator per set: a set's numbers do not depend on what ran before it
        gen = torch.Generator(device="cpu").manual_seed(seed)
        generate = _draws(method, dm, method.layout, SamplingConfig.from_dict(sampling), gen)
        keep = _subsample(len(images), seed) if stored is not None else None

    t0 = time.time()
    pred = predict(method, images, batch_size, generate, keep)
    seconds = time.time() - t0
    confidence, right = torch.cat(pred.confidence), torch.cat(pred.correct)
    correct, total = int(right.sum()), len(right)
    metrics = {
        "mode": mode,
        "method": "zeroshot" if mode == "zeroshot" else meta["method"],
        "train_dataset": meta.get("dataset"),
        "train_classes": meta.get("classes"),
        "seed": meta.get("seed"),
        "target": spec.name,
        "split": split,
        "accuracy": 100.0 * correct / total,
        "correct": correct,
        "total": total,
        "ece": expected_calibration_error(confidence, right),
        "seconds": seconds,
        "images_per_second": total / max(seconds, 1e-9),
        "nfe": pred.nfe,
        "sampling": sampling,
        "backbone": backbone.identity,
    }
    if split == VAL:  # which classes the validation images cover (test records: `split`)
        metrics["classes"] = entry["classes"]
    if stored is not None:
        mask = method.layout.mask()
        metrics["memorisation"] = memorisation(torch.cat(pred.generated), stored, mask)
    log.info("%s %s on %s/%s: %.2f%% (%d/%d), %.1fs", mode, metrics["method"], spec.name, split,
             metrics["accuracy"], correct, total, seconds)
    return metrics


def _draws(method: PromptMethod, dm, layout, sampling: SamplingConfig, gen: torch.Generator):
    """Build the per-batch generator: `draws` ODE samples per image, probabilities averaged;
    it also returns the first draw's packed prompts (for the memorisation check)."""

    def generate(cond: torch.Tensor):
        prompts, first, nfe = [], None, 0
        for _ in range(sampling.draws):
            tokens, n = dm.generate(cond, solver=sampling.solver, steps=sampling.steps,
                                    start=sampling.start, generator=gen)
            first = tokens.detach().cpu() if first is None else first
            prompts.append(layout.unpack(tokens.to(cond.device)))
            nfe += n

        def probs(batch: Inputs) -> torch.Tensor:
            return torch.stack([method.logits(batch, p).softmax(-1) for p in prompts]).mean(0)

        return probs, first, nfe

    return generate
