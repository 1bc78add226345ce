"""Exact text encoding of many classes that share one prompt prefix.

With per-sample prompts a textual method encodes B x C sequences ``[SOT] ctx <class> . [EOT]``.
CLIP's text tower is causal, so the hidden states of ``[SOT] ctx`` (the prefix) never see the
class tokens: they are the same for all C classes of a sample. We run the prefix once per sample,
keep its keys and values in every block, and run only the short class suffix per (sample, class)
pair, its queries attending to the shared prefix keys and values. For CoOp's 16-token context
and two-word class names this cuts the work per layer about 3-4x; the features equal the plain
path's to float tolerance (tested, `benchmarks/prefix_sharing.py` measures it). It uses
open_clip's own block weights; models whose blocks are not the standard pre-norm residual
attention block use the plain path.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

#: Per block, the prefix's keys and values [P, heads, Lp, W/heads].
PrefixCache = list[tuple[torch.Tensor, torch.Tensor]]


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
    """True when `model`'s text blocks have the structure this module reimplements."""
    return _supported(model)


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """[..., L, W] -> [..., h, L, W/h]."""
    return x.unflatten(-1, (h, -1)).transpose(-3, -2)


def _qkv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    attn = block.attn
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    return tuple(_heads(t, attn.num_heads) for t in qkv)


def _finish(block: nn.Module, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """The rest of a residual attention block after attention output o [N, h, L, d]."""
    attn = block.attn
    o = F.linear(o.transpose(-3, -2).flatten(-2), attn.out_proj.weight, attn.out_proj.bias)
    x = x + block.ls_1(o)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def prefix_states(model: nn.Module, prefix: torch.Tensor, deep: torch.Tensor | None = None
                  ) -> PrefixCache:
    """Keys and values of every block for prefix [P, Lp, W] (start-of-text and context token
    embeddings); deep [P, D, n, W] replaces positions 1..n before blocks 1..D (deep text
    prompts, which live in the prefix)."""
    h = prefix + model.positional_embedding[: prefix.shape[1]].to(prefix.dtype)
    cache: PrefixCache = []
    blocks = model.transformer.resblocks
    for i, block in enumerate(blocks):
        if deep is not None and 1 <= i <= deep.shape[1]:
            n = deep.shape[2]
            h = torch.cat([h[:, :1], deep[:, i - 1].to(h.dtype), h[:, 1 + n :]], dim=1)
        q, k, v = _qkv(block, h)
        cache.append((k, v))
        if i + 1 < len(blocks):  # the last block's prefix output is never read
            h = _finish(block, h, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    return cache


def encode_suffixes(model: nn.Module, cache: PrefixCache, rows: torch.Tensor,
                    suffix: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Text features [N, E] of the sequences ``prefix[rows[i]] + suffix[i]``.

    suffix [N, Ls, W] class-name embeddings (one length for all, up to their end-of-text), eot
    [N] end-of-text positions within the suffix; each suffix attends to its own prefix's cached
    keys and values and causally to itself.
    """
    lp, ls = cache[0][0].shape[2], suffix.shape[1]
    h = suffix + model.positional_embedding[lp : lp + ls].to(suffix.dtype)
    allowed = torch.ones(ls, lp + ls, dtype=torch.bool, device=suffix.device)
    allowed[:, lp:] = torch.ones(ls, ls, dtype=torch.bool, device=suffix.device).tril()
    for block, (kp, vp) in zip(model.transformer.resblocks, cache, strict=True):
        q, k, v = _qkv(block, h)
        k, v = torch.cat([kp[rows], k], dim=-2), torch.cat([vp[rows], v], dim=-2)
        h = _finish(block, h, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    x = model.ln_final(h[torch.arange(h.shape[0], device=h.device), eot])
    return x @ model.text_projection
