"""CoOp (Zhou et al., IJCV 2022): learnable context vectors in front of every class name.

The prompt is M context tokens; the image side is the frozen encoder, so training and per-sample
prompts only ever touch the text tower (image features are cached once per stage).
"""

from __future__ import annotations

import torch
from torch import nn

from pdiff.backbone import Backbone
from pdiff.methods.base import Inputs, PromptMethod, Prompts
from pdiff.methods.text import ClassTexts, init_context, init_phrase


class CoOp(PromptMethod):
    name = "coop"

    def __init__(self, backbone: Backbone, classnames: list[str], template: str, params: dict):
        ctx = init_context(backbone, params)
        self.n_ctx = ctx.shape[0]
        super().__init__(backbone, classnames, template, params)
        self.prompt["ctx"] = nn.Parameter(ctx.to(backbone.device))

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self.texts = ClassTexts(self.backbone, classnames, self.n_ctx,
                                init_phrase(self.params))

    def features(self, inputs: Inputs, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        return self.condition(inputs), self.texts(prompts["ctx"])
