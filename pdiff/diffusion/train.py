"""Train the prompt DiT on a prompt store, and save/load the result.

``fit_diffusion`` is deterministic for a given seed (on a given device and thread
setup): the weights are initialised under a forked RNG seeded with ``seed`` and every
minibatch, time and noise draw comes from one seeded ``torch.Generator``.

Optimisation: AdamW, linear warm-up then cosine decay to zero, gradient clipping, and
an exponential moving average (EMA) of the weights, which is the model used for
sampling. The EMA decay is warmed up as ``min(ema, (1 + k) / (10 + k))`` at step ``k``
so that short runs are not dominated by the zero-initialised starting weights.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import Tensor
from tqdm import tqdm

import pdiff
from pdiff.diffusion.config import DiffusionConfig
from pdiff.diffusion.dit import PromptDiT
from pdiff.diffusion.normalise import TargetNormaliser
from pdiff.diffusion.objective import Objective, get_objective
from pdiff.diffusion.sampler import sample
from pdiff.errors import PdiffError
from pdiff.resume import Resume, rng_state, set_rng_state
from pdiff.store import PromptStore
from pdiff.utils import save_safetensors

log = logging.getLogger("pdiff.diffusion.train")

FORMAT = "pdiff-diffusion/1"
#: Steps between two resume checkpoints (when ``fit_diffusion`` is given a ``resume``).
CHECKPOINT_EVERY = 200

#: ``cls_loss(prompts [B,T,D], labels [B], features [B,F], generator) -> scalar``; any random
#: draw it makes comes from ``generator`` (seeded, part of the resumable training state).
ClsLoss = Callable[[Tensor, Tensor, Tensor, torch.Generator], Tensor]


@dataclass
class DiffusionModel:
    """A trained prompt generator: EMA network + objective + normaliser + provenance."""

    model: PromptDiT
    objective: Objective
    normaliser: TargetNormaliser
    params: dict[str, Any]
    token_mask: Tensor | None = None
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def token_shape(self) -> tuple[int, int]:
        return (self.model.config["num_tokens"], self.model.config["token_dim"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> DiffusionModel:
        self.model.to(device)
        return self

    def generate(
        self,
        cond: Tensor | np.ndarray,
        *,
        solver: str = "euler",
        steps: int = 5,
        start: str = "zero",
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, int]:
        """Prompts ``[B, T, D]`` (decoded, on the model's device) for ``cond [B, F]``."""
        cond_t = torch.as_tensor(np.asarray(cond) if not isinstance(cond, Tensor) else cond)
        x1, nfe = sample(
            self.objective,
            self.model,
            cond_t.to(self.device, torch.float32),
            self.token_shape,
            solver=solver,
            steps=steps,
            start=start,
            generator=generator,
        )
        return self.normaliser.decode(x1), nfe


def _objective_kwargs(cfg: DiffusionConfig) -> dict[str, Any]:
    return {"prediction": cfg.prediction} if cfg.objective == "vp" else {}


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay towards 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class _Batches:
    """Epochs of seeded permutations, so every sample is seen once per epoch."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.b, self.gen = n, min(batch_size, n), generator
        self.perm = torch.randperm(n, generator=generator)
        self.pos = 0

    def next(self) -> Tensor:
        if self.pos + self.b > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.b]
        self.pos += self.b
        return idx


def fit_diffusion(
    store: PromptStore,
    params: dict[str, Any],
    *,
    seed: int,
    cls_loss: ClsLoss | None = None,
    device: str | torch.device = "cpu",
    resume: Resume | None = None,
) -> DiffusionModel:
    """Train a :class:`PromptDiT` to generate the store's prompts from image features.

    Loss = diffusion loss + ``cls_weight * cls_loss(decode(x1_hat), labels, features)``
    (the second term only when ``cls_weight > 0`` and ``cls_loss`` is given), the second on
    the first ``cls_batch`` rows of each (randomly ordered) batch: a textual method encodes
    every class name with every row's prompt, so this term dominates the cost (``cls_negatives``
    bounds the classes per row; see ``pdiff.sampled_softmax``).

    With ``resume``, the training state (network, EMA, optimiser, schedule, RNGs, batch order,
    step and history) is checkpointed every :data:`CHECKPOINT_EVERY` steps, and a run started
    again continues from the last checkpoint with the same result. The caller removes the
    resume file once the model is saved.
    """
    cfg = DiffusionConfig.from_dict(params).resolved()
    device = torch.device(device)
    n, (t_len, d) = store.num_samples, store.token_shape
    mask_np = store.token_mask
    token_mask = None if mask_np is None else torch.as_tensor(np.asarray(mask_np, dtype=bool))

    normaliser = TargetNormaliser.fit(
        store.prompts,
        store.init_prompt,
        target=cfg.target,
        normalise=cfg.normalise,
        token_mask=token_mask,
    )
    objective = get_objective(cfg.objective, token_mask=token_mask, **_objective_kwargs(cfg))
    # The network runs in float32 whatever precision the caller's arrays have.
    x_all = normaliser.encode(torch.as_tensor(store.prompts, dtype=torch.float32)).to(device)
    feats = torch.as_tensor(store.features, dtype=torch.float32).to(device)
    labels = torch.as_tensor(store.labels, dtype=torch.int64).to(device)

    # Weight init draws from the global RNG: fork it so the caller's RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PromptDiT(
            t_len, d, store.feature_dim,
            width=int(cfg.width), depth=int(cfg.depth), heads=int(cfg.heads),
            mlp_ratio=float(cfg.mlp_ratio),
        ).to(device)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(
        model.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay)
    )
    steps, warmup = int(cfg.steps), int(cfg.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup, steps))
    gen = torch.Generator().manual_seed(seed)
    batches = _Batches(n, int(cfg.batch_size), gen)
    cls_weight = float(cfg.cls_weight)
    cls_rows = slice(None) if cfg.cls_batch is None else slice(int(cfg.cls_batch))
    use_cls = cls_weight > 0 and cls_loss is not None
    if cls_weight > 0 and cls_loss is None:
        log.warning("cls_weight=%g but no classification loss given: training without it",
                    cls_weight)
    log.info(
        "fitting %s diffusion on %d prompts [%d x %d], %d params, %d steps",
        cfg.objective, n, t_len, d, sum(q.numel() for q in model.parameters()), steps,
    )

    history: list[tuple[int, float]] = []
    window: list[float] = []
    log_every = int(cfg.log_every)
    ema = float(cfg.ema)
    start = 0
    state = resume.load() if resume is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        ema_model.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        set_rng_state(state["rng"])
        batches.perm, batches.pos = state["perm"], int(state["pos"])
        start, window = int(state["step"]), list(state["window"])
        history = [(int(s), float(v)) for s, v in state["history"]]
        log.info("resuming diffusion training at step %d of %d", start, steps)
    every = int(CHECKPOINT_EVERY)
    model.train()
    bar = tqdm(range(start, steps), desc="fit-diffusion", initial=start, total=steps,
               disable=not sys.stderr.isatty())
    for step in bar:
        idx = batches.next().to(device)
        x1, cond = x_all[idx], feats[idx]
        per_sample, x1_hat = objective.loss(model, x1, cond, generator=gen)
        loss = per_sample.mean()
        if use_cls:
            assert cls_loss is not None
            rows = idx[cls_rows]
            loss = loss + cls_weight * cls_loss(
                normaliser.decode(x1_hat[cls_rows]), labels[rows], cond[cls_rows], gen
            )
        value = float(loss.detach())
        if not math.isfinite(value):
            raise PdiffError(
                f"diffusion loss became non-finite at step {step + 1}; lower diffusion.lr "
                "or check the prompt store for NaNs"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.grad_clip))
        opt.step()
        sched.step()
        decay = min(ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, q in zip(ema_model.parameters(), model.parameters(), strict=True):
                e.lerp_(q, 1.0 - decay)
        window.append(value)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append((step + 1, float(np.mean(window))))
            window = []
            bar.set_postfix(loss=f"{history[-1][1]:.4f}")
        if resume is not None and (step + 1) % every == 0 and step + 1 < steps:
            resume.save({
                "model": model.state_dict(), "ema": ema_model.state_dict(),
                "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
                "rng": rng_state(), "perm": batches.perm, "pos": batches.pos,
                "step": step + 1, "window": window, "history": [list(h) for h in history],
            })
    log.info("diffusion training done: final loss %.4f", history[-1][1])
    ema_model.eval()
    return DiffusionModel(ema_model, objective, normaliser, cfg.to_dict(), token_mask,
                          history)


# --------------------------------------------------------------------------- persistence


def save_diffusion(path: str | os.PathLike, dm: DiffusionModel) -> None:
    """Save as safetensors: EMA weights + normaliser tensors; JSON provenance as metadata."""
    tensors = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in dm.model.state_dict().items()
    }
    norm = dm.normaliser.state_dict()
    for key in ("offset", "mean", "std", "mask"):
        tensors[f"normaliser.{key}"] = norm[key].cpu().contiguous()
    if dm.token_mask is not None:
        tensors["token_mask"] = dm.token_mask.cpu().bool().contiguous()
    cfg = dm.model.config
    metadata = {
        "format": FORMAT,
        "pdiff_version": pdiff.__version__,
        "params": json.dumps(dm.params, sort_keys=True),
        "arch": json.dumps(cfg, sort_keys=True),
        "shapes": json.dumps(
            {"num_tokens": cfg["num_tokens"], "token_dim": cfg["token_dim"],
             "cond_dim": cfg["cond_dim"]}
        ),
        "objective": json.dumps({"name": dm.objective.name, "config": dm.objective.config()}),
        "normaliser": json.dumps({"target": norm["target"], "normalise": norm["normalise"]}),
        "history": json.dumps([[int(s), float(v)] for s, v in dm.history]),
    }
    save_safetensors(tensors, path, metadata=metadata)  # canonical header: equal runs, equal bytes
    log.info("saved diffusion model to %s", path)


def load_diffusion(path: str | os.PathLike, device: str | torch.device = "cpu") -> DiffusionModel:
    """Inverse of :func:`save_diffusion`."""
    path = Path(path)
    if not path.exists():
        raise PdiffError(
            f"diffusion model {path} not found; it is created by `pdiff fit-diffusion`"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PdiffError(
            f"cannot read diffusion model {path} ({exc}); rerun `pdiff fit-diffusion`"
        ) from exc
    if meta.get("format") != FORMAT:
        raise PdiffError(
            f"{path} is not a pdiff diffusion model of format {FORMAT} "
            f"(found {meta.get('format')!r}); rerun `pdiff fit-diffusion`"
        )
    arch = json.loads(meta["arch"])
    model = PromptDiT(**arch)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    model.to(device).requires_grad_(False).eval()
    norm_meta = json.loads(meta["normaliser"])
    normaliser = TargetNormaliser.from_state(
        {k: tensors[f"normaliser.{k}"].cpu() for k in ("offset", "mean", "std", "mask")}
        | norm_meta
    )
    token_mask = tensors["token_mask"].cpu().bool() if "token_mask" in tensors else None
    obj_meta = json.loads(meta["objective"])
    objective = get_objective(obj_meta["name"], token_mask=token_mask, **obj_meta["config"])
    history = [(int(s), float(v)) for s, v in json.loads(meta["history"])]
    return DiffusionModel(model, objective, normaliser, json.loads(meta["params"]),
                          token_mask, history)
