"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompts coupled from the text side.

Text context at layer 0 plus deeper text prompts before layers 1..depth-1; the vision prompts of
each of layers 0..depth-1 are produced from that layer's text prompt by a per-layer linear
coupling function. The couplings are shared parameters (trained with the baseline, frozen
afterwards); the per-sample prompt is the text side, so one generated prompt moves both towers.
With depth 0 only the layer-0 text context remains (CoOp).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pdiff.backbone import Backbone
from pdiff.methods.base import DeepConfig, Inputs, Prompts, check_depth, seeded_linear
from pdiff.methods.text import ContextConfig, ContextMethod, random_tokens


@dataclass(frozen=True, kw_only=True)
class MaPLeConfig(ContextConfig, DeepConfig):
    pass


class MaPLe(ContextMethod):
    name = "maple"
    needs_images = True
    config_type = MaPLeConfig
    config: MaPLeConfig

    def __init__(self, backbone: Backbone, classnames: list[str], template: str, params: dict):
        super().__init__(backbone, classnames, template, params)
        cfg = self.config
        depth = check_depth(cfg, min(backbone.text_layers, backbone.vision_layers), self.name)
        if depth > 1:
            shape = (depth - 1, self.n_ctx, backbone.text_width)
            self.prompt["text_deep"] = nn.Parameter(
                random_tokens(cfg.init_seed, shape, salt=1).to(backbone.device))
        gen = torch.Generator().manual_seed(int(cfg.init_seed))
        self.coupling = nn.ModuleList(
            seeded_linear(backbone.text_width, backbone.vision_width, gen) for _ in range(depth)
        ).to(backbone.device)

    def features(self, inputs: Inputs, prompts: Prompts, classes: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        deep = prompts.get("text_deep")
        vision = None
        if len(self.coupling):
            layers = [prompts["ctx"]] + ([] if deep is None else list(deep.unbind(1)))
            vision = torch.stack([f(t) for f, t in zip(self.coupling, layers, strict=True)], 1)
        image = self.backbone.encode_images_prompted(inputs.images, vision)
        return image, self.texts(prompts["ctx"], deep, classes)
