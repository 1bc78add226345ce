"""Contrastive pretraining of the demo backbone on the synthetic world (`pdiff pretrain`).

The shipped checkpoint `pdiff/assets/pdiff-tiny.safetensors` was produced by this module with
the recipe in `pdiff/assets/pdiff-tiny.json`; the `pretrain` rule reruns it when the config asks
(`backbone.pretrained: pretrain`). Image-caption pairs are drawn fresh every step, so there is no
dataset to overfit; captions mix generic and style-specific templates so that the zero-shot
template "a photo of a {}." works across styles.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pdiff import __version__
from pdiff.backbone import (
    encode_text_embeddings,
    file_sha256,
    normalise_images,
    register_model_configs,
)
from pdiff.data.synthetic import FAMILIES, STYLES, CaptionSampler, WorldSpec, render_batch
from pdiff.resume import Resume
from pdiff.utils import save_safetensors, set_seed, write_json

log = logging.getLogger(__name__)


def _lr_at(step: int, params: dict) -> float:
    warmup, total = params["warmup"], params["steps"]
    if step < warmup:
        return params["lr"] * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return params["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


class _TokenCache:
    """Tokenise each distinct caption once: the world has only a few thousand."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            for c, t in zip(missing, self.tokenizer(missing), strict=True):
                self.cache[c] = t
        return torch.stack([self.cache[c] for c in captions])


def _text_features(model, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(
        encode_text_embeddings(model, model.token_embedding(tokens), tokens.argmax(-1)), dim=-1
    )


def _image_features(model, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_image(normalise_images(model, images)), dim=-1)


@torch.no_grad()
def zero_shot_world(model, tokenizer, spec: WorldSpec, n_per_class: int = 8, seed: int = 12345
                    ) -> dict[str, float]:
    """Zero-shot accuracy (%) on fresh clean renders, per family and style."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for family in FAMILIES:
        names = spec.classnames(family)
        text = _text_features(model, tokenizer([f"a photo of a {c}." for c in names]))
        labels = torch.arange(len(names)).repeat_interleave(n_per_class)
        for style in STYLES:
            imgs = render_batch(family, labels % spec.objects, labels // spec.objects,
                                [style] * len(labels), gen, spec.image_size)
            pred = (_image_features(model, imgs) @ text.T).argmax(-1)
            out[f"{family}/{style}"] = 100.0 * (pred == labels).float().mean().item()
    model.train()
    return out


def pretrain(*, params: dict, world: dict, model_name: str, out: Path, metrics_out: Path
             ) -> dict:
    """Train `model_name` from scratch; checkpoints to `out`.resume so a killed job continues."""
    register_model_configs()
    gen = set_seed(params["seed"])
    spec = WorldSpec(world.get("colours", 8), world.get("objects", 6), world["image_size"])
    model = open_clip.create_model(model_name, pretrained=None)
    model.train()
    tokenizer = open_clip.get_tokenizer(model_name)
    tokens_of = _TokenCache(tokenizer)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2
                                                                and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": params["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=params["lr"], betas=(0.9, 0.98), eps=1e-6)
    sampler = CaptionSampler(spec, gen)

    resume = Resume(out, {"params": params, "world": world, "model": model_name}, "pretraining")
    start, history = 0, []
    state = resume.load()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start, history = int(state["step"]), list(state["history"])
        log.info("resuming pretraining at step %d", start)

    t0 = time.time()
    bar = tqdm(range(start, params["steps"]), desc="pretrain", initial=start,
               total=params["steps"], mininterval=5)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, params)
        images, captions, cls = sampler.sample(params["batch_size"])
        img = _image_features(model, images)
        txt = _text_features(model, tokens_of(captions))
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        # Several pairs in a batch can share a class: treat them all as positives.
        pos = (cls[:, None] == cls[None, :]).float()
        target = pos / pos.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                      + torch.sum(-target * logits.log_softmax(0).T, 1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if (step + 1) % 200 == 0 or step + 1 == params["steps"]:
            resume.save({"model": model.state_dict(), "opt": opt.state_dict(),
                         "gen": gen.get_state(), "step": step + 1, "history": history})
            log.info("step %d/%d loss %.4f", step + 1, params["steps"], loss.item())

    zs = zero_shot_world(model, tokenizer, spec)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, out, metadata={"model": model_name, "pdiff": __version__})
    metrics = {
        "model": model_name,
        "params": params,
        "world": world,
        "steps": params["steps"],
        "seconds": time.time() - t0,
        "final_loss": sum(history[-50:]) / max(1, len(history[-50:])),
        "zero_shot_clean": zs,
        "sha256": file_sha256(str(out)),
        "pdiff_version": __version__,
    }
    write_json(metrics_out, metrics)
    resume.clear()
    for k, v in zs.items():
        log.info("zero-shot %-18s %.1f%%", k, v)
    return metrics
