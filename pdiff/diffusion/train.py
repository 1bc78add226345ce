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
REQUIRED_PARAMS = (
    "objective", "target", "normalise", "depth", "width", "heads", "steps",
    "batch_size", "lr", "weight_decay", "ema", "cls_weight",
)
#: Optional keys and their defaults (``warmup=None``: 5% of the steps, at most 200).
OPTIONAL_PARAMS: dict[str, Any] = {
    "warmup": None,
    "mlp_ratio": 4.0,
    "grad_clip": 1.0,
    "prediction": "v",  # vp objective only: "v" or "eps"
    "log_every": None,  # history resolution; None: about 100 points per run
    "holdout": 0.0,  # fraction of the store kept out of training (read by the fit stage)
    "cls_batch": None,  # rows of each batch in the classification term; None: all of them
    "cls_negatives": None,  # classes sampled per row besides its own (read by the cls loss)
}

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


def _resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in REQUIRED_PARAMS if k not in params]
    if missing:
        raise PdiffError(
            f"diffusion parameters lack {missing}; set them under `diffusion:` in the config"
        )
    unknown = sorted(set(params) - set(REQUIRED_PARAMS) - set(OPTIONAL_PARAMS))
    if unknown:
        log.warning("ignoring unknown diffusion parameters %s", unknown)
    out = {k: params[k] for k in REQUIRED_PARAMS}
    for key, default in OPTIONAL_PARAMS.items():
        out[key] = params.get(key, default)
    if int(out["steps"]) < 1 or int(out["batch_size"]) < 1:
        raise PdiffError("diffusion steps and batch_size must be positive integers")
    for key in ("cls_batch", "cls_negatives"):
        if out[key] is not None and int(out[key]) < 1:
            raise PdiffError(f"diffusion {key} must be a positive integer, got {out[key]}")
    if not 0.0 <= float(out["ema"]) < 1.0:
        raise PdiffError(f"diffusion ema must be in [0, 1), got {out['ema']}")
    if out["warmup"] is None:
        out["warmup"] = min(200, max(1, round(0.05 * int(out["steps"]))))
    if out["log_every"] is None:
        out["log_every"] = max(1, int(out["steps"]) // 100)
    return out


def _objective_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    return {"prediction": p["prediction"]} if p["objective"] == "vp" else {}


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
    p = _resolve_params(params)
    device = torch.device(device)
    n, (t_len, d) = store.num_samples, store.token_shape
    mask_np = store.token_mask
    token_mask = None if mask_np is None else torch.as_tensor(np.asarray(mask_np, dtype=bool))

    normaliser = TargetNormaliser.fit(
        store.prompts,
        store.init_prompt,
        target=p["target"],
        normalise=p["normalise"],
        token_mask=token_mask,
    )
    objective = get_objective(p["objective"], token_mask=token_mask, **_objective_kwargs(p))
    # The network runs in float32 whatever precision the caller's arrays have.
    x_all = normaliser.encode(torch.as_tensor(store.prompts, dtype=torch.float32)).to(device)
    feats = torch.as_tensor(store.features, dtype=torch.float32).to(device)
    labels = torch.as_tensor(store.labels, dtype=torch.int64).to(device)

    # Weight init draws from the global RNG: fork it so the caller's RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PromptDiT(
            t_len, d, store.feature_dim,
            width=int(p["width"]), depth=int(p["depth"]), heads=int(p["heads"]),
            mlp_ratio=float(p["mlp_ratio"]),
        ).to(device)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(
        model.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"])
    )
    steps, warmup = int(p["steps"]), int(p["warmup"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup, steps))
    gen = torch.Generator().manual_seed(seed)
    batches = _Batches(n, int(p["batch_size"]), gen)
    cls_weight = float(p["cls_weight"])
    cls_rows = slice(None) if p["cls_batch"] is None else slice(int(p["cls_batch"]))
    use_cls = cls_weight > 0 and cls_loss is not None
    if cls_weight > 0 and cls_loss is None:
        log.warning("cls_weight=%g but no classification loss given: training without it",
                    cls_weight)
    log.info(
        "fitting %s diffusion on %d prompts [%d x %d], %d params, %d steps",
        p["objective"], n, t_len, d, sum(q.numel() for q in model.parameters()), steps,
    )

    history: list[tuple[int, float]] = []
    window: list[float] = []
    log_every = int(p["log_every"])
    ema = float(p["ema"])
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
        if p["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(p["grad_clip"]))
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
    return DiffusionModel(ema_model, objective, normaliser, p, token_mask, history)


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
