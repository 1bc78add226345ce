"""Zero-shot CLIP: the hand-crafted template of the dataset, no prompt to learn or diffuse."""

from __future__ import annotations

import torch

from pdiff.methods.base import Inputs, PromptMethod, Prompts
from pdiff.methods.text import template_features


class ZeroShot(PromptMethod):
    name = "zeroshot"

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        feats = template_features(self.backbone, classnames, [self.template])
        self.register_buffer("text", feats, persistent=False)

    def features(self, inputs: Inputs, prompts: Prompts, classes: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.condition(inputs), self.text[None] if classes is None else self.text[classes]
