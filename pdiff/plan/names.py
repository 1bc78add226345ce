"""The workflow's vocabulary, defined once for the plan, the stages and the report (torch-free,
so the workflow and the report can import it without loading a model)."""

from __future__ import annotations

from collections.abc import Iterable

#: The protocols a config can switch on.
PROTOCOLS = ("base2new", "cross_dataset", "domain_generalization")
#: The protocols of the one all-class source run (cross-dataset and domain generalisation
#: evaluate the same run, as in the papers).
TRANSFER = ("cross_dataset", "domain_generalization")
#: The stages a prompt-diffusion setting changes, in the order they run.
STAGES = ("overfit", "diffusion", "sampling")
#: The folder (and report label) of a stage's settings as configured.
DEFAULT = "default"
#: zero-shot CLIP: evaluated on every dataset, never trained.
ZEROSHOT = "zeroshot"
#: The split of a run's few-shot validation images in its own classes (settings are chosen on
#: it, never on test); the other splits (base, new, all) are class subsets of the test split.
VAL = "val"

#: `backbone.pretrained` values that name no open_clip tag or checkpoint path: the demo's
#: checkpoint inside the package, seeded random weights (rehearsals only), and the demo's
#: contrastive pretraining by the workflow.
SHIPPED = "shipped"
RANDOM = "random"
PRETRAIN = "pretrain"


def default_ablation_protocols(protocols: Iterable[str]) -> list[str]:
    """The protocols settings are compared on when `ablation.protocols` is not given:
    base-to-new, else the configured transfer protocols."""
    protocols = list(protocols)
    return ["base2new"] if "base2new" in protocols else [p for p in TRANSFER if p in protocols]
