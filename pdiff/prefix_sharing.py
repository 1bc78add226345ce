"""Exact text encoding of many classes that share one prompt prefix.

With per-sample prompts a textual method encodes B x C sequences ``[SOT] ctx <class> . [EOT]``.
CLIP's text tower is causal, so the hidden states of ``[SOT] ctx`` (the prefix) never see the
class tokens: they are the same for all C classes of a sample. We run the prefix once per sample
and only the short class suffix per (sample, class), its queries attending to the shared prefix
keys and values. For CoOp's 16-token context and two-word class names this cuts the work per
layer about 3-4x; the features equal the plain path's to float tolerance (tested,
`benchmarks/prefix_sharing.py` measures it). It uses open_clip's own block weights; models
whose blocks are not the standard pre-norm residual attention block use the plain path.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def _supported(model: nn.Module) -> bool:
    for block in model.transformer.resblocks:
        attn = getattr(block, "attn", None)
        if (not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim
                or attn.in_proj_bias is None or hasattr(block, "ln_1_kv")
                or not all(hasattr(block, k) for k in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))):
            return False
    return True


def supports_prefix_sharing(model: nn.Module) -> bool:
    """True when `model`'s text blocks have the structure `encode_shared_prefix` reimplements."""
    return _supported(model)


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """[..., L, W] -> [..., h, L, W/h]."""
    return x.unflatten(-1, (h, -1)).transpose(-3, -2)


def _block(block: nn.Module, hp: torch.Tensor, hs: torch.Tensor, suffix_mask: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """One residual attention block on prefix hp [P, Lp, W] and suffixes hs [P, C, Ls, W]."""
    attn = block.attn
    h, c = attn.num_heads, hs.shape[1]
    qp, kp, vp = (_heads(t, h) for t in
                  F.linear(block.ln_1(hp), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    qs, ks, vs = (_heads(t, h) for t in
                  F.linear(block.ln_1(hs), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)  # [P, h, Lp, d]
    # suffix queries see the whole (shared) prefix and the suffix causally
    k = torch.cat([kp[:, None].expand(-1, c, -1, -1, -1), ks], dim=-2)
    v = torch.cat([vp[:, None].expand(-1, c, -1, -1, -1), vs], dim=-2)
    os_ = F.scaled_dot_product_attention(qs, k, v, attn_mask=suffix_mask)  # [P, C, h, Ls, d]

    def finish(x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        o = F.linear(o.transpose(-3, -2).flatten(-2), attn.out_proj.weight, attn.out_proj.bias)
        x = x + block.ls_1(o)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    return finish(hp, op), finish(hs, os_)


def encode_shared_prefix(model: nn.Module, prefix: torch.Tensor, suffix: torch.Tensor,
                         eot: torch.Tensor, deep: torch.Tensor | None = None) -> torch.Tensor:
    """Text features [P, C, E] of the sequences ``prefix[p] + suffix[c]``.

    prefix [P, Lp, W] token embeddings (start-of-text and context), suffix [C, Ls, W] (or
    [P, C, Ls, W]) class-name embeddings up to the longest end-of-text, eot [C] end-of-text
    positions in the full sequence; deep [P, D, n, W] replaces positions 1..n before blocks
    1..D (deep text prompts, which live in the prefix).
    """
    p, lp = prefix.shape[:2]
    if suffix.dim() == 3:
        suffix = suffix[None].expand(p, -1, -1, -1)
    ls = suffix.shape[2]
    pos = model.positional_embedding.to(prefix.dtype)
    hp = prefix + pos[:lp]
    hs = suffix + pos[lp : lp + ls]
    allowed = torch.ones(ls, lp + ls, dtype=torch.bool, device=prefix.device)
    allowed[:, lp:] = torch.ones(ls, ls, dtype=torch.bool, device=prefix.device).tril()
    for i, block in enumerate(model.transformer.resblocks):
        if deep is not None and 1 <= i <= deep.shape[1]:
            n = deep.shape[2]
            hp = torch.cat([hp[:, :1], deep[:, i - 1].to(hp.dtype), hp[:, 1 + n :]], dim=1)
        hp, hs = _block(block, hp, hs, allowed)
    rows = torch.arange(suffix.shape[1], device=hs.device)
    x = model.ln_final(hs[:, rows, eot - lp])  # [P, C, W]
    return x @ model.text_projection
