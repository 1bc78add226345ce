"""The one interface every host prompt-learning method implements.

Baseline training broadcasts the learned prompt to the batch, overfitting optimises B independent
prompts, evaluation feeds generated prompts: all three call the same `logits`. Prompts always carry
a leading batch dimension P, with P == 1 (one shared prompt) or P == B (one prompt per sample).
Nothing outside `pdiff/methods/` knows which method it is talking to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pdiff.backbone import Backbone
from pdiff.methods.packing import PromptLayout

Prompts = dict[str, torch.Tensor]


@dataclass
class Inputs:
    """A batch as methods see it: cached frozen features and/or raw images.

    Textual methods only need the frozen image features (computed once per stage, a fast path);
    methods whose prompts enter the image encoder need the images.
    """

    features: torch.Tensor | None = None  # [B, E] frozen, L2-normalised
    images: torch.Tensor | None = None  # [B, 3, H, W] in [0, 1]

    def __len__(self) -> int:
        x = self.features if self.features is not None else self.images
        return 0 if x is None else x.shape[0]

    def __getitem__(self, idx) -> Inputs:
        return Inputs(
            None if self.features is None else self.features[idx],
            None if self.images is None else self.images[idx],
        )

    def to(self, device: torch.device) -> Inputs:
        return Inputs(
            None if self.features is None else self.features.to(device),
            None if self.images is None else self.images.to(device),
        )


class PromptMethod(nn.Module):
    """Base class: a frozen backbone plus learnable prompt tensors and shared parameters."""

    name: ClassVar[str]
    needs_images: ClassVar[bool] = False  # True when prompts enter the image encoder

    def __init__(self, backbone: Backbone, classnames: list[str], template: str, params: dict):
        super().__init__()
        # A plain attribute, not a submodule: the backbone is frozen and never checkpointed.
        object.__setattr__(self, "backbone", backbone)
        self.template, self.params = template, params
        self.prompt = nn.ParameterDict()  # the learned prompt (per-sample shapes, no batch dim)
        self.set_classnames(classnames)

    # --- what subclasses provide -------------------------------------------------------------
    def set_classnames(self, classnames: list[str]) -> None:
        """Rebuild class-dependent tables (e.g. for evaluation on new classes)."""
        self.classnames = list(classnames)

    def logits(self, inputs: Inputs, prompts: Prompts | None) -> torch.Tensor:
        """Logits [B, C] for the current class names; `prompts` None means the learned prompt."""
        raise NotImplementedError

    # --- shared behaviour -------------------------------------------------------------------
    @property
    def layout(self) -> PromptLayout:
        return PromptLayout.from_spec({k: tuple(v.shape) for k, v in self.prompt.items()})

    def init_prompt(self) -> Prompts:
        """The learned prompt with a batch dim of 1: the starting point of overfitting."""
        return {k: v.detach()[None].clone() for k, v in self.prompt.items()}

    def learned_prompts(self) -> Prompts:
        return {k: v[None] for k, v in self.prompt.items()}

    def condition(self, inputs: Inputs) -> torch.Tensor:
        """The frozen CLIP image feature that conditions prompt diffusion."""
        if inputs.features is not None:
            return inputs.features
        return self.backbone.encode_images(inputs.images)

    def loss(self, inputs: Inputs, labels: torch.Tensor, prompts: Prompts | None = None
             ) -> torch.Tensor:
        """Training loss of baseline prompt learning (methods add their regularisers)."""
        return F.cross_entropy(self.logits(inputs, prompts), labels)

    def per_sample_loss(self, inputs: Inputs, labels: torch.Tensor, prompts: Prompts
                        ) -> torch.Tensor:
        """Cross-entropy of each sample under its own prompt, [B]: the overfitting objective."""
        return F.cross_entropy(self.logits(inputs, prompts), labels, reduction="none")

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """Everything training changed: prompt and shared parameters (never the backbone)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
