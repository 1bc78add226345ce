"""KgCoOp (Yao et al., CVPR 2023): CoOp plus knowledge-guided context optimisation.

Baseline training adds ``kg_weight * (1 - cos(learned, hand-crafted))`` averaged over classes,
keeping the learned class features near the frozen template features that generalise to new
classes (published weight 8). Per-sample overfitting uses the plain cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pdiff.methods.base import Inputs, Prompts, cosine
from pdiff.methods.coop import CoOp
from pdiff.methods.text import template_features


class KgCoOp(CoOp):
    name = "kgcoop"

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        anchor = template_features(self.backbone, classnames, [self.template])
        self.register_buffer("anchor", anchor, persistent=False)

    def loss(self, inputs: Inputs, labels: torch.Tensor, prompts: Prompts | None = None
             ) -> torch.Tensor:
        image, text = self.encode(inputs, prompts)
        ce = F.cross_entropy(self.backbone.logit_scale * cosine(image, text), labels)
        kg = (1 - (text * self.anchor).sum(-1)).mean()
        return ce + float(self.params.get("kg_weight", 8.0)) * kg
