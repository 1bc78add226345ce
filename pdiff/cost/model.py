"""The cost model: how much each job of the workflow computes, and what that takes.

Torch-free: the workflow imports it to size every job's SLURM resources, and `pdiff plan-cost`
sums it over the whole DAG. A job's *work* follows from the config alone, in units that do not
depend on the machine:

=====================  ===========================================================================
image forwards         frozen image-tower passes, one per image (no autograd)
image fwd+bwd          image-tower passes with backward to deep visual prompts (VPT, MaPLe,
                       PromptSRC: prompts enter the image encoder)
text token-positions   token positions the class-text encoder computes: per prompt its "[SOT]
                       context" prefix once (shared by every class, pdiff.prefix_sharing), then
                       each class's "name . [EOT]" (or a template around the name), forward
                       or forward+backward: a per-image prompt means images x classes of them
DiT token-rows         training: steps x batch rows x prompt tokens; sampling: images x draws x
                       network evaluations (NFE) x prompt tokens
decoded images         image files decoded and preprocessed by the DataLoader's workers
=====================  ===========================================================================

`Throughputs` turn work into seconds (units per second, measured by
`pdiff plan-cost --measure-only` or assumed from FLOP counts) and into memory (activation bytes
kept for backward per unit). Text encodings under a memory budget run in chunks of at most
`max_pairs` (image, class) pairs (`compute.max_pairs`, where configured), so the live text
activations of one step are those of one chunk; overfitting runs micro-batches of samples within
that budget and, for prompts that enter the image tower, within `max_images` images under
autograd (`compute.max_images`), so a step holds one micro-batch's activations.

With `backbone.amp` the frozen towers run in bf16 autocast on a GPU: the assumed throughputs
give them a bf16 rate and half the activation bytes per unit; the DiT stays in fp32.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdiff.budget import micro_batch_size
from pdiff.errors import PdiffError

# --------------------------------------------------------------------------------------------
# The backbone's architecture, from open_clip's (or pdiff's) model config JSON
# --------------------------------------------------------------------------------------------

PDIFF_MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "model_configs"
HEAD_WIDTH = 64  # open_clip's default vision head width (heads = width / 64)


def model_config_path(model: str) -> Path:
    """pdiff's or open_clip's JSON config of `model`, found without importing open_clip."""
    own = PDIFF_MODEL_CONFIGS / f"{model}.json"
    if own.is_file():
        return own
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "model_configs" / f"{model}.json"
        if path.is_file():
            return path
    raise PdiffError(f"cost model: no model config for backbone.model {model!r} (looked in "
                     f"{PDIFF_MODEL_CONFIGS} and open_clip's model_configs)")


@dataclass(frozen=True)
class Arch:
    """The numbers of a CLIP model the cost model needs: a ViT image tower, a text transformer."""

    name: str
    embed_dim: int
    text_width: int
    text_layers: int
    vocab: int
    context: int
    vision_width: int
    vision_layers: int
    patch: int
    image_size: int

    @classmethod
    def of(cls, model: str) -> Arch:
        cfg = json.loads(model_config_path(model).read_text())
        v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        try:
            size = v["image_size"]
            return cls(model, int(cfg["embed_dim"]), int(t["width"]), int(t["layers"]),
                       int(t.get("vocab_size", 49408)), int(t.get("context_length", 77)),
                       int(v["width"]), int(v["layers"]), int(v["patch_size"]),
                       int(size[0] if isinstance(size, list) else size))
        except (KeyError, TypeError) as e:
            raise PdiffError(f"cost model: {model} is not a plain ViT + text transformer CLIP "
                             f"(its config lacks {e}); the cost model counts only those") from None

    @property
    def vision_tokens(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch) ** 2 + 1

    @property
    def params(self) -> int:
        """Parameters of both towers (transformer blocks, embeddings, projections)."""

        def blocks(w: int, layers: int) -> int:
            return layers * (12 * w * w + 13 * w)

        text = (self.vocab + self.context) * self.text_width + blocks(
            self.text_width, self.text_layers) + self.text_width * (self.embed_dim + 2)
        n = self.vision_tokens
        vision = (3 * self.patch**2 + n + 4) * self.vision_width + blocks(
            self.vision_width, self.vision_layers) + self.vision_width * self.embed_dim
        return text + vision + 1

    @property
    def image_flops(self) -> float:
        """FLOPs of one image-tower forward (patch embedding, blocks, attention)."""
        n, w = self.vision_tokens, self.vision_width
        patches = 2 * (n - 1) * 3 * self.patch**2 * w
        return patches + self.vision_layers * (24 * n * w * w + 4 * n * n * w)

    @property
    def text_token_flops(self) -> float:
        """FLOPs per text token-position of a forward (attention over ~10 positions is noise)."""
        return 24 * self.text_layers * self.text_width**2


# --------------------------------------------------------------------------------------------
# Throughputs: units per second and bytes per unit
# --------------------------------------------------------------------------------------------

THROUGHPUT_FORMAT = "pdiff-throughputs/1"
#: Effective fp32 FLOP/s of the assumed devices: an A100 at half its 19.5 TFLOP/s fp32 peak;
#: one thread of an AVX-512 core (measured: ViT-B-16 at 5.6 images/s on 2 threads).
ASSUMED_FLOPS = {"gpu": 10e12, "cpu": 1e11}
#: Effective FLOP/s of the frozen towers under `backbone.amp` (bf16 autocast, CUDA only): an
#: A100 at about a quarter of its 312 TFLOP/s bf16 dense peak (small per-layer matmuls, fp32
#: layer norms and softmax under autocast); on a CPU autocast is off, so the fp32 rate holds.
#: A guess like ASSUMED_FLOPS, not a measurement.
ASSUMED_AMP_FLOPS = {"gpu": 78e12, "cpu": ASSUMED_FLOPS["cpu"]}
ASSUMED_DECODE = 150.0  # images/s one loader worker decodes and resizes (a ~500 px JPEG)
#: A job's start: interpreter, torch, the weights and, on a GPU, the CUDA context.
ASSUMED_STARTUP_S = {"gpu": 30.0, "cpu": 10.0}
#: Floats of width kept for backward per token and block, as measured with
#: `saved_tensors_hooks` (pdiff/cost/measure.py) on ViT-B-16 and the benchmark's DiT: the image
#: tower's open_clip blocks 30 (plus attention maps per head), the class-text encoder's shared-
#: prefix blocks 15, the DiT's adaLN blocks 40.
IMAGE_SAVED_FLOATS, TEXT_SAVED_FLOATS, DIT_SAVED_FLOATS = 30, 15, 40
FWD_LIVE_LAYERS = 2  # a no-grad forward keeps about two blocks' activations alive at once
FLOAT_BYTES = 4  # fp32: weights, the DiT, prompt stores; the towers' activations too unless amp
AMP_BYTES = 2  # bf16: the towers' activations under `backbone.amp` on a GPU


@dataclass(frozen=True)
class Throughputs:
    """Per-unit speeds and memory of one machine and backbone (see the module docstring)."""

    source: str  # "measured" or "assumed: ..."
    device: str
    model: str
    threads: int
    image_fwd: float  # images/s, frozen image tower
    image_train: float  # images/s, forward + backward to deep visual prompts
    text_fwd: float  # text token-positions/s through the class-text encoder
    text_train: float  # text token-positions/s, forward + backward to the context
    dit_train: float  # DiT token-rows/s of a training step (forward, backward, AdamW)
    dit_fwd: float  # DiT token-rows/s of a forward (one ODE evaluation)
    decode: float  # images/s one loader worker decodes and preprocesses
    startup: float  # seconds of a job's start (backbone built from scratch)
    weights_bytes: float  # both towers' parameters
    image_bytes: float  # activation bytes kept for backward per image (fwd+bwd)
    text_bytes: float  # per text token-position (fwd+bwd)
    dit_bytes: float  # per DiT token-row of a training step
    dit: dict[str, int] = field(default_factory=dict)  # width, depth, heads measured at

    @classmethod
    def assumed(cls, arch: Arch, dit: Mapping[str, Any], device: str = "gpu",
                amp: bool = False) -> Throughputs:
        """FLOP-count estimates at the effective rate of `device` ("gpu" or "cpu"): a guess,
        labelled as one, for when nothing was measured. With `amp` (`backbone.amp`, a GPU) the
        frozen towers run at ASSUMED_AMP_FLOPS with bf16 activations; the DiT stays fp32."""
        flops = ASSUMED_FLOPS[device]
        amp = amp and device == "gpu"  # pdiff's autocast is CUDA-only
        towers = ASSUMED_AMP_FLOPS[device] if amp else flops
        act_bytes = AMP_BYTES if amp else FLOAT_BYTES
        label = (f"assumed: {flops / 1e12:g} TFLOP/s effective ({device})"
                 + (f", frozen towers {towers / 1e12:g} TFLOP/s bf16 autocast (backbone.amp)"
                    if amp else "") + ", FLOP counts")
        width, depth = int(dit["width"]), int(dit["depth"])
        dit_flops = 24 * depth * width * width
        text_saved = arch.text_layers * TEXT_SAVED_FLOATS * arch.text_width
        n = arch.vision_tokens
        heads = arch.vision_width // HEAD_WIDTH
        image_saved = arch.vision_layers * n * (IMAGE_SAVED_FLOATS * arch.vision_width
                                                + heads * n)
        return cls(
            source=label,
            device=device, model=arch.name, threads=1,
            image_fwd=towers / arch.image_flops,
            # frozen weights: backward computes input gradients only, about one more forward
            image_train=towers / (2 * arch.image_flops),
            text_fwd=towers / arch.text_token_flops,
            text_train=towers / (2 * arch.text_token_flops),
            dit_train=flops / (3 * dit_flops),  # the DiT's weights are trained
            dit_fwd=flops / dit_flops,
            decode=ASSUMED_DECODE, startup=ASSUMED_STARTUP_S[device],
            weights_bytes=FLOAT_BYTES * arch.params,
            image_bytes=act_bytes * image_saved,
            text_bytes=act_bytes * text_saved,
            dit_bytes=FLOAT_BYTES * depth * DIT_SAVED_FLOATS * width,
            dit={k: int(dit[k]) for k in ("width", "depth", "heads")},
        )

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps({"format": THROUGHPUT_FORMAT,
                                          **dataclasses.asdict(self)}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Throughputs:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PdiffError(f"cannot read throughputs {path} ({e}); write one with "
                             "`pdiff plan-cost --measure-only --out <file>`") from None
        if data.pop("format", None) != THROUGHPUT_FORMAT:
            raise PdiffError(f"{path} is not a {THROUGHPUT_FORMAT} file; write one with "
                             "`pdiff plan-cost --measure-only --out <file>`")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data)
        if missing:
            raise PdiffError(f"throughputs {path} lack {sorted(missing)}; measure again")
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------------------------
# Datasets and methods as the cost model sees them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSize:
    """Image counts per split, and the BPE token count of each class name in label order."""

    name: str
    train: int
    val: int
    test: int
    name_tokens: tuple[int, ...]
    template_tokens: int  # tokens of the template without the class name, [SOT]/[EOT] included
    source: str  # where the image counts come from
    names_source: str  # where the class names (their token counts) come from

    @property
    def classes(self) -> int:
        return len(self.name_tokens)

    def labels(self, split: str) -> range:
        """CoOp's base (first ceil(C/2) labels), new (the rest) or all classes."""
        half = math.ceil(self.classes / 2)
        return {"base": range(half), "new": range(half, self.classes),
                "all": range(self.classes)}[split]

    def fraction(self, split: str) -> float:
        return len(self.labels(split)) / self.classes

    def names(self, split: str) -> int:
        """Total name tokens of the split's classes."""
        r = self.labels(split)
        return sum(self.name_tokens[r.start : r.stop])


