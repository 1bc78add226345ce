"""VPT-deep (Jia et al., ECCV 2022): learnable visual tokens inside the image encoder.

``n_ctx`` tokens are appended after the patch tokens and replaced before each of the first
``depth`` layers; the text side is the frozen "a photo of a {}." class features. Per-sample
prompts are per-image visual tokens, so a generated prompt costs one ordinary image forward.
With depth 0 the encoder is untouched and the method is zero-shot CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pdiff.backbone import Backbone
from pdiff.data.templates import GENERIC_TEMPLATE
from pdiff.methods.base import DeepConfig, Inputs, PromptMethod, Prompts, check_depth
from pdiff.methods.text import random_tokens, template_features


@dataclass(frozen=True, kw_only=True)
class VPTConfig(DeepConfig):
    n_ctx: int  # visual tokens per layer


class VPT(PromptMethod):
    name = "vpt"
    needs_images = True
    config_type = VPTConfig
    config: VPTConfig

    def __init__(self, backbone: Backbone, classnames: list[str], template: str, params: dict):
        super().__init__(backbone, classnames, template, params)
        cfg = self.config
        depth = check_depth(cfg, backbone.vision_layers, self.name)
        if depth:
            shape = (depth, int(cfg.n_ctx), backbone.vision_width)
            self.prompt["vision"] = nn.Parameter(
                random_tokens(cfg.init_seed, shape).to(backbone.device))

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        text = template_features(self.backbone, classnames, [GENERIC_TEMPLATE])
        self.register_buffer("text", text, persistent=False)

    def features(self, inputs: Inputs, prompts: Prompts, classes: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.backbone.encode_images_prompted(inputs.images, prompts.get("vision"))
        return image, self.text[None] if classes is None else self.text[classes]

