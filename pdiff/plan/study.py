"""The plan of one config: its checks, paths, settings, recipes, targets, fingerprints, the
JSON params each rule hands the `pdiff` CLI, and each compute job's resources.

Every `params:` entry of a rule holds exactly the config slice that rule depends on, serialised
with sorted keys, so Snakemake's params rerun trigger reruns a job when, and only when, the
config it reads changes (e.g. the ODE solver touches evaluate_diffusion and report, nothing
else).

Resources come from the cost model (pdiff/cost/model.py, torch-free; DESIGN.md §9): each compute
job's runtime, mem_mb and, on a GPU, threads follow from its dataset (images, classes), method
and stage settings, with the `cost` key's margin. Throughputs come from `cost.throughputs`
(measured by `pdiff plan-cost --measure-only`), else from FLOP-count assumptions. The local rules
(data checks, draws, weights, report) keep fixed, small resources. On a CPU (`gpu: 0`) threads
stay the rules' own, sized for the 2-core demo.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pdiff.cost import model as cost
from pdiff.cost.workflow import config_estimator
from pdiff.plan.checks import check_config
from pdiff.plan.config import REPO, schema_path
from pdiff.plan.fingerprints import Fingerprints
from pdiff.plan.names import PRETRAIN, VAL, ZEROSHOT
from pdiff.plan.paths import Paths
from pdiff.plan.recipes import check_recipes, method_params
from pdiff.plan.targets import EvalSet, Targets
from pdiff.plan.variants import Settings

#: The world keys `pdiff pretrain` reads (the label space and image size; not the downstream
#: cast, seed or image counts).
PRETRAIN_WORLD_KEYS = ("colours", "objects", "image_size")
#: The world keys the rehearsal world reads: not the demo world's, which config/config.yaml
#: merges into every overlay's `world` (a demo world, with no `kind`, is passed whole).
REHEARSAL_WORLD_KEYS = (
    "kind",
    "seed",
    "train_per_class",
    "val_per_class",
    "test_per_class",
    "min_side",
    "max_side",
)


def to_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, so equal config gives an equal params string."""
    return json.dumps(obj, sort_keys=True)


def alternation(names: Iterable[str]) -> str:
    """A regex matching exactly one of `names` (never matching anything when empty)."""
    names = sorted(set(names), key=lambda n: (-len(n), n))
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