def approx_tokens(text: str) -> int:
    """A torch-free lower bound of CLIP's BPE token count: its pre-tokenizer's pieces (letter
    runs, single digits, punctuation runs), each at least one token."""
    return len(re.findall(r"[^\W\d_]+|\d|[^\w\s]+|_+", text))


def template_tokens(template: str, count: Callable[[str], int]) -> int:
    """Tokens of a template around the class name ("a photo of a {}."), [SOT]/[EOT] included:
    CLIP's tokenizer never merges across the spaces and punctuation around the name."""
    return count(template.replace("{}", " ")) + 2


def _context(recipe: Mapping[str, Any], count: Callable[[str], int]) -> tuple[int, int]:
    """(learned context vectors, context positions in the text): a phrase init longer than
    n_ctx keeps its remaining words fixed in the sequence (MaPLe)."""
    init = recipe.get("init", "random")
    phrase = count(str(init)) if init and init != "random" else 0
    n_ctx = int(recipe.get("n_ctx") or phrase)
    return n_ctx, max(n_ctx, phrase)


def _text_layout(n_ctx: int, depth: int, arch: Arch) -> list[tuple[int, int]]:
    """(vectors, width) of a context at layer 0 plus deep text prompts to `depth`."""
    return [(n_ctx * max(depth, 1), arch.text_width)]


