"""Map stored prompts to the diffusion model's target space and back.

Overfitted prompts sit close to the host prompt and their entries have tiny spread, so
the DiT is trained on a standardised target:

* ``target="residual"``: ``prompt - init_prompt`` (what overfitting changed), or
  ``target="absolute"``: the prompt itself;
* ``normalise="scalar"``: one mean and one std over all real entries (keeps the
  relative scale of entries), or ``normalise="per_dim"``: a mean/std per ``(T, D)``
  entry, the std floored at ``max(eps, 1e-3 * overall std)`` so constant entries (or a
  one-sample store) do not divide by zero.

Padded entries (``token_mask`` False) are 0 on both sides: ``encode`` and ``decode``
force them to exactly 0, so ``decode(encode(p)) == p`` up to float error everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from pdiff.errors import PdiffError

TARGETS = ("residual", "absolute")
NORMALISE = ("scalar", "per_dim")
_TENSORS = ("offset", "mean", "std", "mask")
STATS_ROWS = 4096  # rows per block of the statistics pass


def _as_tensor(x: Tensor | np.ndarray) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


class TargetNormaliser:
    """Affine, per-entry map ``x = (p - offset - mean) / std`` restricted to real entries."""

    def __init__(
        self,
        offset: Tensor,
        mean: Tensor,
        std: Tensor,
        mask: Tensor,
        target: str,
        normalise: str,
    ) -> None:
        if target not in TARGETS:
            raise PdiffError(f"unknown diffusion target {target!r}; valid: {', '.join(TARGETS)}")
        if normalise not in NORMALISE:
            raise PdiffError(
                f"unknown diffusion normalise {normalise!r}; valid: {', '.join(NORMALISE)}"
            )
        self.offset = offset.float()
        self.mean = mean.float()
        self.std = std.float()
        self.mask = mask.bool()
        self.target = target
        self.normalise = normalise

    @classmethod
    def fit(
        cls,
        prompts: Tensor | np.ndarray | Any,
        init_prompt: Tensor | np.ndarray,
        *,
        target: str = "residual",
        normalise: str = "scalar",
        token_mask: Tensor | np.ndarray | None = None,
        eps: float = 1e-6,
    ) -> TargetNormaliser:
        """Fit statistics on ``prompts [N, T, D]`` (real entries only): an array, a tensor or
        anything sliced by rows (an h5py dataset), read in blocks of rows."""
        if target not in TARGETS:
            raise PdiffError(f"unknown diffusion target {target!r}; valid: {', '.join(TARGETS)}")
        if normalise not in NORMALISE:
            raise PdiffError(
                f"unknown diffusion normalise {normalise!r}; valid: {', '.join(NORMALISE)}"
            )
        # Statistics in float64 (residuals are small and N*T*D sums can be long), in two
        # streaming passes over blocks of rows: no float64 copy of the whole store.
        init = _as_tensor(init_prompt).double().cpu()
        if len(prompts.shape) != 3 or tuple(init.shape) != tuple(prompts.shape[1:]):
            raise PdiffError(
                f"prompts {tuple(prompts.shape)} and init_prompt {tuple(init.shape)} do not "
                "match [N, T, D] / [T, D]"
            )
        mask = (
            torch.ones(init.shape, dtype=torch.bool)
            if token_mask is None
            else _as_tensor(token_mask).bool().cpu()
        )
        if not mask.any():
            raise PdiffError("token_mask marks no real entries; cannot fit the normaliser")
        offset = init if target == "residual" else torch.zeros_like(init)
        offset = torch.where(mask, offset, torch.zeros_like(offset))

        def blocks():
            for i in range(0, len(prompts), STATS_ROWS):
                yield _as_tensor(prompts[i : i + STATS_ROWS]).double().cpu() - offset

        n = len(prompts)
        entry_mean = sum(r.sum(0) for r in blocks()) / n  # [T, D]
        entry_var = sum(((r - entry_mean) ** 2).sum(0) for r in blocks()) / n
        # the overall moments of the real entries, from the per-entry ones
        real_mean = entry_mean[mask].mean()
        overall_std = float(
            (entry_var[mask] + (entry_mean[mask] - real_mean) ** 2).mean().sqrt()
        )
        if normalise == "scalar":
            mean = torch.full(init.shape, float(real_mean), dtype=torch.float64)
            std = torch.full(init.shape, max(overall_std, eps), dtype=torch.float64)
        else:
            mean = entry_mean
            floor = max(eps, 1e-3 * overall_std)
            std = entry_var.sqrt().clamp_min(floor)
        # Padded entries: identity statistics, so the affine map is harmless there.
        mean = torch.where(mask, mean, torch.zeros_like(mean))
        std = torch.where(mask, std, torch.ones_like(std))
        return cls(offset, mean, std, mask, target, normalise)

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        kw: dict[str, Any] = {"device": like.device, "dtype": like.dtype}
        return (
            self.offset.to(**kw),
            self.mean.to(**kw),
            self.std.to(**kw),
            self.mask.to(like.device),
        )

    def encode(self, prompts: Tensor | np.ndarray) -> Tensor:
        """Prompts ``[..., T, D]`` -> normalised targets (padded entries exactly 0)."""
        p = _as_tensor(prompts)
        if not p.is_floating_point():
            p = p.float()
        offset, mean, std, mask = self._stats(p)
        x = (p - offset - mean) / std
        return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def decode(self, x: Tensor | np.ndarray) -> Tensor:
        """Inverse of :meth:`encode`; differentiable, padded entries exactly 0."""
        x = _as_tensor(x)
        if not x.is_floating_point():
            x = x.float()
        offset, mean, std, mask = self._stats(x)
        p = x * std + mean + offset
        return torch.where(mask, p, torch.zeros((), dtype=p.dtype, device=p.device))

    def state_dict(self) -> dict[str, Any]:
        """Tensors (``offset``, ``mean``, ``std``, ``mask``) and strings (``target``,
        ``normalise``)."""
        return {
            "offset": self.offset.clone(),
            "mean": self.mean.clone(),
            "std": self.std.clone(),
            "mask": self.mask.clone(),
            "target": self.target,
            "normalise": self.normalise,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TargetNormaliser:
        missing = [k for k in (*_TENSORS, "target", "normalise") if k not in state]
        if missing:
            raise PdiffError(f"normaliser state lacks {missing}; refit the diffusion model")
        return cls(
            _as_tensor(state["offset"]),
            _as_tensor(state["mean"]),
            _as_tensor(state["std"]),
            _as_tensor(state["mask"]),
            str(state["target"]),
            str(state["normalise"]),
        )
