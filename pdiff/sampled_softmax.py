"""A sampled-class softmax: the DiT's classification term at many classes.

The term encodes every class name with every row's generated prompt, rows x C text sequences
per DiT step (128 x 1,000 at ImageNet). Scoring each row's true class and n negatives drawn
uniformly without replacement from the other C - 1 classes costs rows x (1 + n) instead. Each
negative's exp-logit is weighted by (C - 1) / n, which makes the softmax denominator an unbiased
estimate of the full one, so the loss estimates the full cross-entropy on its own scale and
`cls_weight` means the same with or without sampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def draw_classes(labels: torch.Tensor, num_classes: int, negatives: int,
                 generator: torch.Generator) -> torch.Tensor:
    """[B, 1 + negatives] class indices: each row's label, then distinct other classes."""
    rows = torch.arange(len(labels))
    scores = torch.rand(len(labels), num_classes, generator=generator, device=generator.device)
    scores[rows, labels.to(scores.device)] = -1.0  # uniform scores are >= 0: never drawn
    drawn = scores.topk(negatives, dim=1).indices.to(labels.device)
    return torch.cat([labels[:, None], drawn], dim=1)


def sampled_cross_entropy(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B]: cross-entropy of column 0 (the true class) against the sampled negatives of
    `logits` [B, 1 + n], negatives weighted by (num_classes - 1) / n."""
    n = logits.shape[1] - 1
    weight = torch.full_like(logits[0], math.log((num_classes - 1) / n))
    weight[0] = 0.0
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits + weight, target, reduction="none")
