"""A small diffusion transformer (DiT, Peebles & Xie 2023) over packed prompt tokens.

The input is one packed prompt matrix per sample, ``x [B, T, D]``; each of the ``T``
rows is a token. Time and the CLIP image feature are folded into one conditioning
vector that modulates every block through adaLN-Zero. Because all modulation layers
and the output projection start at zero, the freshly built network outputs exactly
zero and every block is the identity: training starts from "predict nothing", which is
the stable choice for small data sets such as a few-shot prompt store.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of ``t [B]`` in [0, 1] -> ``[B, dim]``.

    ``t`` is scaled by 1000 first so the frequency range matches the usual integer
    diffusion steps; otherwise every frequency but the lowest would barely move on [0, 1].
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = (1000.0 * t.float())[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation of ``x [B, T, W]`` by per-sample ``shift/scale [B, W]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Plain multi-head self-attention over the token axis."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, t, w))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        # Zero gates make the block the identity at init (the "Zero" in adaLN-Zero).
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """adaLN followed by a zero-initialised projection back to the token dimension."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)
        for layer in (self.ada[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class PromptDiT(nn.Module):
    """Predicts a ``[B, T, D]`` field from noisy prompts, time and the image feature.

    Args:
        num_tokens: ``T``, rows of the packed prompt matrix.
        token_dim: ``D``, columns of the packed prompt matrix.
        cond_dim: ``F``, size of the conditioning image feature (0: unconditional).
        width, depth, heads, mlp_ratio: transformer size.
    """

    def __init__(
        self,
        num_tokens: int,
        token_dim: int,
        cond_dim: int,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "num_tokens": int(num_tokens),
            "token_dim": int(token_dim),
            "cond_dim": int(cond_dim),
            "width": int(width),
            "depth": int(depth),
            "heads": int(heads),
            "mlp_ratio": float(mlp_ratio),
        }
        self.freq_dim = width
        self.in_proj = nn.Linear(token_dim, width)
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.t_embed = nn.Sequential(
            nn.Linear(self.freq_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.c_embed = (
            nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, width))
            if cond_dim > 0
            else None
        )
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(width, token_dim)

    def conditioning(self, t: Tensor, cond: Tensor | None) -> Tensor:
        """The vector ``c [B, width]`` that drives every adaLN layer."""
        c = self.t_embed(timestep_embedding(t, self.freq_dim).to(self.pos_embed.dtype))
        if self.c_embed is not None:
            if cond is None:
                raise ValueError("this PromptDiT is conditional: pass cond [B, F]")
            c = c + self.c_embed(cond.to(c.dtype))
        return c

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        c = self.conditioning(t, cond)
        h = self.in_proj(x) + self.pos_embed
        for block in self.blocks:
            h = block(h, c)
        return self.final(h, c)