@dataclass(frozen=True)
class MethodCost:
    """What a host method computes, per the interface in pdiff/methods (kept equal to it by
    tests/test_cost.py)."""

    images: bool  # prompts enter the image encoder: pixels decoded, image tower per job
    context: bool  # a learned context before every class name: class texts per prompt
    per_image_text: bool = False  # the learned prompt itself is per image (CoCoOp's meta-net)
    templates: int = 0  # hand-crafted template encodings per class when the classes are set
    frozen_image_term: bool = False  # training reads frozen features of augmented images
    layout: Callable[[Mapping[str, Any], int, Arch], list[tuple[int, int]]] = (
        lambda recipe, n_ctx, arch: [])

    def prompt_tokens(self, recipe: Mapping[str, Any], n_ctx: int, arch: Arch) -> int:
        """Rows of the packed prompt matrix the DiT generates (one per prompt vector)."""
        return sum(n for n, _ in self.layout(recipe, n_ctx, arch))

    def prompt_width(self, recipe: Mapping[str, Any], n_ctx: int, arch: Arch) -> int:
        return max((w for _, w in self.layout(recipe, n_ctx, arch)), default=0)


def _deep(recipe: Mapping[str, Any]) -> int:
    return int(recipe.get("depth", 1))  # pdiff.methods.base.check_depth's default


