"""Host prompt training, the baseline (`pdiff train`): fit a host method's prompt on the few-shot
draw. Not to be confused with the prompt DiT's training (:mod:`pdiff.fit_dit`).

CoOp's protocol: train on the K-shot draw of the chosen classes (base or all), optimiser and
schedule from config (the published recipe is SGD + cosine with one constant warm-up epoch; the
tiny demo model needs Adam), and keep the last epoch. The learned prompt is broadcast to the batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pdiff.backbone import load_backbone
from pdiff.budget import max_pairs, stage_params
from pdiff.checkpoint import save_prompt
from pdiff.data import (
    DatasetSpec,
    class_subset,
    fewshot_data,
    load_fewshot,
    read_split,
    subsample_classes,
)
from pdiff.inputs import ImageList, image_list
from pdiff.methods import PromptMethod, get_method
from pdiff.methods.base import TrainConfig
from pdiff.resume import Resume, file_digest, rng_state, set_rng_state, tensor_digest
from pdiff.utils import get_device, set_seed

log = logging.getLogger(__name__)

WARMUP_LR = 1e-5  # Dassl's constant warm-up learning rate
ACCURACY_BATCH = 512


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.decay)
    optimizer = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return optimizer(params, lr=cfg.lr, weight_decay=cfg.decay)


def epoch_lr(epoch: int, cfg: TrainConfig) -> float:
    """Constant warm-up, then cosine annealing over all epochs (stepped per epoch, as Dassl)."""
    if epoch < cfg.warmup_epochs:
        return WARMUP_LR
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))


@torch.no_grad()
def accuracy(method: PromptMethod, images: ImageList) -> float:
    """Top-1 accuracy (%) of the learned prompt. A method whose learned prompt gives each image
    its own class texts (CoCoOp) runs in batches whose images x classes fit the budget; the
    others share one class table per batch."""
    batch = (max(1, method.backbone.max_pairs // len(method.classnames))
             if method.image_conditioned_texts else ACCURACY_BATCH)
    correct = 0
    for inputs, labels, _ in images.batches(method.needs_images, batch_size=batch):
        correct += int((method.logits(inputs, None).argmax(-1) == labels).sum())
    return 100.0 * correct / max(1, len(images))


def fit_prompt(method: PromptMethod, images: ImageList, params: Mapping[str, Any],
               gen: torch.Generator, resume: Resume | None = None,
               augment: dict | None = None) -> list[float]:
    """The training loop on the recipe in ``params`` (a method block; the method's own keys are
    the method's); returns the mean loss of every epoch.

    With `augment`, each epoch sees a fresh random view of every image (a cached augmented
    feature for methods on frozen features, a new crop and flip for the others).

    With `resume`, the whole training state (learnable parameters, optimiser, RNGs, history and
    the method's own aggregation state) is checkpointed after every epoch, and a run started
    again continues after the last completed epoch with the same result.
    """
    cfg = TrainConfig.from_dict(params, f"method_params.{method.name}",
                                also=method.config_type.keys())
    opt = make_optimizer(method.learnable_parameters(), cfg)
    history: list[float] = []
    start = 0
    state = resume.load() if resume is not None else None
    if state is not None:
        method.load_state_dict(state["method"])
        method.load_training_state(state["extra"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        set_rng_state(state["rng"])
        start, history = int(state["epoch"]), list(state["history"])
        log.info("resuming %s training after epoch %d of %d", method.name, start, cfg.epochs)
    n, bs = len(images), cfg.batch_size
    for epoch in tqdm(range(start, cfg.epochs), desc=f"train {method.name}", initial=start,
                      total=cfg.epochs, mininterval=5):
        for group in opt.param_groups:
            group["lr"] = epoch_lr(epoch, cfg)
        order = torch.randperm(n, generator=gen).numpy()
        total = 0.0
        for inputs, labels, _ in images.batches(method.needs_images, order, bs, augment,
                                                draw=epoch):
            loss = method.loss(inputs, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(labels)
        history.append(total / n)
        method.on_epoch_end(epoch, cfg.epochs)
        if resume is not None:
            resume.save({"method": method.learnable_state(), "opt": opt.state_dict(),
                         "gen": gen.get_state(), "rng": rng_state(), "epoch": epoch + 1,
                         "history": history, "extra": method.training_state()})
    method.end_training()
    return history


def train_host_prompt(*, method_name: str, params: dict, backbone_spec: dict, data_root: str,
                      dataset: dict, fewshot: str, classes: str, seed: int, out: str,
                      features: str | None = None, augment: dict | None = None,
                      workers: int = 0) -> dict:
    gen = set_seed(seed)
    backbone = load_backbone(backbone_spec, get_device())
    backbone.max_pairs = max_pairs(params)
    params = stage_params(params)  # the method's own: what the checkpoint and resume key hold
    spec = DatasetSpec.from_dict(dataset)
    splits = read_split(data_root, spec, with_train=False)
    draw = load_fewshot(fewshot)
    train_data, val_data = subsample_classes(fewshot_data(draw, "train"),
                                             fewshot_data(draw, "val"), subsample=classes)
    classnames = class_subset(splits.classnames, classes)
    method = get_method(method_name)(backbone, classnames, spec.template,
                                     {**params, "init_seed": seed})
    images = image_list(backbone, data_root, spec, train_data, features, "train",
                        workers=workers, seed=seed)
    if not method.needs_images and not augment:
        images.features()  # a few-shot list: encoded (or read) once for every epoch
    # The resume key: the config, the draw, and the training images themselves (through their
    # frozen features, or the cache file: a regenerated or replaced dataset gives another key).
    resume = Resume(out, {"method": method_name, "params": params,
                          "backbone": backbone.identity, "dataset": dataset,
                          "fewshot": file_digest(fewshot), "classes": classes, "seed": seed,
                          "augment": augment,
                          "inputs": file_digest(features) if features
                          else tensor_digest(images.features(), images.labels)},
                    f"{method_name} training")
    t0 = time.time()
    history = (fit_prompt(method, images, params, gen, resume, augment) if len(method.prompt)
               else [])
    seconds = time.time() - t0
    train_acc = accuracy(method, images)
    val_acc = None
    if val_data:
        val_acc = accuracy(method, image_list(backbone, data_root, spec, val_data, features,
                                              "val", workers=workers, seed=seed))
    log.info("%s on %s/%s: train acc %.1f%%, val acc %s, %.1fs", method_name, spec.name,
             classes, train_acc, val_acc, seconds)
    # No wall-clock time in the checkpoint: equal runs give byte-identical files (the time is
    # in the log and in Snakemake's benchmark file).
    meta = {"dataset": spec.name, "classes": classes, "classnames": classnames, "seed": seed,
            "shots": draw["shots"], "history": history, "train_accuracy": train_acc,
            "val_accuracy": val_acc}
    save_prompt(Path(out), method, meta)
    resume.clear()
    return {**meta, "seconds": seconds}
