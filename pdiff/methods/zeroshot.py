"""Zero-shot CLIP: the hand-crafted template of the dataset, no prompt to learn or diffuse."""

from __future__ import annotations

import torch

from pdiff.data.templates import format_prompt
from pdiff.methods.base import Inputs, PromptMethod, Prompts


class ZeroShot(PromptMethod):
    name = "zeroshot"

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        texts = [format_prompt(self.template, c) for c in classnames]
        self.register_buffer("text", self.backbone.encode_texts(texts), persistent=False)

    def logits(self, inputs: Inputs, prompts: Prompts | None) -> torch.Tensor:
        return self.backbone.logit_scale * self.condition(inputs) @ self.text.T
