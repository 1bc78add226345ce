"""CoOp (Zhou et al., 2022): learnable context vectors in front of the class name.

Sequence per class: [SOT] ctx_1 ... ctx_M <class name tokens> . [EOT]. The context is
class-agnostic, so new-class evaluation only rebuilds the class-name part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pdiff.backbone import Backbone
from pdiff.methods.base import Inputs, PromptMethod, Prompts


class CoOp(PromptMethod):
    name = "coop"

    def __init__(self, backbone: Backbone, classnames: list[str], template: str, params: dict):
        init = params.get("init", "random")
        width = backbone.text_width
        if init and init != "random":
            # Initialise from a phrase such as "a photo of a": its token embeddings.
            tokens = backbone.tokenize([init])[0]
            n_ctx = int(tokens.argmax()) - 1
            with torch.no_grad():
                ctx = backbone.token_embeddings(tokens[None])[0, 1 : 1 + n_ctx].clone()
        else:
            n_ctx = int(params["n_ctx"])
            gen = torch.Generator().manual_seed(int(params.get("init_seed", 0)))
            ctx = torch.randn(n_ctx, width, generator=gen) * 0.02
        self.n_ctx = n_ctx
        super().__init__(backbone, classnames, template, params)
        self.prompt["ctx"] = nn.Parameter(ctx.to(backbone.device))

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        bb = self.backbone
        placeholder = " ".join(["X"] * self.n_ctx)
        tokens = bb.tokenize([f"{placeholder} {c}." for c in classnames])
        eot = tokens.argmax(-1)
        length = int(eot.max()) + 1  # everything after the last EOT is never used
        with torch.no_grad():
            emb = bb.token_embeddings(tokens[:, :length])
        self.register_buffer("prefix", emb[:, :1], persistent=False)
        self.register_buffer("suffix", emb[:, 1 + self.n_ctx :], persistent=False)
        self.register_buffer("eot", eot, persistent=False)

    def text_features(self, ctx: torch.Tensor) -> torch.Tensor:
        """ctx [P, M, W] -> normalised class text features [P, C, E]."""
        p, c = ctx.shape[0], self.prefix.shape[0]
        seq = torch.cat(
            [
                self.prefix[None].expand(p, -1, -1, -1),
                ctx[:, None].expand(-1, c, -1, -1),
                self.suffix[None].expand(p, -1, -1, -1),
            ],
            dim=2,
        ).reshape(p * c, -1, ctx.shape[-1])
        feats = self.backbone.encode_text_embeddings(seq, self.eot.repeat(p))
        return F.normalize(feats, dim=-1).reshape(p, c, -1)

    def logits(self, inputs: Inputs, prompts: Prompts | None) -> torch.Tensor:
        prompts = self.learned_prompts() if prompts is None else prompts
        image = self.condition(inputs)
        text = self.text_features(prompts["ctx"])
        scale = self.backbone.logit_scale
        if text.shape[0] == 1:
            return scale * image @ text[0].T
        return scale * torch.einsum("be,bce->bc", image, text)
