"""The frozen CLIP backbone: open_clip loading, frozen features and the truncated text encoder.

A backbone is named by a JSON-able spec `{"model": <open_clip name>, "pretrained": <p>}` where
`p` is `shipped` (the demo checkpoint inside this package), an open_clip pretrained tag
(e.g. `openai`, resolved in the weights cache and never downloaded by compute jobs), a path
to a checkpoint file, or `random` (seeded random weights of a real architecture, for rehearsals
only). Its *identity* adds the checkpoint's sha256 (None for random weights), so every artifact
records exactly which weights it was computed with.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn
from torchvision.transforms import RandomHorizontalFlip

from pdiff.budget import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PAIRS, length_chunks
from pdiff.errors import PdiffError
from pdiff.plan.names import RANDOM, SHIPPED

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).parent
MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"
ASSET_DIR = PACKAGE_DIR / "assets"
CROP_SCALE = (0.08, 1.0)  # Dassl's random_resized_crop scale, used by every host's recipe
RANDOM_SEED = 0


@functools.cache
def register_model_configs() -> None:
    """Make pdiff's own model configs (e.g. `pdiff-tiny`) known to open_clip by name."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)


def shipped_checkpoint(model: str) -> Path:
    return ASSET_DIR / f"{model}.safetensors"


def weights_cache_dir() -> Path:
    return Path(os.environ.get("PDIFF_WEIGHTS", Path.home() / ".cache" / "pdiff" / "weights"))


@functools.cache
def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_checkpoint(model: str, pretrained: str | None) -> Path | None:
    """Map a `pretrained` value to a local file (None: random init, used by tests only)."""
    register_model_configs()
    if model not in open_clip.list_models():
        raise PdiffError(
            f"unknown open_clip model '{model}'; use one of open_clip.list_models() "
            f"(e.g. ViT-B-16) or pdiff's own: pdiff-tiny"
        )
    if pretrained in (None, "", "none", RANDOM):
        return None
    if pretrained == SHIPPED:
        path = shipped_checkpoint(model)
        if not path.exists():
            raise PdiffError(
                f"no shipped checkpoint for '{model}' ({path} is missing); set "
                "backbone.pretrained to 'pretrain' to regenerate it, or to a checkpoint path"
            )
        return path
    path = Path(pretrained)
    if path.suffix in (".safetensors", ".pt", ".pth", ".bin") or path.exists():
        if not path.exists():
            raise PdiffError(
                f"backbone checkpoint {path} not found; fix backbone.pretrained in the config "
                "or create the file (for the demo model: `pdiff pretrain`)"
            )
        return path
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise PdiffError(
            f"unknown pretrained tag '{pretrained}' for {model}; known tags: {tags or 'none'}; "
            "or give a checkpoint path"
        )
    cached = weights_cache_dir() / model / f"{pretrained}.safetensors"
    if not cached.exists():
        raise PdiffError(
            f"weights {model}/{pretrained} are not in the cache ({cached}); fetch them once on "
            f"a machine with internet: `pdiff fetch-weights --model {model} --pretrained "
            f"{pretrained}`"
        )
    return cached


def fetch_weights(model: str, pretrained: str, cache_dir: Path | None = None) -> Path:
    """Download an open_clip pretrained tag once and store it in the weights cache.

    The only step that touches the network (a local rule on a login node); compute jobs then
    load the cached file and never go online.
    """
    register_model_configs()
    out = (cache_dir or weights_cache_dir()) / model / f"{pretrained}.safetensors"
    if out.exists():
        log.info("weights already cached: %s", out)
        return out
    try:
        net = open_clip.create_model(model, pretrained=pretrained)
    except Exception as exc:
        raise PdiffError(
            f"could not fetch {model}/{pretrained}: {exc}; run this on a machine with internet "
            "access, or copy the checkpoint into the cache folder ($PDIFF_WEIGHTS)"
        ) from exc
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    os.replace(tmp, out)
    log.info("cached %s/%s at %s", model, pretrained, out)
    return out


def backbone_identity(spec: dict) -> dict:
    """The spec plus the checkpoint hash: what artifacts record and compare."""
    path = resolve_checkpoint(spec["model"], spec.get("pretrained"))
    return {
        "model": spec["model"],
        "pretrained": spec.get("pretrained"),
        "sha256": file_sha256(str(path)) if path else None,
    }


