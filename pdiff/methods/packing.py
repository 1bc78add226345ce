"""Losslessly pack a method's prompt tensors into one token matrix [B, T, D] and back.

Diffusion sees only this matrix, whatever the host method. Every prompt tensor is a stack of
vectors (last dim = its width); each vector becomes one token. Widths differ between methods and
even within one (ViT-B/16: text 512, vision 768), so tokens are zero-padded to the widest and a
boolean mask marks the real entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PromptLayout:
    """Names and per-sample shapes of a method's prompt tensors, in packing order."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def from_spec(cls, spec: dict[str, tuple[int, ...]]) -> PromptLayout:
        return cls(tuple((k, tuple(int(d) for d in v)) for k, v in spec.items()))

    def to_json(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.shapes}

    @property
    def num_tokens(self) -> int:
        return sum(math.prod(s[:-1]) for _, s in self.shapes)

    @property
    def token_dim(self) -> int:
        return max((s[-1] for _, s in self.shapes), default=0)

    def mask(self) -> torch.Tensor:
        """[T, D] bool: True where a packed entry holds a real prompt value."""
        rows = []
        for _, s in self.shapes:
            row = torch.zeros(self.token_dim, dtype=torch.bool)
            row[: s[-1]] = True
            rows.append(row.expand(math.prod(s[:-1]), -1))
        return torch.cat(rows) if rows else torch.zeros(0, 0, dtype=torch.bool)

    def pack(self, prompts: dict[str, torch.Tensor]) -> torch.Tensor:
        """{name: [B, *shape]} -> [B, T, D]."""
        parts = []
        for name, s in self.shapes:
            x = prompts[name]
            x = x.reshape(x.shape[0], -1, s[-1])
            parts.append(torch.nn.functional.pad(x, (0, self.token_dim - s[-1])))
        return torch.cat(parts, dim=1)

    def unpack(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, T, D] -> {name: [B, *shape]} (the exact inverse of `pack`)."""
        out, start = {}, 0
        for name, s in self.shapes:
            n = math.prod(s[:-1])
            out[name] = tokens[:, start : start + n, : s[-1]].reshape(tokens.shape[0], *s)
            start += n
        return out
