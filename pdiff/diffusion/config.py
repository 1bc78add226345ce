"""The `diffusion` section: the prompt DiT, its objective and its training (`pdiff fit-diffusion`).

Every default of the section lives here (config/README.md documents each key).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from pdiff.config import Config, positive
from pdiff.errors import PdiffError

#: Warm-up when the config gives none: this fraction of the steps, at most WARMUP_MAX steps.
WARMUP_FRACTION = 0.05
WARMUP_MAX = 200
#: Loss history points per run when the config gives no `log_every`.
HISTORY_POINTS = 100


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig(Config):
    SECTION: ClassVar[str] = "diffusion"

    steps: int
    objective: Literal["flow", "vp"] = "flow"
    target: Literal["residual", "absolute"] = "residual"
    normalise: Literal["scalar", "per_dim"] = "scalar"
    depth: int = 4
    width: int = 128
    heads: int = 4
    batch_size: int = 64
    # The demo's value: at 0.001 the DiTs of the 768-prompt transfer stores stayed undertrained
    # and their prompts fell to zero-shot accuracy (config/config.yaml).
    lr: float = 0.008
    weight_decay: float = 0.0
    ema: float = 0.999
    cls_weight: float = 0.0
    cls_batch: int | None = None  # None: every row of the batch
    cls_negatives: int | None = None  # None: every class
    holdout: float = 0.1  # read by the fit stage, not the trainer
    warmup: int | None = None  # None: WARMUP_FRACTION of the steps, at most WARMUP_MAX
    mlp_ratio: float = 4.0
    grad_clip: float = 1.0  # 0: no clipping
    prediction: Literal["v", "eps"] = "v"  # the vp objective's parametrisation
    log_every: int | None = None  # None: about HISTORY_POINTS points per run

    def __post_init__(self) -> None:
        positive(self.SECTION, steps=self.steps, batch_size=self.batch_size,
                 cls_batch=self.cls_batch, cls_negatives=self.cls_negatives,
                 log_every=self.log_every)
        if not 0.0 <= self.ema < 1.0:
            raise PdiffError(f"diffusion.ema must be in [0, 1), got {self.ema}")
        if not 0.0 <= self.holdout <= 0.5:
            raise PdiffError(f"diffusion.holdout must be in [0, 0.5], got {self.holdout}")

    def resolved(self) -> DiffusionConfig:
        """The config with the step-dependent defaults (warmup, log_every) filled in."""
        steps = int(self.steps)
        return replace(
            self,
            warmup=(min(WARMUP_MAX, max(1, round(WARMUP_FRACTION * steps)))
                    if self.warmup is None else self.warmup),
            log_every=max(1, steps // HISTORY_POINTS) if self.log_every is None else self.log_every,
        )
