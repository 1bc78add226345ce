"""KgCoOp (Yao et al., CVPR 2023): CoOp plus knowledge-guided context optimisation.

Baseline training adds ``kg_weight * (1 - cos(learned, hand-crafted))`` averaged over classes,
keeping the learned class features near the frozen template features that generalise to new
classes (published weight 8). Per-sample overfitting keeps the term, per sample and prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pdiff.methods.base import Anchor, Inputs, Prompts, anchored, cosine
from pdiff.methods.coop import CoOp
from pdiff.methods.text import ContextConfig, template_features


@dataclass(frozen=True, kw_only=True)
class KgCoOpConfig(ContextConfig):
    kg_weight: float = 8.0  # the published weight of the knowledge-guided term


class KgCoOp(CoOp):
    name = "kgcoop"
    config_type = KgCoOpConfig
    config: KgCoOpConfig

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        hand_crafted = template_features(self.backbone, classnames, [self.template])
        self.register_buffer("hand_crafted", hand_crafted, persistent=False)

    def loss(self, inputs: Inputs, labels: torch.Tensor, prompts: Prompts | None = None
             ) -> torch.Tensor:
        return self.per_sample_loss(inputs, labels, prompts).mean()

    def per_sample_loss(self, inputs: Inputs, labels: torch.Tensor, prompts: Prompts | None,
                        anchor: Anchor | None = None) -> torch.Tensor:
        """Cross-entropy plus the knowledge-guided term of each sample's own prompt, [B] (with
        one shared prompt the term is the same for every sample and the mean is `loss`)."""
        image, text = self.encode(inputs, prompts)
        logits = self.backbone.logit_scale * cosine(image, text)
        kg = 1 - (text * self.hand_crafted).sum(-1).mean(-1)  # [1 | B]
        loss = F.cross_entropy(logits, labels, reduction="none")
        return anchored(loss + float(self.config.kg_weight) * kg, logits, anchor)
