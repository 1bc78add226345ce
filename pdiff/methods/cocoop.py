"""CoCoOp (Zhou et al., CVPR 2022): context tokens shifted by a meta-net of the image feature.

Every context token gets the bias ``meta_net(image feature)``, a Linear-ReLU-Linear of width E/16,
so each image sees its own class prompts. The meta-net is a shared parameter (trained with the
baseline, frozen afterwards); the per-sample prompt that overfitting and diffusion handle is the
context itself.
"""

from __future__ import annotations

import torch
from torch import nn

from pdiff.backbone import Backbone
from pdiff.methods.base import Inputs, Prompts, seeded_linear
from pdiff.methods.text import ContextMethod


class CoCoOp(ContextMethod):
    name = "cocoop"
    image_conditioned_texts = True

    def __init__(self, backbone: Backbone, classnames: list[str], template: str, params: dict):
        super().__init__(backbone, classnames, template, params)
        e, w = backbone.embed_dim, backbone.text_width
        hidden = max(1, e // 16)
        gen = torch.Generator().manual_seed(int(self.config.init_seed))
        self.meta_net = nn.Sequential(
            seeded_linear(e, hidden, gen), nn.ReLU(), seeded_linear(hidden, w, gen)
        ).to(backbone.device)

    def features(self, inputs: Inputs, prompts: Prompts, classes: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.condition(inputs)
        ctx = prompts["ctx"] + self.meta_net(image)[:, None]  # [B, M, W]: one prompt per image
        return image, self.texts(ctx, classes=classes)
