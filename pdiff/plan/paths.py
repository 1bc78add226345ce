"""Every path the workflow reads or writes, built here only.

Each function gives a concrete path for concrete arguments and the rule's pattern for the
default ones (Snakemake wildcards such as `{dataset}`), so a rule's output and the inputs that
ask for it are spelled once. Everything lives under `results`; the data under `data.root`, the
weights cache under `backbone.weights_dir`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pdiff.plan.names import DEFAULT, PRETRAIN, RANDOM, SHIPPED, VAL


def run_id(dataset: str = "{dataset}", method: str = "{method}", classes: str = "{classes}",
           seed: Any = "{seed}") -> str:
    """One trained run, relative to its stage's folder (runs/, logs/<rule>/, ...)."""
    return f"{dataset}/{method}/{classes}/seed{seed}"


#: A trained run's wildcards, relative to its stage's folder.
RUN = run_id()


def is_tag(pretrained: str) -> bool:
    """Whether `backbone.pretrained` is an open_clip pretrained tag (e.g. openai), not one of
    shipped/pretrain/random or a checkpoint path: the local fetch_weights rule caches it once
    and every compute job loads only that file."""
    return pretrained not in (SHIPPED, PRETRAIN, RANDOM) and not re.search(
        r"[/\\]|\.(safetensors|pt|pth|bin)$", pretrained
    )


def check_report(check_dir: str | Path, dataset: str) -> str:
    """check_data's report on `dataset` (the cost model reads its counts)."""
    return f"{check_dir}/{dataset}.json"


class Paths:
    """The workflow's paths for one config."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.results: str = cfg["results"]
        self.data_root: str = cfg["data"]["root"]
        self.shots: int = cfg["shots"]
        self.model: str = cfg["backbone"]["model"]
        pretrained = cfg["backbone"]["pretrained"]
        #: the open_clip weights cache fetch_weights fills
        self.weights_dir: str = cfg["backbone"]["weights_dir"]
        self.weights: str | None = (
            f"{self.weights_dir}/{self.model}/{pretrained}.safetensors"
            if is_tag(pretrained)
            else None
        )

    # ---- data, weights and draws ----------------------------------------------------------

    @property
    def manifest(self) -> str:
        return f"{self.data_root}/manifest.json"

    def backbone(self, model: str = "{model}", ext: str = "safetensors") -> str:
        """The pretrained demo backbone (`pretrain`), or its metrics with ext="json"."""
        return f"{self.results}/backbone/{model}.{ext}"

    @property
    def check_dir(self) -> str:
        """check_data's reports, which the cost model reads too."""
        return f"{self.results}/data/check"

    def check(self, dataset: str = "{dataset}") -> str:
        return check_report(self.check_dir, dataset)

    def draw(self, dataset: str = "{dataset}", seed: Any = "{seed}", shots: Any = None) -> str:
        """One few-shot draw, relative to its stage's folder (`shots`: the config's)."""
        shots = self.shots if shots is None else shots
        return f"{dataset}/shots{shots}_seed{seed}"

    def fewshot(self, dataset: str = "{dataset}", seed: Any = "{seed}", shots: Any = None) -> str:
        """The CoOp few-shot draw's JSON."""
        return f"{self.results}/fewshot/{self.draw(dataset, seed, shots)}.json"

    def test_features(self, dataset: str = "{dataset}") -> str:
        """The frozen features of a test split, whatever method, seed or mode reads them."""
        return f"{self.results}/features/{dataset}/test.h5"

    def fewshot_features(self, dataset: str = "{dataset}", seed: Any = "{seed}") -> str:
        """The frozen features of one few-shot draw (with the augmented views)."""
        return f"{self.results}/features/{self.draw(dataset, seed)}.h5"

    # ---- runs ------------------------------------------------------------------------------

    def run(self, dataset: str = "{dataset}", method: str = "{method}",
            classes: str = "{classes}", seed: Any = "{seed}") -> str:
        return f"{self.results}/runs/{run_id(dataset, method, classes, seed)}"

    def prompt(self, *run: Any) -> str:
        return f"{self.run(*run)}/prompt.safetensors"

    def store(self, *run: Any, ov: str = "{ov}") -> str:
        return f"{self.run(*run)}/{ov}/store.h5"

    def dit(self, *run: Any, ov: str = "{ov}", dv: str = "{dv}", ext: str = "safetensors") -> str:
        """The DiT, or with ext="json" its held-out diagnostics."""
        return f"{self.run(*run)}/{ov}/{dv}/dit.{ext}"

    def evaluation(self, *run: Any, mode: str = "baseline",
                   combo: tuple[str, ...] = ("{ov}", "{dv}", "{sv}"), val: bool = False) -> str:
        """eval/baseline.json, or eval/diffusion/<overfit>/<diffusion>/<sampling>.json; with
        `val` the run's evaluation on its few-shot validation split, beside them in the same
        layout under eval/val/."""
        folder = f"{self.run(*run)}/eval" + (f"/{VAL}" if val else "")
        if mode == "baseline":
            return f"{folder}/baseline.json"
        return f"{folder}/diffusion/{'/'.join(combo)}.json"

    def default_dit_diagnostics(self, *run: Any) -> str:
        return self.dit(*run, ov=DEFAULT, dv=DEFAULT, ext="json")

    def zeroshot(self, dataset: str = "{dataset}") -> str:
        return f"{self.results}/zeroshot/{dataset}.json"

    # ---- report, logs, benchmarks ------------------------------------------------------------

    @property
    def report_dir(self) -> str:
        return f"{self.results}/report"

    def log(self, rule: str, name: str) -> str:
        return f"{self.results}/logs/{rule}/{name}.log"

    def benchmark(self, rule: str, name: str) -> str:
        return f"{self.results}/benchmarks/{rule}/{name}.tsv"