@dataclass
class Backbone:
    """A frozen open_clip model plus the pieces prompt methods need."""

    model: nn.Module
    tokenizer: open_clip.tokenizer.SimpleTokenizer
    identity: dict
    image_size: int
    amp: bool = False  # bf16 autocast of the frozen towers on CUDA (ignored on CPU)
    max_pairs: int = DEFAULT_MAX_PAIRS  # text sequences per chunk (`compute.max_pairs`)
    max_images: int = DEFAULT_MAX_IMAGES  # images under autograd at once (`compute.max_images`)

    def autocast(self):
        """Mixed precision where it pays (CUDA, `amp: true`); a no-op elsewhere."""
        return torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=self.amp and self.device.type == "cuda")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def text_width(self) -> int:
        return self.model.token_embedding.weight.shape[1]

    @property
    def embed_dim(self) -> int:
        return self.model.text_projection.shape[1]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().detach()

    # --- images -----------------------------------------------------------------------------
    def transform(self, augment: dict | None = None):
        """open_clip's own preprocessing for this model (PIL image -> normalised pixels): the
        shorter side resized and centre-cropped to the model's size, its mean/std. With an
        `augment` config, the published training augmentation instead: a random resized crop
        (Dassl's scale, bicubic) and a horizontal flip."""
        cfg = PreprocessCfg(**self.model.visual.preprocess_cfg)
        if not augment:
            return image_transform_v2(cfg, is_train=False)
        train = image_transform_v2(cfg, is_train=True,
                                   aug_cfg={"scale": tuple(augment.get("scale", CROP_SCALE))})
        train.transforms.insert(1, RandomHorizontalFlip())
        return train

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen, L2-normalised image features [B, E] of model inputs [B, 3, H, W]."""
        with self.autocast():
            feats = self.model.encode_image(pixels.to(self.device))
        return F.normalize(feats.float(), dim=-1)

    # --- text -------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.token_embedding(tokens)

    def encode_text_embeddings(
        self, x: torch.Tensor, eot: torch.Tensor, truncate: bool = True,
        deep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return encode_text_embeddings(self.model, x, eot, truncate, deep)

    @property
    def vision_width(self) -> int:
        return self.model.visual.conv1.out_channels

    @property
    def vision_layers(self) -> int:
        return len(self.model.visual.transformer.resblocks)

    @property
    def text_layers(self) -> int:
        return len(self.model.transformer.resblocks)

    def encode_images_prompted(self, pixels: torch.Tensor, prompts: torch.Tensor | None
                               ) -> torch.Tensor:
        """L2-normalised features of model inputs [B,3,H,W] under deep visual prompts
        [P, D, n, W] (P in {1, B}); differentiable in the prompts."""
        feats = encode_image_prompted(self.model, pixels, prompts)
        return F.normalize(feats, dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Frozen, L2-normalised features of plain text prompts [N, E], each text cut after
        its own end-of-text (texts grouped by length, in chunks of `max_pairs`)."""
        tokens = self.tokenize(texts)
        eot = tokens.argmax(-1)
        out = torch.empty(len(texts), self.embed_dim, device=self.device)
        for length, chunk in length_chunks(eot + 1, self.max_pairs):
            x = self.token_embeddings(tokens[chunk, :length])
            out[chunk] = self.encode_text_embeddings(x, eot[chunk]).to(out.dtype)
        return F.normalize(out, dim=-1)


