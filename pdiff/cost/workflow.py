"""The cost model as the workflow uses it, from the config alone (torch-free: every compute
job's resources are sized with it before any dataset is on disk): dataset sizes and the
estimator. Class names are unknown here, so every class gets ASSUMED_NAME_TOKENS and texts
the tokenizer's pieces; `pdiff plan-cost` (pdiff/cost/plan.py) builds the same estimator with
the real names and tokenizer."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pdiff.budget import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PAIRS
from pdiff.coop_sizes import PUBLISHED_COUNTS
from pdiff.cost.model import (
    Arch,
    DatasetSize,
    Estimator,
    Throughputs,
    approx_tokens,
    template_tokens,
)
from pdiff.plan.paths import check_report

#: BPE tokens of a class name whose name is not known here: above the benchmark's typical
#: names (ImageNet's 1,000 average 2.2, StanfordCars-like ones 8), so resources err high.
ASSUMED_NAME_TOKENS = 4
#: An entry without a template gets CoOp's: most are "a photo of a {}." (7 tokens).
ASSUMED_TEMPLATE = "a photo of a {}."
#: A dataset that is neither generated, checked on disk nor CoOp's: sized like ImageNet.
UNKNOWN = PUBLISHED_COUNTS["ImageNet"]


def world_counts(cfg: Mapping[str, Any], name: str) -> tuple[dict[str, int], str] | None:
    """Counts of a dataset the `prepare` rule generates (the demo or the rehearsal world)."""
    if cfg["data"]["source"] != "synthetic":
        return None
    world = cfg["world"]
    if world.get("kind") == "rehearsal":
        classes = PUBLISHED_COUNTS[name]["classes"]
        per = {s: world[f"{s}_per_class"] for s in ("train", "val", "test")}
        if name == "ImageNet":  # its val folder is the test set, as in CoOp
            per["val"] = per["test"]
        if "train" not in PUBLISHED_COUNTS[name]:  # the test-only variants
            per["train"] = per["val"] = 0
        return {"classes": classes, **{s: k * classes for s, k in per.items()}}, "rehearsal world"
    classes = world["colours"] * world["objects"]
    return ({"classes": classes, **{s: world[f"{s}_per_class"] * classes
                                    for s in ("train", "val", "test")}}, "demo world")


def checked_counts(check_dir: Path | None, name: str) -> dict[str, int] | None:
    """Counts `pdiff check-data` found on disk (its report), when the workflow has run it."""
    path = Path(check_report(check_dir, name)) if check_dir else None
    if path is None or not path.is_file():
        return None
    (report,) = json.loads(path.read_text())["datasets"]
    if report["status"] != "present":
        return None
    return {"classes": report["classes"], **report["counts"]}


def config_size(cfg: Mapping[str, Any], name: str, check_dir: Path | None = None,
                count: Callable[[str], int] = approx_tokens) -> DatasetSize:
    """Sizes of catalogue dataset `name`: of the generated world, else as checked on disk,
    else CoOp's published sizes, else ImageNet's (an assumption, said in `source`)."""
    found = world_counts(cfg, name)
    if found is None:
        checked = checked_counts(check_dir, name)
        if checked is not None:
            found = checked, "checked on disk"
        elif name in PUBLISHED_COUNTS:
            found = PUBLISHED_COUNTS[name], "CoOp's published sizes"
        else:
            found = UNKNOWN, "unknown dataset: assumed ImageNet's sizes"
    counts, source = found
    entry = cfg["datasets"].get(name) or {}
    return DatasetSize(
        name=name, train=counts.get("train", 0), val=counts.get("val", 0),
        test=counts["test"], name_tokens=(ASSUMED_NAME_TOKENS,) * counts["classes"],
        template_tokens=template_tokens(entry.get("template", ASSUMED_TEMPLATE), count),
        source=source, names_source=f"assumed: {ASSUMED_NAME_TOKENS} tokens each",
    )


def config_estimator(cfg: Mapping[str, Any], check_dir: Path,
                     sizes: Callable[[str], DatasetSize] | None = None,
                     count: Callable[[str], int] = approx_tokens,
                     throughputs: Throughputs | None = None) -> Estimator:
    """The estimator of a config: its backbone, `cost.throughputs` (else FLOP-count
    assumptions for a GPU or a CPU, as `gpu` says, with `backbone.amp`), `compute.max_pairs`
    and `compute.max_images`, `cost.margin`, and dataset sizes from the config
    (`config_size`) unless `sizes` is given."""
    arch = Arch.of(cfg["backbone"]["model"])
    cost = cfg["cost"]
    if throughputs is None:
        throughputs = (Throughputs.load(cost["throughputs"]) if "throughputs" in cost
                       else Throughputs.assumed(arch, cfg["diffusion"],
                                                "gpu" if cfg["gpu"] else "cpu", amp(cfg)))
    if sizes is None:
        sizes = functools.cache(lambda name: config_size(cfg, name, check_dir, count))
    compute = cfg.get("compute", {})
    return Estimator(arch, throughputs, sizes, count_tokens=count,
                     max_pairs=compute.get("max_pairs", DEFAULT_MAX_PAIRS),
                     max_images=compute.get("max_images", DEFAULT_MAX_IMAGES),
                     margin=cost["margin"], gpu=bool(cfg["gpu"]))


def amp(cfg: Mapping[str, Any]) -> bool:
    """Whether the config runs the frozen towers in bf16 autocast (`backbone.amp`)."""
    return bool(cfg["backbone"].get("amp", False))