METHOD_COST: dict[str, MethodCost] = {
    "zeroshot": MethodCost(images=False, context=False, templates=1),
    "coop": MethodCost(images=False, context=True,
                       layout=lambda r, n, a: [(n, a.text_width)]),
    "cocoop": MethodCost(images=False, context=True, per_image_text=True,
                         layout=lambda r, n, a: [(n, a.text_width)]),
    "kgcoop": MethodCost(images=False, context=True, templates=1,
                         layout=lambda r, n, a: [(n, a.text_width)]),
    "vpt": MethodCost(images=True, context=False, templates=1,
                      layout=lambda r, n, a: [(_deep(r) * int(r["n_ctx"]), a.vision_width)]),
    "maple": MethodCost(images=True, context=True,
                        layout=lambda r, n, a: _text_layout(n, _deep(r), a)),
    # CLIP's seven ImageNet templates and the dataset's own (pdiff.methods.promptsrc.ENSEMBLE)
    "promptsrc": MethodCost(images=True, context=True, templates=8, frozen_image_term=True,
                            layout=lambda r, n, a: _text_layout(n, _deep(r), a) + [
                                (_deep(r) * int(r.get("n_ctx_vision", 4)), a.vision_width)]),
}


def method_cost(method: str) -> MethodCost:
    try:
        return METHOD_COST[method]
    except KeyError:
        raise PdiffError(f"cost model: no entry for method {method!r}; add it to METHOD_COST "
                         "in pdiff/cost/model.py beside its module in pdiff/methods") from None


