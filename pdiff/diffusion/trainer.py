"""Train the prompt DiT on a prompt store, and save/load the result: the method-agnostic loop.
The `pdiff fit-diffusion` stage around it (the store, the host method's classification term,
the diagnostics) is :mod:`pdiff.fit_dit`; the host prompt's training is :mod:`pdiff.host_prompt`.

``fit_diffusion`` is deterministic for a given seed (on a given device and thread
setup): the weights are initialised under a forked RNG seeded with ``seed`` and every
minibatch, time and noise draw comes from one seeded ``torch.Generator``.

Optimisation: AdamW, linear warm-up then cosine decay to zero, gradient clipping, and
an exponential moving average (EMA) of the weights, which is the model used for
sampling. The EMA decay is warmed up as ``min(ema, (1 + k) / (10 + k))`` at step ``k``
so that short runs are not dominated by the zero-initialised starting weights.

:class:`TrainState` holds one run and its steps (build, resume, step, EMA update,
checkpoint), the way DiT's reference trainer reads; ``fit_diffusion`` is its loop.
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

log = logging.getLogger(__name__)

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


class TrainState:
    """One DiT training run: the network, its EMA, optimiser, schedule, batch order and RNG,
    the step count and the loss history, with the steps that advance them.

    Built from the store and the (resolved) config, in the order every seeded draw depends on:
    weights under a forked global RNG seeded with ``seed``, then one ``torch.Generator`` seeded
    with ``seed`` for the batch order, times and noise.
    """

    def __init__(self, store: PromptStore, cfg: DiffusionConfig, *, seed: int,
                 cls_loss: ClsLoss | None, device: torch.device) -> None:
        self.cfg = cfg
        mask = store.token_mask
        self.token_mask = None if mask is None else torch.as_tensor(np.asarray(mask, dtype=bool))
        self.normaliser = TargetNormaliser.fit(
            store.prompts, store.init_prompt, target=cfg.target, normalise=cfg.normalise,
            token_mask=self.token_mask,
        )
        self.objective = get_objective(cfg.objective, token_mask=self.token_mask,
                                       **_objective_kwargs(cfg))
        # The network runs in float32 whatever precision the caller's arrays have.
        prompts = torch.as_tensor(store.prompts, dtype=torch.float32)
        self.x = self.normaliser.encode(prompts).to(device)
        self.cond = torch.as_tensor(store.features, dtype=torch.float32).to(device)
        self.labels = torch.as_tensor(store.labels, dtype=torch.int64).to(device)

        # Weight init draws from the global RNG: fork it so the caller's RNG state is untouched.
        t_len, d = store.token_shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = PromptDiT(
                t_len, d, store.feature_dim,
                width=int(cfg.width), depth=int(cfg.depth), heads=int(cfg.heads),
                mlp_ratio=float(cfg.mlp_ratio),
            ).to(device)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay)
        )
        steps, warmup = int(cfg.steps), int(cfg.warmup)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: _lr_factor(s, warmup, steps)
        )
        self.gen = torch.Generator().manual_seed(seed)
        self.batches = _Batches(store.num_samples, int(cfg.batch_size), self.gen)

        cls_weight = float(cfg.cls_weight)
        if cls_weight > 0 and cls_loss is None:
            log.warning("cls_weight=%g but no classification loss given: training without it",
                        cls_weight)
        self.cls_loss = cls_loss if cls_weight > 0 else None
        self.cls_rows = slice(None) if cfg.cls_batch is None else slice(int(cfg.cls_batch))

        self.step = 0  # steps done
        self.window: list[float] = []  # losses since the last history point
        self.history: list[tuple[int, float]] = []  # (step, mean loss) points

    # -- resuming ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the next steps depend on, for a resume checkpoint."""
        return {
            "model": self.model.state_dict(), "ema": self.ema_model.state_dict(),
            "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "gen": self.gen.get_state(), "rng": rng_state(), "perm": self.batches.perm,
            "pos": self.batches.pos, "step": self.step, "window": self.window,
            "history": [list(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema_model.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        set_rng_state(state["rng"])
        self.batches.perm, self.batches.pos = state["perm"], int(state["pos"])
        self.step, self.window = int(state["step"]), list(state["window"])
        self.history = [(int(s), float(v)) for s, v in state["history"]]

    # -- training ------------------------------------------------------------------

    def loss(self) -> Tensor:
        """The next batch's loss: diffusion loss, plus the classification term if any."""
        idx = self.batches.next().to(self.x.device)
        x1, cond = self.x[idx], self.cond[idx]
        per_sample, x1_hat = self.objective.loss(self.model, x1, cond, generator=self.gen)
        loss = per_sample.mean()
        if self.cls_loss is not None:
            rows = self.cls_rows
            loss = loss + float(self.cfg.cls_weight) * self.cls_loss(
                self.normaliser.decode(x1_hat[rows]), self.labels[idx[rows]], cond[rows],
                self.gen,
            )
        return loss

    def train_step(self) -> float:
        """One optimiser step (clipped gradients, scheduled lr); returns the step's loss."""
        loss = self.loss()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise PdiffError(
                f"diffusion loss became non-finite at step {self.step + 1}; lower diffusion.lr "
                "or check the prompt store for NaNs"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.cfg.grad_clip))
        self.opt.step()
        self.sched.step()
        return value

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the EMA towards the weights; the decay is warmed up over the first steps."""
        decay = min(float(self.cfg.ema), (1 + self.step) / (10 + self.step))
        for e, q in zip(self.ema_model.parameters(), self.model.parameters(), strict=True):
            e.lerp_(q, 1.0 - decay)

    def record(self, value: float) -> bool:
        """Count the step done and log its loss; True when a history point was added."""
        self.step += 1
        self.window.append(value)
        if self.step % int(self.cfg.log_every) and self.step != int(self.cfg.steps):
            return False
        self.history.append((self.step, float(np.mean(self.window))))
        self.window = []
        return True

    def result(self) -> DiffusionModel:
        self.ema_model.eval()
        return DiffusionModel(self.ema_model, self.objective, self.normaliser, self.cfg.to_dict(),
                              self.token_mask, self.history)


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
    run = TrainState(store, cfg, seed=seed, cls_loss=cls_loss, device=torch.device(device))
    steps = int(cfg.steps)
    log.info(
        "fitting %s diffusion on %d prompts [%d x %d], %d params, %d steps",
        cfg.objective, store.num_samples, *store.token_shape,
        sum(q.numel() for q in run.model.parameters()), steps,
    )
    saved = resume.load() if resume is not None else None
    if saved is not None:
        run.load_state_dict(saved)
        log.info("resuming diffusion training at step %d of %d", run.step, steps)
    every = int(CHECKPOINT_EVERY)
    run.model.train()
    bar = tqdm(range(run.step, steps), desc="fit-diffusion", initial=run.step, total=steps,
               disable=not sys.stderr.isatty())
    for _ in bar:
        value = run.train_step()
        run.update_ema()
        if run.record(value):
            bar.set_postfix(loss=f"{run.history[-1][1]:.4f}")
        if resume is not None and run.step % every == 0 and run.step < steps:
            resume.save(run.state_dict())
    log.info("diffusion training done: final loss %.4f", run.history[-1][1])
    return run.result()


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
