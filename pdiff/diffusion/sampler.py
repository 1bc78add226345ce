"""Few-step ODE sampling of prompts with torchdiffeq.

Fixed-grid solvers (``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4``,
``explicit_adams``, ``implicit_adams``) step on the uniform grid
``torch.linspace(0, 1, steps + 1)``, so the cost is known in advance (NFE = steps x
stages; ``implicit_adams`` adds corrector iterations). Adaptive solvers (``dopri5``,
``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``) are accepted too: they integrate
from 0 to 1 to the tolerances ``rtol``/``atol`` and ``steps`` is ignored. Every call
reports the number of function (network) evaluations it actually made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from pdiff.config import Config, positive
from pdiff.diffusion.objective import Objective
from pdiff.errors import PdiffError

log = logging.getLogger("pdiff.diffusion.sampler")

FIXED_SOLVERS = (
    "euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams",
)
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
SOLVERS = FIXED_SOLVERS + ADAPTIVE_SOLVERS
Start = Literal["zero", "noise"]
STARTS: tuple[str, ...] = get_args(Start)

#: ``field(t: scalar Tensor, x: Tensor) -> dx/dt``, torchdiffeq's calling convention.
Field = Callable[[Tensor, Tensor], Tensor]


class _CountingField:
    """Wraps a field and counts how often the solver calls it (the NFE)."""

    def __init__(self, field: Field) -> None:
        self.field = field
        self.nfe = 0

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return self.field(t, x)


def check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise PdiffError(
            f"unknown ODE solver {solver!r}; valid: fixed-grid {', '.join(FIXED_SOLVERS)}; "
            f"adaptive {', '.join(ADAPTIVE_SOLVERS)}"
        )


@dataclass(frozen=True, kw_only=True)
class SamplingConfig(Config):
    """The `sampling` section: how evaluation draws each image's prompt (every default of the
    section lives here)."""

    SECTION: ClassVar[str] = "sampling"

    steps: int
    solver: str = "euler"
    start: Start = "zero"  # zero: the prior's zero point (deterministic); noise: a Gaussian draw
    draws: int = 1  # draws per image, their probabilities averaged

    def __post_init__(self) -> None:
        check_solver(self.solver)
        positive(self.SECTION, steps=self.steps, draws=self.draws)


def integrate(
    field: Field,
    x0: Tensor,
    steps: int,
    solver: str = "euler",
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[Tensor, int]:
    """Integrate ``dx/dt = field(t, x)`` from ``t = 0`` to ``t = 1``; return ``(x(1), nfe)``.

    ``steps`` sets the fixed grid; adaptive solvers ignore it and use ``rtol``/``atol``.
    """
    # Imported here: torchdiffeq loads scipy.integrate (half a second), which the jobs that
    # never sample (baseline and zero-shot evaluation, most DiT training) need not pay for.
    from torchdiffeq import odeint

    check_solver(solver)
    # Time runs in at least float32 even for lower-precision states.
    t_dtype = x0.dtype if x0.dtype in (torch.float32, torch.float64) else torch.float32
    counted = _CountingField(field)
    if solver in FIXED_SOLVERS:
        if int(steps) != steps or steps < 1:
            raise PdiffError(f"sampling steps must be a positive integer, got {steps!r}")
        grid = torch.linspace(0.0, 1.0, int(steps) + 1, dtype=t_dtype, device=x0.device)
        traj = odeint(counted, x0, grid, method=solver)
    else:
        grid = torch.tensor([0.0, 1.0], dtype=t_dtype, device=x0.device)
        traj = odeint(counted, x0, grid, method=solver, rtol=rtol, atol=atol)
    return traj[-1], counted.nfe


def sample(
    objective: Objective,
    model: nn.Module,
    cond: Tensor,
    shape: tuple[int, int],
    *,
    solver: str = "euler",
    steps: int = 5,
    start: str = "zero",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[Tensor, int]:
    """Generate ``x1 [B, T, D]`` (normalised space) for ``cond [B, F]``; return ``(x1, nfe)``.

    ``start="noise"`` draws ``x0 ~ N(0, I)`` with ``generator``: the paper's sampling
    (random Gaussian prompts, five ODE steps). ``start="zero"`` starts from the noise mean
    instead, deterministic: pdiff's own default, not the paper's.
    """
    check_solver(solver)
    if start not in STARTS:
        raise PdiffError(f"unknown sampling start {start!r}; valid: {', '.join(STARTS)}")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else cond.device
    dtype = param.dtype if param is not None else torch.float32
    cond = cond.to(device=device, dtype=dtype)
    b = cond.shape[0]
    like = torch.empty((b, *shape), device=device, dtype=dtype)
    x0 = torch.zeros_like(like) if start == "zero" else objective.sample_noise(like, generator)

    def field(t: Tensor, x: Tensor) -> Tensor:
        return objective.velocity(model, x, t.expand(b).to(dtype), cond)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x1, nfe = integrate(field, x0, steps, solver, rtol=rtol, atol=atol)
    finally:
        model.train(was_training)
    log.debug("sampled %d prompts with %s (%d NFE)", b, solver, nfe)
    return objective.apply_mask(x1), nfe