#: Network evaluations per step of the fixed-grid solvers (torchdiffeq; implicit Adams with
#: one corrector iteration).
SOLVER_STAGES = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4,
                 "explicit_adams": 1, "implicit_adams": 2, "fixed_adams": 1}
FEATURES_BATCH = 64  # `pdiff features`' --batch-size (the features rules use the default)
#: The diffusion key of the sampled-class classification term: negatives per row besides the
#: true class (absent or null: every class).
CLS_NEGATIVES_KEY = "cls_negatives"

MAX_LOADER_WORKERS = 8  # more rarely helps: one worker decodes a few hundred images/s
MIN_RUNTIME = 10  # minutes: below this, queueing dominates anyway
MIN_MEM_MB = 1000
#: A job's process before any data: Python, torch and, on a GPU node, the CUDA context.
HOST_BYTES = {"gpu": 3e9, "cpu": 1e9}
WORKER_BYTES = 0.5e9  # one DataLoader worker process with its batches in flight

# --------------------------------------------------------------------------------------------
# Jobs and their work
# --------------------------------------------------------------------------------------------

COMPUTE_RULES = ("features_test", "features_fewshot", "train", "overfit", "fit_diffusion",
                 "evaluate_baseline", "evaluate_diffusion", "evaluate_zeroshot")


@dataclass(frozen=True)
class Job:
    """One job of the workflow as the cost model needs it (built from a rule's wildcards and
    config in pdiff/plan/study.py, or from a planned command by `pdiff plan-cost`)."""

    rule: str
    dataset: str = ""  # the training (or feature) dataset
    method: str = ""
    classes: str = "all"  # the run's class set: base | all
    recipe: Mapping[str, Any] = field(default_factory=dict)  # the run's method_params
    stage: Mapping[str, Any] = field(default_factory=dict)  # overfit or diffusion section
    sampling: Mapping[str, Any] = field(default_factory=dict)
    sets: tuple[tuple[str, str], ...] = ()  # evaluation (dataset, split) pairs
    shots: int = 0
    views: int = 0  # augmented views cached per training image (features_fewshot)
    augment: bool = False  # baseline training with the published augmentation
    eval_batch: int = 0
    max_train: int | None = None  # `limit.train_images`
    max_test: int | None = None  # `limit.test_images`


@dataclass
class Work:
    """A job's work in the module's units, plus what one step holds at once."""

    image_fwd: float = 0.0
    image_train: float = 0.0
    decoded: float = 0.0
    text_fwd: float = 0.0
    text_train: float = 0.0
    dit_steps: float = 0.0
    dit_train: float = 0.0
    dit_fwd: float = 0.0
    jobs: int = 1
    loads: int = 0  # jobs that build the backbone
    # the largest step: images, text token-positions and DiT token-rows live at once
    step_image_train: float = 0.0
    step_image_fwd: float = 0.0
    step_text_train: float = 0.0
    step_text_fwd: float = 0.0
    step_dit: float = 0.0
    held_bytes: float = 0.0  # data the job keeps in host memory throughout
    device_bytes: float = 0.0  # data the job keeps on the device throughout

    TOTALS = ("image_fwd", "image_train", "decoded", "text_fwd", "text_train", "dit_steps",
              "dit_train", "dit_fwd", "jobs", "loads")

    def __add__(self, other: Work) -> Work:
        """Totals add up; per-step and held quantities are the larger of the two."""
        return Work(**{f.name: (getattr(self, f.name) + getattr(other, f.name)
                                if f.name in self.TOTALS
                                else max(getattr(self, f.name), getattr(other, f.name)))
                       for f in dataclasses.fields(self)})


