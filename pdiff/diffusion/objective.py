"""Training objectives and their sampling ODEs, under one time convention.

Convention for every objective: ``t = 0`` is noise and ``t = 1`` is data. Each objective
defines the velocity of an ODE ``dx/dt = velocity(model, x, t, cond)`` that carries
N(0, I) (or its mean, zeros) at ``t = 0`` to the data distribution at ``t = 1``, so the
sampler is the same for all of them.

``loss`` returns the per-sample loss and the model's clean-data estimate ``x1_hat``;
the latter stays differentiable so that a classification loss on the decoded prompt can
be added upstream.

Padded entries (``token_mask`` False) are held at exactly zero: the noise, the
velocity and ``x1_hat`` are all masked, and losses average over real entries only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from pdiff.errors import PdiffError

#: Anything called as ``model(x [B,T,D], t [B], cond [B,F]) -> [B,T,D]``.
Model = Callable[[Tensor, Tensor, Tensor], Tensor]


class Objective:
    """Base class: mask handling, random draws and the interface."""

    name: ClassVar[str] = ""

    def __init__(self, token_mask: Tensor | np.ndarray | None = None) -> None:
        self.token_mask: Tensor | None = (
            None if token_mask is None else torch.as_tensor(np.asarray(token_mask), dtype=bool)
        )

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments other than the mask (for saving)."""
        return {}

    # -- helpers -------------------------------------------------------------------

    def apply_mask(self, x: Tensor) -> Tensor:
        """Zero the padded entries (``where`` rather than ``*`` so NaN cannot leak)."""
        if self.token_mask is None:
            return x
        mask = self.token_mask.to(x.device)
        return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def reduce(self, err: Tensor) -> Tensor:
        """Mean of ``err [B, T, D]`` over the real entries -> ``[B]``."""
        if self.token_mask is None:
            return err.flatten(1).mean(dim=1)
        mask = self.token_mask.to(device=err.device, dtype=err.dtype)
        return (err * mask).flatten(1).sum(dim=1) / mask.sum().clamp_min(1.0)

    @staticmethod
    def _draw_device(like: Tensor, generator: torch.Generator | None) -> torch.device:
        # A generator can only fill tensors on its own device.
        return generator.device if generator is not None else like.device

    def sample_time(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training times ``t [B]`` ~ U(0, 1)."""
        dev = self._draw_device(like, generator)
        t = torch.rand(like.shape[0], generator=generator, device=dev, dtype=like.dtype)
        return t.to(like.device)

    def sample_noise(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Masked standard normal noise shaped like ``like``."""
        dev = self._draw_device(like, generator)
        eps = torch.randn(like.shape, generator=generator, device=dev, dtype=like.dtype)
        return self.apply_mask(eps.to(like.device))

    # -- interface -----------------------------------------------------------------

    def loss(
        self,
        model: Model,
        x1: Tensor,
        cond: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-sample loss ``[B]`` and the clean-data estimate ``x1_hat [B, T, D]``."""
        raise NotImplementedError

    def velocity(self, model: Model, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """``dx/dt`` of the sampling ODE at ``(x [B,T,D], t [B])``."""
        raise NotImplementedError


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    """``t [B]`` -> ``[B, 1, 1]`` for broadcasting against ``[B, T, D]``."""
    return t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class FlowMatching(Objective):
    """Rectified flow: ``x_t = (1 - t) x0 + t x1``; the model predicts ``v = x1 - x0``.

    The clean estimate is ``x1_hat = x_t + (1 - t) v_hat``; no division appears anywhere,
    so no clamping of ``t`` is needed.
    """

    name = "flow"

    def loss(
        self,
        model: Model,
        x1: Tensor,
        cond: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        x1 = self.apply_mask(x1)
        x0 = self.sample_noise(x1, generator)
        t = self.sample_time(x1, generator)
        tb = _bcast(t, x1)
        xt = (1 - tb) * x0 + tb * x1
        v_hat = self.apply_mask(model(xt, t, cond))
        per_sample = self.reduce((v_hat - (x1 - x0)) ** 2)
        x1_hat = xt + (1 - tb) * v_hat
        return per_sample, x1_hat

    def velocity(self, model: Model, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.apply_mask(model(x, t, cond))


class VPDiffusion(Objective):
    """Variance-preserving diffusion with the cosine (trigonometric) schedule.

    ``x_t = a(t) x1 + s(t) eps`` with ``a = sin(pi t / 2)``, ``s = cos(pi t / 2)``, so
    ``a^2 + s^2 = 1``, ``t = 0`` is pure noise and ``t = 1`` is data.

    Parametrisations (``prediction``):

    * ``"v"`` (default): the model predicts ``v = s(t) x1 - a(t) eps``. Then
      ``dx_t/dt = (pi / 2) v`` along each path, so the probability-flow ODE velocity is
      ``(pi / 2) v_hat`` and ``x1_hat = a x_t + s v_hat``: no divisions at all, the
      loss on ``v`` has the same scale for every ``t``.
    * ``"eps"``: the model predicts ``eps``; ``x1_hat = (x_t - s eps_hat) / a`` and the
      velocity is ``(pi / 2) (s x1_hat - a eps_hat)``. The division by ``a`` blows up
      near ``t = 0``, so ``t`` is clamped to ``>= t_min`` there.
    """

    name = "vp"
    PREDICTIONS = ("v", "eps")

    def __init__(
        self,
        token_mask: Tensor | np.ndarray | None = None,
        prediction: str = "v",
        t_min: float = 1e-3,
    ) -> None:
        super().__init__(token_mask)
        if prediction not in self.PREDICTIONS:
            raise PdiffError(
                f"unknown vp prediction {prediction!r}; valid: {', '.join(self.PREDICTIONS)}"
            )
        self.prediction = prediction
        self.t_min = float(t_min)

    def config(self) -> dict[str, Any]:
        return {"prediction": self.prediction, "t_min": self.t_min}

    @staticmethod
    def schedule(t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a(t), s(t)) = (sin(pi t / 2), cos(pi t / 2))``."""
        phi = 0.5 * math.pi * t
        return torch.sin(phi), torch.cos(phi)

    def _clean_and_eps(self, out: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Model output -> ``(x1_hat, eps_hat)`` for the chosen parametrisation."""
        if self.prediction == "v":
            a, s = self.schedule(_bcast(t, x))
            return a * x + s * out, s * x - a * out
        a, s = self.schedule(_bcast(t.clamp(min=self.t_min), x))
        return (x - s * out) / a, out

    def loss(
        self,
        model: Model,
        x1: Tensor,
        cond: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        x1 = self.apply_mask(x1)
        eps = self.sample_noise(x1, generator)
        t = self.sample_time(x1, generator)
        a, s = self.schedule(_bcast(t, x1))
        xt = a * x1 + s * eps
        out = self.apply_mask(model(xt, t, cond))
        target = s * x1 - a * eps if self.prediction == "v" else eps
        per_sample = self.reduce((out - target) ** 2)
        x1_hat, _ = self._clean_and_eps(out, xt, t)
        return per_sample, self.apply_mask(x1_hat)

    def velocity(self, model: Model, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        out = self.apply_mask(model(x, t, cond))
        if self.prediction == "v":
            return 0.5 * math.pi * out
        x1_hat, eps_hat = self._clean_and_eps(out, x, t)
        a, s = self.schedule(_bcast(t.clamp(min=self.t_min), x))
        return self.apply_mask(0.5 * math.pi * (s * x1_hat - a * eps_hat))


OBJECTIVES: dict[str, type[Objective]] = {"flow": FlowMatching, "vp": VPDiffusion}


def get_objective(name: str, **kwargs: Any) -> Objective:
    """Build an objective by name (``"flow"`` or ``"vp"``); kwargs go to its constructor."""
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise PdiffError(
            f"unknown diffusion objective {name!r}; valid names: {', '.join(sorted(OBJECTIVES))}"
        ) from None
    return cls(**kwargs)
