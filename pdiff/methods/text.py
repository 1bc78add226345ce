"""Shared text-side machinery of the context-prompt family (CoOp, CoCoOp, KgCoOp, MaPLe, PromptSRC).

Every class is encoded as ``[SOT] ctx_1 ... ctx_M <class name tokens> . [EOT]``. The context is
class-agnostic, so only the class-name part (prefix/suffix embedding tables) depends on the class
names and new-class evaluation rebuilds just these tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pdiff.backbone import Backbone
from pdiff.budget import length_chunks
from pdiff.data.templates import format_prompt
from pdiff.errors import PdiffError
from pdiff.methods.base import MethodConfig, PromptMethod
from pdiff.prefix_sharing import encode_suffixes, prefix_states, supports_prefix_sharing


@dataclass(frozen=True, kw_only=True)
class ContextConfig(MethodConfig):
    """The keys of the context-prompt family."""

    n_ctx: int | None = None  # context tokens; None: the whole init phrase
    init: str = "random"  # random, or a phrase whose token embeddings start the context

    def __post_init__(self) -> None:
        if self.phrase is None and self.n_ctx is None:
            raise PdiffError("n_ctx is required with init: random; set it in the method's "
                             "method_params block")

    @property
    def phrase(self) -> str | None:
        """The init phrase, None for random tokens."""
        return None if not self.init or self.init == "random" else str(self.init)


def init_context(backbone: Backbone, config: ContextConfig) -> torch.Tensor:
    """Initial context [M, W]: N(0, 0.02) noise (``init: random``, seeded by ``init_seed``) or
    the embeddings of the first M tokens of a phrase (``init: "a photo of a"``; without n_ctx,
    the whole phrase). As in MaPLe, a phrase longer than M keeps its remaining words fixed."""
    phrase = config.phrase
    if phrase is None:
        assert config.n_ctx is not None  # ContextConfig requires it with init: random
        return random_tokens(config.init_seed, (int(config.n_ctx), backbone.text_width))
    tokens = backbone.tokenize([phrase])[0]
    n_ctx = int(config.n_ctx or int(tokens.argmax()) - 1)
    if n_ctx > int(tokens.argmax()) - 1:
        raise PdiffError(f"n_ctx {n_ctx} is longer than the init phrase '{phrase}'; use "
                         "init: random or a longer phrase")
    with torch.no_grad():
        return backbone.token_embeddings(tokens[None])[0, 1 : 1 + n_ctx].clone()


def random_tokens(seed: int, shape: tuple[int, ...], salt: int = 0) -> torch.Tensor:
    """Seeded N(0, 0.02) prompt tokens (CoOp's and VPT's initialisation)."""
    gen = torch.Generator().manual_seed(int(seed) * 1000 + salt)
    return torch.randn(*shape, generator=gen) * 0.02


class ClassTexts(nn.Module):
    """Embedding tables of the class names around an M-token context.

    Encoding runs over (prompt, class) pairs grouped by token length, so each sequence is cut
    after its own end-of-text instead of padded to the dataset's longest class name (ImageNet:
    13 name tokens at most, about 4 on average), and each group in chunks of at most
    `backbone.max_pairs` pairs (`pdiff.budget`). Under autograd a request over the budget
    recomputes each chunk's activations in the backward pass (activation checkpointing), so
    only one chunk's activations are held at a time.
    """

    #: encode the shared [SOT] + context once per prompt (exact; False: the plain path)
    share_prefix: bool = True
    #: cut each sequence after its own end-of-text (exact; False: pad to the longest)
    bucket: bool = True

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
        self.n_prefix = 1 + n_ctx  # [SOT] + context: the part every class shares
        self.register_buffer("sot", emb[:1, :1], persistent=False)
        self.register_buffer("suffix", emb[:, self.n_prefix :], persistent=False)
        self.register_buffer("eot", eot, persistent=False)

    def forward(self, ctx: torch.Tensor, deep: torch.Tensor | None = None,
                classes: torch.Tensor | None = None) -> torch.Tensor:
        """ctx [P, M, W] (+ deep [P, D, M, W]) -> normalised class text features [P, C, E];
        with class indices `classes` [R, K] (R == P, or any R with one shared prompt), each
        row's own K classes, [R, K, E]."""
        if classes is None:
            classes = torch.arange(len(self.eot), device=ctx.device).expand(ctx.shape[0], -1)
        n_rows, k = classes.shape
        rows = torch.arange(n_rows, device=ctx.device) if ctx.shape[0] > 1 else \
            torch.zeros(n_rows, dtype=torch.long, device=ctx.device)
        rows, cls = rows[:, None].expand(-1, k).reshape(-1), classes.reshape(-1)
        lengths = self.eot[cls] + 1
        if not self.bucket:
            lengths = torch.full_like(lengths, int(lengths.max()))
        encode = self._encoder(ctx, deep)
        limit = self.backbone.max_pairs
        # over the budget under autograd: keep only each chunk's output, recompute the rest
        recompute = (torch.is_grad_enabled() and len(cls) > limit
                     and (ctx.requires_grad or (deep is not None and deep.requires_grad)))
        parts, order = [], []
        for length, chunk in length_chunks(lengths, limit):
            args = (rows[chunk], cls[chunk], length)
            parts.append(checkpoint(encode, *args, use_reentrant=False) if recompute
                         else encode(*args))
            order.append(chunk)
        feats = torch.cat(parts)[torch.argsort(torch.cat(order))]  # back to (row, class) order
        return F.normalize(feats, dim=-1).reshape(n_rows, k, -1)

    def _encoder(self, ctx: torch.Tensor, deep: torch.Tensor | None
                 ) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
        """(rows, classes, length) -> unnormalised features of those (prompt, class) pairs,
        every one of them `length` tokens long."""
        model, n = self.backbone.model, self.n_prefix
        if self.share_prefix and supports_prefix_sharing(model):
            prefix = torch.cat([self.sot.expand(ctx.shape[0], -1, -1), ctx], dim=1)
            cache = prefix_states(model, prefix, deep)

            def shared(rows: torch.Tensor, cls: torch.Tensor, length: int) -> torch.Tensor:
                return encode_suffixes(model, cache, rows, self.suffix[cls, : length - n],
                                       self.eot[cls] - n)

            return shared

        def plain(rows: torch.Tensor, cls: torch.Tensor, length: int) -> torch.Tensor:
            seq = torch.cat([self.sot.expand(len(rows), -1, -1), ctx[rows],
                             self.suffix[cls, : length - n]], dim=1)
            return self.backbone.encode_text_embeddings(
                seq, self.eot[cls], deep=None if deep is None else deep[rows])

        return plain


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

    per_sample_texts = True
    config_type = ContextConfig
    config: ContextConfig

    def __init__(self, backbone: Backbone, classnames: list[str], template: str, params: dict):
        ctx = init_context(backbone, self.read_config(params))
        self.n_ctx = ctx.shape[0]
        super().__init__(backbone, classnames, template, params)
        self.prompt["ctx"] = nn.Parameter(ctx.to(backbone.device))

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self.texts = ClassTexts(self.backbone, classnames, self.n_ctx, self.config.phrase)