def normalise_images(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [0,1] -> the model's input normalisation (pretraining renders its images
    as tensors; datasets on disk go through :meth:`Backbone.transform`)."""
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"], device=images.device)[:, None, None]
    std = torch.tensor(cfg["std"], device=images.device)[:, None, None]
    return (images - mean) / std


def _run_blocks(transformer: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None,
                inject=None) -> torch.Tensor:
    """Run open_clip's own residual blocks on batch-first `x`; `inject(i, x)` may replace
    prompt tokens before block i (deep prompts), so open_clip is never forked or patched."""
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    for i, block in enumerate(transformer.resblocks):
        if inject is not None and i > 0:
            x = inject(i, x if transformer.batch_first else x.transpose(0, 1))
            x = x if transformer.batch_first else x.transpose(0, 1)
        x = block(x, attn_mask=attn_mask)
    return x if transformer.batch_first else x.transpose(0, 1)


def _replace(x: torch.Tensor, start: int, tokens: torch.Tensor) -> torch.Tensor:
    """x with positions start..start+n replaced by `tokens` [N, n, W] (differentiable)."""
    stop = start + tokens.shape[1] if start >= 0 else x.shape[1] + start + tokens.shape[1]
    start = start if start >= 0 else x.shape[1] + start
    return torch.cat([x[:, :start], tokens.to(x.dtype), x[:, stop:]], dim=1)


def encode_text_embeddings(
    model: nn.Module, x: torch.Tensor, eot: torch.Tensor, truncate: bool = True,
    deep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Encode token embeddings [N, L, W] pooled at end-of-text positions `eot` [N].

    The text tower is causal and pools at the end-of-text token, so positions after the
    longest end-of-text in the batch cannot change any output: cutting them is exact and
    saves most of the work (77 positions -> ~12 for CoOp-style prompts). `deep` [N, D, n, W]
    replaces the n context tokens after start-of-text before blocks 1..D (MaPLe, PromptSRC).
    """
    length = int(eot.max()) + 1 if truncate else x.shape[1]
    x = x[:, :length] + model.positional_embedding[:length].to(x.dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    inject = None
    if deep is not None and deep.shape[1]:
        def inject(i: int, h: torch.Tensor) -> torch.Tensor:
            return _replace(h, 1, deep[:, i - 1]) if i <= deep.shape[1] else h
    x = _run_blocks(model.transformer, x, mask, inject)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    return x @ model.text_projection


def encode_image_prompted(model: nn.Module, pixels: torch.Tensor,
                          prompts: torch.Tensor | None) -> torch.Tensor:
    """Image features with deep visual prompts (VPT-deep, MaPLe, PromptSRC), unnormalised.

    `pixels` [B, 3, H, W] are model inputs (normalised); `prompts` [P, D, n, W] with P in {1, B}:
    n tokens appended after the patch tokens at the input (before ln_pre, as VPT and MaPLe do)
    and replaced before each of blocks 1..D-1. They are dropped before pooling, so the class
    token pools exactly as in open_clip; with no prompts this equals `model.encode_image`.
    """
    v = model.visual
    if v.attn_pool is not None:
        raise PdiffError("visual prompts need a ViT with token pooling; this model uses an "
                         "attention pooler (pick a plain ViT such as ViT-B-16)")
    x = v.conv1(pixels)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
    x = v.patch_dropout(x)
    n = 0
    if prompts is not None and prompts.shape[1]:
        prompts = prompts.expand(x.shape[0], -1, -1, -1)
        n = prompts.shape[2]
        x = torch.cat([x, prompts[:, 0].to(x.dtype)], dim=1)
    x = v.ln_pre(x)
    inject = None
    if n:
        def inject(i: int, h: torch.Tensor) -> torch.Tensor:
            return _replace(h, -n, prompts[:, i]) if i < prompts.shape[1] else h
    x = _run_blocks(v.transformer, x, None, inject)
    if n:
        x = x[:, :-n]
    pooled, _ = v._pool(x)  # open_clip's own pooling (class token or mean, ln_post order)
    return pooled @ v.proj if v.proj is not None else pooled


def load_backbone(spec: dict, device: str | torch.device = "cpu") -> Backbone:
    """Load a frozen backbone from a spec; every failure is one clear PdiffError."""
    model_name, pretrained = spec["model"], spec.get("pretrained")
    path = resolve_checkpoint(model_name, pretrained)
    try:
        if pretrained == RANDOM:
            model = _random_model(model_name, device)
        else:
            model = open_clip.create_model(model_name, pretrained=str(path) if path else None,
                                           device=device)
    except PdiffError:
        raise
    except Exception as exc:  # open_clip raises many types for a bad file
        raise PdiffError(
            f"could not load checkpoint {path} into {model_name}: {exc}; check that the file is a "
            f"{model_name} checkpoint (or regenerate it)"
        ) from exc
    model.eval().requires_grad_(False)
    model.float()
    identity = {"model": model_name, "pretrained": pretrained,
                "sha256": file_sha256(str(path)) if path else None}
    log.info("backbone %s (%s), sha256 %s", model_name, pretrained,
             (identity["sha256"] or "random")[:12])
    return Backbone(
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        identity=identity,
        image_size=model.visual.image_size[0],
        amp=bool(spec.get("amp", False)),
    )


def _random_model(model_name: str, device: str | torch.device) -> nn.Module:
    """The architecture with weights drawn from a fixed seed, the same in every job: open_clip
    initialises on the CPU before moving the model, so the CPU generator alone decides them.
    Only that generator is seeded (torch.manual_seed would reseed CUDA's too), inside a fork
    that restores the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(RANDOM_SEED)
        return open_clip.create_model(model_name, pretrained=None, device=device)


def check_identity(expected: dict, found: dict, what: str) -> None:
    """Refuse to combine artifacts computed with different backbones."""
    keys = ("model", "pretrained", "sha256")
    if any(expected.get(k) != found.get(k) for k in keys):
        raise PdiffError(
            f"{what} was built with backbone {found.get('model')}/{found.get('pretrained')} "
            f"(sha256 {str(found.get('sha256'))[:12]}), but this run uses "
            f"{expected.get('model')}/{expected.get('pretrained')} "
            f"(sha256 {str(expected.get('sha256'))[:12]}); rebuild it with this backbone"
        )
