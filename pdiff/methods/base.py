"""The one interface every host prompt-learning method implements.

Baseline training broadcasts the learned prompt to the batch, overfitting optimises B independent
prompts, evaluation feeds generated prompts: all three call the same `logits`. Prompts always carry
a leading batch dimension P, with P == 1 (one shared prompt) or P == B (one prompt per sample).
Nothing outside `pdiff/methods/` knows which method it is talking to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pdiff.backbone import Backbone
from pdiff.config import Config
from pdiff.errors import PdiffError
from pdiff.methods.packing import PromptLayout

Prompts = dict[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """The training recipe of a `method_params` block (`pdiff train`): the keys every method
    shares besides its prompt's own (:class:`MethodConfig`)."""

    optimizer: Literal["adam", "adamw", "sgd"] = "sgd"
    lr: float
    batch_size: int
    epochs: int
    momentum: float = 0.9  # sgd only
    weight_decay: float | None = None  # None: Dassl's 5e-4 with sgd, 0 with adam and adamw
    warmup_epochs: int = 0  # epochs at Dassl's constant warm-up lr before the cosine schedule

    @property
    def decay(self) -> float:
        """The weight decay in effect."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 5e-4 if self.optimizer == "sgd" else 0.0


@dataclass(frozen=True, kw_only=True)
class MethodConfig(Config):
    """A host method's own keys of its `method_params` block (the rest is its TrainConfig);
    each method extends it with its keys and their defaults."""

    #: Keys pdiff sets itself, never the config.
    INTERNAL: ClassVar[frozenset[str]] = frozenset({"init_seed"})

    init_seed: int = 0  # seeds the initial prompt; `pdiff train` sets it to the run's seed


@dataclass(frozen=True, kw_only=True)
class DeepConfig(MethodConfig):
    """The keys of a deep-prompt method."""

    depth: int = 1  # encoder layers receiving prompts (0: none)


@dataclass
class Inputs:
    """A batch as methods see it: cached frozen features and/or raw images.

    Textual methods only need the frozen image features (computed once per stage, a fast path);
    methods whose prompts enter the image encoder need the images.
    """

    features: torch.Tensor | None = None  # [B, E] frozen, L2-normalised
    images: torch.Tensor | None = None  # [B, 3, H, W] in [0, 1]

    def __len__(self) -> int:
        x = self.features if self.features is not None else self.images
        return 0 if x is None else x.shape[0]

    def __getitem__(self, idx) -> Inputs:
        return Inputs(
            None if self.features is None else self.features[idx],
            None if self.images is None else self.images[idx],
        )

    def to(self, device: torch.device) -> Inputs:
        return Inputs(
            None if self.features is None else self.features.to(device),
            None if self.images is None else self.images.to(device),
        )


@dataclass
class Anchor:
    """A weighted KL(reference || prompted) per sample, from the reference's log-probabilities
    [B, C]. With frozen CLIP's zero-shot prediction as reference it is the optional regulariser
    of per-sample overfitting (`overfit.kl_weight`), keeping every overfitted prompt near what
    frozen CLIP predicts, as PromptSRC's and KgCoOp's own regularisers do for theirs (PromptSRC's
    KL term is one too)."""

    log_probs: torch.Tensor
    weight: float

    def __getitem__(self, idx) -> Anchor:
        """The anchor of some samples (a micro-batch)."""
        return Anchor(self.log_probs[idx], self.weight)

    def penalty(self, logits: torch.Tensor) -> torch.Tensor:
        """[B]: weight * KL(zero-shot || softmax(logits)) per sample."""
        kl = F.kl_div(F.log_softmax(logits, -1), self.log_probs, reduction="none",
                      log_target=True)
        return self.weight * kl.sum(-1)


def anchored(loss: torch.Tensor, logits: torch.Tensor, anchor: Anchor | None) -> torch.Tensor:
    """`loss` [B] plus the anchor's penalty when there is one."""
    return loss if anchor is None else loss + anchor.penalty(logits)


