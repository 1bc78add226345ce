"""CoOp (Zhou et al., IJCV 2022): learnable context vectors in front of every class name.

The prompt is M context tokens; the image side is the frozen encoder, so training and per-sample
prompts only ever touch the text tower (image features are cached once per stage).
"""

from __future__ import annotations

import torch

from pdiff.methods.base import Inputs, Prompts
from pdiff.methods.text import ContextMethod


class CoOp(ContextMethod):
    name = "coop"

    def features(self, inputs: Inputs, prompts: Prompts, classes: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.condition(inputs), self.texts(prompts["ctx"], classes=classes)