class Plan:
    """Everything the workflow plans for `cfg` (a prepared config: `pdiff.plan.config.prepare`),
    checked on construction (a ConfigError names the key). `root` is the repository the
    workflow runs from: its schema and the sources the code fingerprints hash."""

    def __init__(self, cfg: dict[str, Any], root: Path = REPO) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.root = Path(root)
        schema = schema_path(self.root)
        self.protocols: dict[str, Any] = cfg["protocols"]
        # zero-shot CLIP is no trained run: its rows come from evaluate_zeroshot whatever
        # `methods` says.
        self.trained: list[str] = [m for m in cfg["methods"] if m != ZEROSHOT]
        self.synthetic: bool = cfg["data"]["source"] == "synthetic"
        self.pretrained: str = cfg["backbone"]["pretrained"]
        self.pretrain: bool = self.pretrained == PRETRAIN
        self.gpu: int = cfg["gpu"]
        self.augment: dict[str, Any] | None = cfg["augment"] if cfg["augment"]["enabled"] else None
        self.paths = Paths(cfg)
        self.settings = Settings(cfg, self.trained, schema)
        check_recipes(cfg, schema)
        self.targets = Targets(cfg, self.trained, self.paths, self.settings)
        self.code = Fingerprints(self.root)
        self.estimator = config_estimator(cfg, Path(self.paths.check_dir))

    # ---- Snakemake's view ----------------------------------------------------------------

    def wildcard_constraints(self) -> dict[str, str]:
        s = self.settings
        return {
            "ov": alternation(s.stage_names("overfit")),
            "dv": alternation(s.stage_names("diffusion")),
            "sv": alternation(s.stage_names("sampling")),
            "dataset": alternation(self.cfg["datasets"]),
            "method": alternation(self.trained),
            "classes": "base|all",
            "seed": r"\d+",
            "shots": r"\d+",
            "model": re.escape(self.paths.model),
        }

    def backbone_input(self) -> dict[str, str]:
        """The checkpoint file jobs load when the workflow makes it: the pretrained demo model
        (pretrained: pretrain) or the cached open_clip weights (pretrained: an open_clip tag)."""
        if self.pretrain:
            return {"backbone": self.paths.backbone(self.paths.model)}
        if self.paths.weights:
            return {"weights": self.paths.weights}
        return {}

    def world_code(self) -> str:
        return self.code.world(self.cfg["world"].get("kind", "synthetic"))

    # ---- params: JSON slices handed to the CLI ---------------------------------------------

    def dataset_json(self, name: str) -> str:
        return to_json({"name": name, **self.cfg["datasets"][name]})

    def backbone_json(self) -> str:
        paths = self.paths
        pretrained = (
            paths.backbone(paths.model) if self.pretrain else paths.weights or self.pretrained
        )
        spec = {"model": paths.model, "pretrained": pretrained}
        if self.cfg["backbone"].get("amp"):  # only when on: default params stay as they were
            spec["amp"] = True
        return to_json(spec)

    def world_json(self) -> str:
        world = self.cfg["world"]
        if world.get("kind") == "rehearsal":
            world = {k: world[k] for k in REHEARSAL_WORLD_KEYS}
        return to_json(world)

    def pretrain_world_json(self) -> str:
        return to_json({k: self.cfg["world"][k] for k in PRETRAIN_WORLD_KEYS})

    def compute_params(self) -> dict[str, Any]:
        """The `compute` section for the --params of every job that encodes images x classes
        texts (train, overfit, fit_diffusion, evaluate_*); nothing when the config leaves it
        out, so the params of a config without it stay as they were."""
        return {"compute": self.cfg["compute"]} if "compute" in self.cfg else {}

    def method_params(self, method: str, dataset: str, classes: str) -> dict[str, Any]:
        return method_params(self.cfg, method, dataset, classes)

    def method_json(self, method: str, dataset: str, classes: str) -> str:
        return to_json({**self.method_params(method, dataset, classes), **self.compute_params()})

    def stage_json(self, stage: str, variant: str, method: str) -> str:
        """--params of overfit and fit_diffusion: the stage's config and `compute`."""
        return to_json(
            {**self.settings.stage_config(stage, variant, method), **self.compute_params()}
        )

    def evaluation_json(self, sampling: Mapping[str, Any] | None = None) -> str:
        """--params of an evaluation: `evaluation`, the sampling setting of a diffusion
        evaluation, `compute`."""
        params: dict[str, Any] = {"evaluation": self.cfg["evaluation"]}
        if sampling is not None:
            params["sampling"] = sampling
        return to_json({**params, **self.compute_params()})

    def sets_json(self, sets: Sequence[EvalSet]) -> str:
        """The --sets argument: catalogue entries and splits of `sets`."""
        return to_json(
            [
                {"dataset": {"name": t, **self.cfg["datasets"][t]}, "split": split}
                for t, split in sets
            ]
        )

    def val_sets_json(self, dataset: str, classes: str, seed: Any) -> str:
        """The --sets argument of a run's validation: its own dataset's draw, in its own classes,
        read through the draw's feature cache (its `val` part)."""
        entry = {
            "dataset": {"name": dataset, **self.cfg["datasets"][dataset]},
            "split": VAL,
            "classes": classes,
            "fewshot": self.paths.fewshot(dataset, seed),
            "features": self.paths.fewshot_features(dataset, seed),
        }
        return to_json([entry])

    def augment_arg(self) -> str:
        """`--augment <json>` when training augmentation is on (else nothing: the params of a
        config without it stay as they were)."""
        return f"--augment '{to_json(self.augment)}'" if self.augment else ""

    def limit_arg(self, key: str) -> str:
        """`--max-images N` for the `limit` key (else nothing: params stay as they were)."""
        n = self.cfg.get("limit", {}).get(key)
        return f"--max-images {n}" if n else ""

    # ---- resources from the cost model -------------------------------------------------------

    def cost_job(self, name: str, wildcards: Any) -> cost.Job:
        """The cost model's description of one job of rule `name` (the config its params
        hold); `wildcards` has the rule's wildcards as attributes."""
        limit = self.cfg.get("limit", {})
        common = dict(
            shots=self.cfg["shots"],
            eval_batch=self.cfg["evaluation"]["batch_size"],
            max_train=limit.get("train_images"),
            max_test=limit.get("test_images"),
        )
        if name == "features_test":
            return cost.Job(name, dataset=wildcards.dataset, **common)
        if name == "features_fewshot":
            views = self.augment["views"] if self.augment else 0
            return cost.Job(name, dataset=wildcards.dataset, views=views, **common)
        if name == "evaluate_zeroshot":
            sets = tuple(self.targets.zeroshot_sets(wildcards.dataset))
            return cost.Job(name, method=ZEROSHOT, sets=sets, **common)
        run = dict(
            dataset=wildcards.dataset,
            method=wildcards.method,
            classes=wildcards.classes,
            recipe=self.method_params(wildcards.method, wildcards.dataset, wildcards.classes),
            **common,
        )
        stage_config = self.settings.stage_config
        if name == "train":
            return cost.Job(name, augment=bool(self.augment), **run)
        if name == "overfit":
            stage = stage_config("overfit", wildcards.ov, wildcards.method)
            return cost.Job(name, stage=stage, **run)
        if name == "fit_diffusion":
            stage = stage_config("diffusion", wildcards.dv, wildcards.method)
            return cost.Job(name, stage=stage, **run)
        sets = tuple(self.targets.eval_sets(wildcards.dataset, wildcards.classes))
        if name == "evaluate_baseline":
            return cost.Job(name, sets=sets, **run)
        sampling = stage_config("sampling", wildcards.sv, wildcards.method)
        return cost.Job(name, sets=sets, sampling=sampling, **run)

    def threads(self, name: str) -> Callable[[Any], int]:
        """On a GPU, one plus the loader workers the job needs. On a CPU, one: the demo's jobs
        are small, so two of them side by side finish sooner than one on two threads (and a
        loader worker) would, with the same numbers (docs/performance.md, "Threads")."""

        def threads(wildcards: Any) -> int:
            return self.estimator.threads(self.cost_job(name, wildcards)) if self.gpu else 1

        return threads

    def runtime(self, name: str) -> Callable[[Any, int, int], int]:
        """Minutes to ask for (a retry asks for more)."""

        def runtime(wildcards: Any, threads: int, attempt: int) -> int:
            return self.estimator.runtime(self.cost_job(name, wildcards), threads, attempt)

        return runtime

    def mem_mb(self, name: str) -> Callable[[Any, int, int], int]:
        """Host memory to ask for, in MB (a retry asks for more)."""

        def mem_mb(wildcards: Any, threads: int, attempt: int) -> int:
            return self.estimator.mem_mb(self.cost_job(name, wildcards), threads, attempt)

        return mem_mb