@dataclass
class Estimator:
    """Work, time and memory of jobs, for one config's backbone, datasets and throughputs."""

    arch: Arch
    throughputs: Throughputs
    sizes: Callable[[str], DatasetSize]
    count_tokens: Callable[[str], int] = approx_tokens
    max_pairs: int | None = None  # `compute.max_pairs`: (image, class) text pairs per chunk
    max_images: int | None = None  # `compute.max_images`: images under autograd at once
    margin: float = 2.0  # resources asked for: the estimate times this
    gpu: bool = False  # jobs run on a GPU: host memory holds no activations

    # --- helpers ------------------------------------------------------------------------
    def _fewshot(self, size: DatasetSize, shots: int, part: str, cap: int | None) -> float:
        """Images of a CoOp few-shot draw (all classes): min(shots, per class there) each,
        val capped at 4 shots, both parts at `limit.train_images`."""
        pool = size.train if part == "train" else size.val
        k = shots if part == "train" else min(shots, 4)  # pdiff.data.fewshot.MAX_VAL_SHOTS
        n = min(k, pool // size.classes) * size.classes
        return float(min(n, cap) if cap else n)

    def _test(self, size: DatasetSize, split: str, cap: int | None) -> float:
        """Test images of a split (the cap applies before the base/new subset)."""
        n = min(size.test, cap) if cap else size.test
        return n * size.fraction(split)

    def _seq(self, size: DatasetSize, split: str, positions: int) -> float:
        """Token-positions one prompt's class texts "[SOT] context name . [EOT]" encode: the
        "[SOT] context" prefix once, shared by every class (pdiff.prefix_sharing, exact for
        CLIP's causal text tower), then each class's "name . [EOT]"."""
        return 1 + positions + 2 * len(size.labels(split)) + size.names(split)

    def _templated(self, size: DatasetSize, split: str) -> float:
        return len(size.labels(split)) * size.template_tokens + size.names(split)

    def _pairs(self, prompts: float, size: DatasetSize, split: str, seq: float) -> float:
        """Text token-positions one step holds: `prompts` x the split's classes, chunked."""
        pairs = prompts * len(size.labels(split))
        live = min(pairs, self.max_pairs) if self.max_pairs else pairs
        return live * seq / len(size.labels(split))

    # --- the work of one job --------------------------------------------------------------
    def work(self, job: Job) -> Work:
        if job.rule not in COMPUTE_RULES:
            return Work()  # I/O-only local rules (data checks, draws, report): not counted
        w = Work(loads=1)
        e = self.arch.embed_dim * FLOAT_BYTES
        if job.rule == "features_test":
            size = self.sizes(job.dataset)
            n = self._test(size, "all", job.max_test)
            w.image_fwd = w.decoded = n
            w.step_image_fwd, w.held_bytes = FEATURES_BATCH, n * e
        elif job.rule == "features_fewshot":
            size = self.sizes(job.dataset)
            train = self._fewshot(size, job.shots, "train", job.max_train)
            val = self._fewshot(size, job.shots, "val", job.max_train)
            w.image_fwd = w.decoded = train * (1 + job.views) + val
            w.step_image_fwd, w.held_bytes = FEATURES_BATCH, train * (1 + job.views) * e
        elif job.rule == "evaluate_zeroshot":
            for target, split in job.sets:
                size = self.sizes(target)
                w.text_fwd += self._templated(size, split)
                w.step_text_fwd = max(w.step_text_fwd, self._templated(size, split))
        elif job.rule in ("evaluate_baseline", "evaluate_diffusion"):
            self._evaluate(job, w)
        else:
            self._run(job, w)
        return w

    def _run(self, job: Job, w: Work) -> None:
        """train, overfit and fit_diffusion: the run's few-shot images of its class set."""
        m, size = method_cost(job.method), self.sizes(job.dataset)
        frac = size.fraction(job.classes)
        n = self._fewshot(size, job.shots, "train", job.max_train) * frac
        val = self._fewshot(size, job.shots, "val", job.max_train) * frac
        n_ctx, positions = _context(job.recipe, self.count_tokens)
        seq = self._seq(size, job.classes, positions) if m.context else 0.0
        w.text_fwd += m.templates * self._templated(size, job.classes)
        e = self.arch.embed_dim * FLOAT_BYTES
        w.held_bytes = n * e
        if job.rule == "train":
            epochs, batch = int(job.recipe["epochs"]), int(job.recipe["batch_size"])
            if m.images:
                w.image_train = w.decoded = epochs * n
                w.step_image_train = min(batch, n)
                if m.frozen_image_term and job.augment:
                    w.image_fwd += epochs * n  # frozen features of each fresh crop
                w.image_fwd += n + val  # train and val accuracy after training
                w.decoded += n + val
            if m.per_image_text:
                w.text_train = epochs * n * seq
                w.text_fwd += (n + val) * seq
                w.step_text_train = self._pairs(min(batch, n), size, job.classes, seq)
            elif m.context:
                w.text_train = epochs * math.ceil(n / batch) * seq
                w.text_fwd += 2 * seq  # one shared prompt for the accuracies
                w.step_text_train = seq
        elif job.rule == "overfit":
            steps, batch = int(job.stage["steps"]), int(job.stage["batch_size"])
            if job.stage.get("kl_weight"):
                w.text_fwd += self._templated(size, job.classes)  # zero-shot anchor
            micro = micro_batch_size(  # as pdiff.overfit.micro_batch splits the batch
                min(batch, n), text_classes=len(size.labels(job.classes)) if m.context else None,
                image_prompts=m.images, max_pairs=self.max_pairs, max_images=self.max_images)
            if m.images:
                w.image_train, w.image_fwd, w.decoded = steps * n, n, n
                w.step_image_train = micro
            if m.context:  # every sample its own prompt: samples x classes texts per step
                w.text_train = steps * n * seq
                w.text_fwd += n * seq  # the loss after the last step
                w.step_text_train = self._pairs(micro, size, job.classes, seq)
        else:  # fit_diffusion
            d = job.stage
            hold = float(d.get("holdout", 0.0))
            held = min(n - 1, max(1, round(n * hold))) if hold > 0 and n > 1 else 0
            rows = min(int(d["batch_size"]), n - held)
            tokens = m.prompt_tokens(job.recipe, n_ctx, self.arch)
            width = m.prompt_width(job.recipe, n_ctx, self.arch)
            w.dit_steps = int(d["steps"])
            w.dit_train = w.dit_steps * rows * tokens
            w.step_dit = rows * tokens
            store = n * (tokens * width + self.arch.embed_dim) * FLOAT_BYTES
            w.held_bytes, w.device_bytes = 3 * store, store  # h5 read, tensor, normalised
            if float(d.get("cls_weight", 0)) > 0 and m.context and not m.images:
                cls_rows = min(int(d.get("cls_batch") or rows), rows)
                negatives = d.get(CLS_NEGATIVES_KEY)
                scored = size.classes if negatives is None else negatives + 1
                share = min(1.0, scored / size.classes)
                w.text_train = w.dit_steps * cls_rows * seq * share
                w.step_text_train = self._pairs(cls_rows * share, size, job.classes, seq)

    def _evaluate(self, job: Job, w: Work) -> None:
        m = method_cost(job.method)
        diffusion = job.rule == "evaluate_diffusion"
        draws = int(job.sampling.get("draws", 1)) if diffusion else 1
        nfe = int(job.sampling.get("steps", 0)) * SOLVER_STAGES.get(
            job.sampling.get("solver", "euler"), 1)
        n_ctx, positions = _context(job.recipe, self.count_tokens)
        tokens = m.prompt_tokens(job.recipe, n_ctx, self.arch)
        batch = job.eval_batch
        for target, split in job.sets:
            size = self.sizes(target)
            n = self._test(size, split, job.max_test)
            w.text_fwd += m.templates * self._templated(size, split)
            if m.images:
                w.image_fwd += draws * n
                w.decoded += n
                w.step_image_fwd = max(w.step_image_fwd, min(batch, n))
            if m.context:
                seq = self._seq(size, split, positions)
                if diffusion or m.per_image_text:  # a prompt per image: images x classes
                    w.text_fwd += draws * n * seq
                    live = self._pairs(min(batch, n), size, split, seq)
                else:  # the learned prompt, encoded once per batch
                    w.text_fwd += math.ceil(n / batch) * seq
                    live = seq
                w.step_text_fwd = max(w.step_text_fwd, live)
            if diffusion:
                w.dit_fwd += n * draws * nfe * tokens
                w.step_dit = max(w.step_dit, min(batch, n) * tokens)

    # --- seconds and bytes -----------------------------------------------------------------
    def compute_seconds(self, w: Work) -> float:
        """Seconds of device compute (image and text towers, DiT)."""
        t = self.throughputs
        return (w.image_fwd / t.image_fwd + w.image_train / t.image_train
                + w.text_fwd / t.text_fwd + w.text_train / t.text_train
                + w.dit_train / t.dit_train + w.dit_fwd / t.dit_fwd)

    def seconds(self, w: Work, workers: int) -> float:
        """Wall seconds: the jobs' starts, then device compute overlapped with decoding in
        `workers` DataLoader workers (none: the main process decodes between steps)."""
        compute, decode = self.compute_seconds(w), w.decoded / self.throughputs.decode
        busy = max(compute, decode / workers) if workers else compute + decode
        return w.loads * self.throughputs.startup + busy

    def peak_bytes(self, w: Work) -> float:
        """Peak device memory (host memory on a CPU): weights, data kept on the device, and
        the activations of the largest step."""
        t, a = self.throughputs, self.arch
        if not w.loads:
            return 0.0
        return (t.weights_bytes + w.device_bytes
                + w.step_image_train * t.image_bytes
                + w.step_image_fwd * t.image_bytes * FWD_LIVE_LAYERS / a.vision_layers
                + w.step_text_train * t.text_bytes
                + w.step_text_fwd * t.text_bytes * FWD_LIVE_LAYERS / a.text_layers
                + w.step_dit * t.dit_bytes)

    # --- SLURM resources ---------------------------------------------------------------------
    def workers(self, w: Work) -> int:
        """Loader workers that keep the device busy: decoding over compute time, at least one
        and at most MAX_LOADER_WORKERS; none for a job that decodes no image."""
        if not w.decoded:
            return 0
        decode = w.decoded / self.throughputs.decode
        need = math.ceil(decode / max(self.compute_seconds(w), 1e-9))
        return max(1, min(MAX_LOADER_WORKERS, need))

    def threads(self, job: Job) -> int:
        """A GPU job's threads: one, plus its loader workers (`pdiff` runs threads - 1)."""
        return 1 + self.workers(self.work(job))

    def runtime(self, job: Job, threads: int, attempt: int = 1) -> int:
        """Minutes to ask for: the estimate times the margin (and the attempt: a retry after a
        TIMEOUT asks for more), at least MIN_RUNTIME."""
        s = self.seconds(self.work(job), max(threads - 1, 0))
        return max(MIN_RUNTIME, math.ceil(self.margin * attempt * s / 60))

    def mem_mb(self, job: Job, threads: int, attempt: int = 1) -> int:
        """Host memory to ask for: the process, the weights, the data it holds and its
        loader workers; on a CPU also the activations. Times the margin and the attempt."""
        w = self.work(job)
        host = HOST_BYTES["gpu" if self.gpu else "cpu"] + self.throughputs.weights_bytes
        host += w.held_bytes + max(threads - 1, 0) * WORKER_BYTES
        if not self.gpu:
            host += self.peak_bytes(w) - self.throughputs.weights_bytes
        return max(MIN_MEM_MB, 100 * math.ceil(self.margin * attempt * host / 1e8))

