"""Shared text-side machinery of the context-prompt family (CoOp, CoCoOp, KgCoOp, MaPLe, PromptSRC).

Every class is encoded as ``[SOT] ctx_1 ... ctx_M <class name tokens> . [EOT]``. The context is
class-agnostic, so only the class-name part (prefix/suffix embedding tables) depends on the class
names and new-class evaluation rebuilds just these tables.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pdiff.backbone import Backbone
from pdiff.data.templates import format_prompt
from pdiff.errors import PdiffError
from pdiff.methods.base import PromptMethod
from pdiff.prefix_sharing import encode_shared_prefix, supports_prefix_sharing


def init_phrase(params: dict) -> str | None:
    init = params.get("init", "random")
    return None if not init or init == "random" else str(init)


def init_context(backbone: Backbone, params: dict) -> torch.Tensor:
    """Initial context [M, W]: N(0, 0.02) noise (``init: random``, seeded by ``init_seed``) or
    the embeddings of the first M tokens of a phrase (``init: "a photo of a"``; without n_ctx,
    the whole phrase). As in MaPLe, a phrase longer than M keeps its remaining words fixed."""
    phrase = init_phrase(params)
    if phrase is None:
        return random_tokens(params, (int(params["n_ctx"]), backbone.text_width))
    tokens = backbone.tokenize([phrase])[0]
    n_ctx = int(params.get("n_ctx") or int(tokens.argmax()) - 1)
    if n_ctx > int(tokens.argmax()) - 1:
        raise PdiffError(f"n_ctx {n_ctx} is longer than the init phrase '{phrase}'; use "
                         "init: random or a longer phrase")
    with torch.no_grad():
        return backbone.token_embeddings(tokens[None])[0, 1 : 1 + n_ctx].clone()


def random_tokens(params: dict, shape: tuple[int, ...], salt: int = 0) -> torch.Tensor:
    """Seeded N(0, 0.02) prompt tokens (CoOp's and VPT's initialisation)."""
    gen = torch.Generator().manual_seed(int(params.get("init_seed", 0)) * 1000 + salt)
    return torch.randn(*shape, generator=gen) * 0.02


class ClassTexts(nn.Module):
    """Embedding tables of the class names around an M-token context."""

    def __init__(self, backbone: Backbone, classnames: list[str], n_ctx: int,
                 phrase: str | None = None):
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        phrase = phrase or " ".join(["X"] * n_ctx)  # the first n_ctx tokens are replaced
        tokens = backbone.tokenize([f"{phrase} {c}." for c in classnames])
        eot = tokens.argmax(-1)
        length = int(eot.max()) + 1  # everything after the last EOT is never used
        with torch.no_grad():
            emb = backbone.token_embeddings(tokens[:, :length])
        self.register_buffer("prefix", emb[:, :1], persistent=False)
        self.register_buffer("suffix", emb[:, 1 + n_ctx :], persistent=False)
        self.register_buffer("eot", eot, persistent=False)

    #: encode the shared [SOT] + context once per prompt (exact; False: the plain path)
    share_prefix: bool = True

    def forward(self, ctx: torch.Tensor, deep: torch.Tensor | None = None) -> torch.Tensor:
        """ctx [P, M, W] (+ deep [P, D, M, W]) -> normalised class text features [P, C, E]."""
        model = self.backbone.model
        if self.share_prefix and supports_prefix_sharing(model):
            prefix = torch.cat([self.prefix[:1].expand(ctx.shape[0], -1, -1), ctx], dim=1)
            feats = encode_shared_prefix(model, prefix, self.suffix, self.eot, deep)
            return F.normalize(feats, dim=-1)
        p, c = ctx.shape[0], self.prefix.shape[0]
        seq = torch.cat(
            [
                self.prefix[None].expand(p, -1, -1, -1),
                ctx[:, None].expand(-1, c, -1, -1),
                self.suffix[None].expand(p, -1, -1, -1),
            ],
            dim=2,
        ).reshape(p * c, -1, ctx.shape[-1])
        if deep is not None:
            deep = deep[:, None].expand(-1, c, -1, -1, -1).reshape(p * c, *deep.shape[1:])
        feats = self.backbone.encode_text_embeddings(seq, self.eot.repeat(p), deep=deep)
        return F.normalize(feats, dim=-1).reshape(p, c, -1)


@torch.no_grad()
def template_features(backbone: Backbone, classnames: list[str], templates: list[str]
                      ) -> torch.Tensor:
    """Frozen hand-crafted class features [C, E], averaged over templates (then renormalised)."""
    feats = torch.stack([
        backbone.encode_texts([format_prompt(t, c) for c in classnames]) for t in templates
    ])
    return F.normalize(feats.mean(0), dim=-1)


class ContextMethod(PromptMethod):
    """Base of the context-prompt family: the learned prompt holds `ctx` [M, W] and the class
    texts are rebuilt around it for any class names. Subclasses add deep or shared parts."""

    def __init__(self, backbone: Backbone, classnames: list[str], template: str, params: dict):
        ctx = init_context(backbone, params)
        self.n_ctx = ctx.shape[0]
        super().__init__(backbone, classnames, template, params)
        self.prompt["ctx"] = nn.Parameter(ctx.to(backbone.device))

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self.texts = ClassTexts(self.backbone, classnames, self.n_ctx, init_phrase(self.params))