class PromptMethod(nn.Module):
    """Base class: a frozen backbone plus learnable prompt tensors and shared parameters."""

    name: ClassVar[str]
    needs_images: ClassVar[bool] = False  # True when prompts enter the image encoder
    # True when prompts enter the class texts: P per-sample prompts then mean P x C sequences
    per_sample_texts: ClassVar[bool] = False
    # True when even the learned prompt gives each image its own class texts (CoCoOp's meta-net)
    image_conditioned_texts: ClassVar[bool] = False
    #: The method's own keys and their defaults.
    config_type: ClassVar[type[MethodConfig]] = MethodConfig
    config: MethodConfig

    def __init__(self, backbone: Backbone, classnames: list[str], template: str, params: dict):
        super().__init__()
        # A plain attribute, not a submodule: the backbone is frozen and never checkpointed.
        object.__setattr__(self, "backbone", backbone)
        # params as given (what checkpoints record); config as read
        self.template, self.params = template, params
        self.config = self.read_config(params)
        self.prompt = nn.ParameterDict()  # the learned prompt (per-sample shapes, no batch dim)
        self.set_classnames(classnames)

    @classmethod
    def read_config(cls, params: Mapping[str, Any]) -> MethodConfig:
        """The method's own keys of ``params`` (the training recipe's are TrainConfig's)."""
        return cls.config_type.from_dict(params, f"method_params.{cls.name}",
                                         also=TrainConfig.keys())

    # --- what subclasses provide -------------------------------------------------------------
    def set_classnames(self, classnames: list[str]) -> None:
        """Rebuild class-dependent tables (e.g. for evaluation on new classes)."""
        self.classnames = list(classnames)

    def features(self, inputs: Inputs, prompts: Prompts, classes: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image features [B, E] and class text features [1 | B, C, E]; with class
        indices `classes` [B, K], only each sample's own K classes: [B, K, E]."""
        raise NotImplementedError

    # --- training hooks (no-ops unless a method aggregates over epochs) -----------------------
    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Called by baseline training after every epoch."""

    def end_training(self) -> None:
        """Called once after the last epoch, before the prompt is saved."""

    def training_state(self) -> dict[str, torch.Tensor]:
        """State kept across epochs besides the parameters (e.g. running averages), as tensors:
        saved with every resume checkpoint of baseline training."""
        return {}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`training_state` returned (when training resumes)."""

    # --- shared behaviour -------------------------------------------------------------------
    @property
    def layout(self) -> PromptLayout:
        return PromptLayout.from_spec({k: tuple(v.shape) for k, v in self.prompt.items()})

    def init_prompt(self) -> Prompts:
        """The learned prompt with a batch dim of 1: the starting point of overfitting."""
        return {k: v.detach()[None].clone() for k, v in self.prompt.items()}

    def learned_prompts(self) -> Prompts:
        return {k: v[None] for k, v in self.prompt.items()}

    def learnable_parameters(self) -> list[nn.Parameter]:
        """What baseline training optimises: the prompt and any shared parameters."""
        return [p for p in self.parameters() if p.requires_grad]

    def logits(self, inputs: Inputs, prompts: Prompts | None = None,
               classes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, C] for the current class names; `prompts` None means the learned prompt;
        with class indices `classes` [B, K], each sample's logits of its own K classes."""
        image, text = self.encode(inputs, prompts, classes)
        return self.backbone.logit_scale * cosine(image, text)

    def encode(self, inputs: Inputs, prompts: Prompts | None = None,
               classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`features` under the backbone's mixed precision, returned in fp32."""
        with self.backbone.autocast():
            image, text = self.features(
                inputs, self.learned_prompts() if prompts is None else prompts, classes)
        return image.float(), text.float()

    def condition(self, inputs: Inputs) -> torch.Tensor:
        """The frozen CLIP image feature that conditions prompt diffusion."""
        if inputs.features is not None:
            return inputs.features
        return self.backbone.encode_images(inputs.images)

    def loss(self, inputs: Inputs, labels: torch.Tensor, prompts: Prompts | None = None
             ) -> torch.Tensor:
        """Training loss of baseline prompt learning (methods add their regularisers)."""
        return F.cross_entropy(self.logits(inputs, prompts), labels)

    def per_sample_loss(self, inputs: Inputs, labels: torch.Tensor, prompts: Prompts,
                        anchor: Anchor | None = None) -> torch.Tensor:
        """Cross-entropy of each sample under its own prompt, [B]: the overfitting objective.
        Methods with regularisers add them per sample; every method adds the anchor's penalty."""
        logits = self.logits(inputs, prompts)
        return anchored(F.cross_entropy(logits, labels, reduction="none"), logits, anchor)

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """Everything training changed: prompt and shared parameters (never the backbone)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}


def cosine(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """image [B, E] x text [1 | B, C, E] -> [B, C]: one shared or one per-image text table."""
    if text.shape[0] == 1:
        return image @ text[0].T
    return torch.einsum("be,bce->bc", image, text)


def check_depth(config: DeepConfig, layers: int, method: str) -> int:
    """The prompt depth of a deep-prompt method, validated against the encoder's layers."""
    depth = int(config.depth)
    if not 0 <= depth <= layers:
        raise PdiffError(f"method_params.{method}.depth is {depth}, but the encoder has {layers} "
                         f"layers; use a depth in 0..{layers}")
    return depth


def seeded_linear(n_in: int, n_out: int, gen: torch.Generator) -> nn.Linear:
    """nn.Linear with PyTorch's default uniform init drawn from `gen` (not the global RNG)."""
    layer = nn.Linear(n_in, n_out)
    bound = n_in ** -0.5
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.uniform_(-bound, bound, generator=gen)
    return layer
