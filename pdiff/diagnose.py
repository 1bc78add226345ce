"""Diagnostics of generated prompts: do they follow the overfitted ones, or copy the store?

Both work on packed prompt tokens [N, T, D] with the layout's mask, so they hold for every host
method. `delta_agreement` compares generated and true per-sample changes (prompt - learned prompt)
on images the DiT did not train on; `memorisation` measures how close each generated prompt lies to
its nearest stored training prompt, relative to how far stored prompts lie from each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _flat(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return tokens[:, mask].reshape(tokens.shape[0], -1).double()


def delta_agreement(generated: torch.Tensor, true: torch.Tensor, init: torch.Tensor,
                    mask: torch.Tensor) -> dict[str, float]:
    """Per-sample cosine between generated and true deltas, their mean Pearson correlation, and
    the norm ratio; [N, T, D] prompts, init [T, D]. Cosine 0 means the DiT generates noise
    around the learned prompt; 1 means it recovers each sample's own change."""
    g = _flat(generated - init, mask)
    t = _flat(true - init, mask)
    cos = F.cosine_similarity(g, t, dim=1)
    gc, tc = g - g.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    corr = F.cosine_similarity(gc, tc, dim=1)
    return {
        "cosine_mean": float(cos.mean()),
        "correlation_mean": float(corr.mean()),
        "norm_ratio": float(g.norm(dim=1).mean() / t.norm(dim=1).mean().clamp_min(1e-12)),
        "n": int(g.shape[0]),
    }


def memorisation(generated: torch.Tensor, store: torch.Tensor, mask: torch.Tensor) -> dict:
    """Distance of each generated prompt to its nearest stored prompt, against the store's own
    nearest-neighbour distance (leave-one-out). A ratio near 0 means the DiT copies training
    prompts; near 1 or above, it generates new ones at the store's spread or farther."""
    g, s = _flat(generated, mask), _flat(store, mask)
    to_store = torch.cdist(g, s).min(dim=1).values
    within = torch.cdist(s, s)
    within.fill_diagonal_(float("inf"))
    spread = within.min(dim=1).values
    return {
        "generated_to_store": float(to_store.mean()),
        "store_nearest_neighbour": float(spread.mean()),
        "ratio": float(to_store.mean() / spread.mean().clamp_min(1e-12)),
        "n": int(g.shape[0]),
    }
