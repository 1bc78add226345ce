"""Few-shot draws and base-to-new class splits with CoOp/Dassl's exact semantics.

Numbers are only comparable with CoOp's if the *same images* are drawn, so this mirrors Dassl's
``DatasetBase.generate_fewshot_dataset`` (repeat=False) and CoOp's
``OxfordPets.subsample_classes`` step for step, including the order in which random numbers
are consumed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from pdiff.data.catalogue import DatasetSplits, Datum, parse_entries
from pdiff.errors import PdiffError
from pdiff.utils import write_json

log = logging.getLogger(__name__)

#: CoOp caps the few-shot validation set at 4 shots per class.
MAX_VAL_SHOTS = 4
SUBSAMPLES: tuple[str, ...] = ("all", "base", "new")
FEWSHOT_KEYS: tuple[str, ...] = ("dataset", "shots", "seed", "train", "val")


def split_by_label(data: list[Datum]) -> dict[int, list[Datum]]:
    """Group by label, labels in order of first appearance (Dassl's defaultdict iteration)."""
    groups: dict[int, list[Datum]] = defaultdict(list)
    for d in data:
        groups[d.label].append(d)
    return groups


def generate_fewshot(data: list[Datum], num_shots: int, seed_rng: random.Random) -> list[Datum]:
    """Dassl's ``generate_fewshot_dataset`` with ``repeat=False`` for one data source.

    Per label (first-appearance order): ``rng.sample(items, num_shots)`` when there are enough
    items, otherwise all of them (no rng call, as in Dassl). ``num_shots < 1`` means "use all".
    """
    if num_shots < 1:
        return list(data)
    out: list[Datum] = []
    for label, items in split_by_label(data).items():
        if len(items) >= num_shots:
            out.extend(seed_rng.sample(items, num_shots))
        else:
            log.warning(
                "label %d has only %d images (< %d shots); keeping all",
                label,
                len(items),
                num_shots,
            )
            out.extend(items)
    return out


def draw_fewshot(splits: DatasetSplits, num_shots: int, seed: int) -> dict[str, Any]:
    """Draw CoOp's few-shot train/val sets for (shots, seed).

    One ``random.Random(seed)`` is used for train first and then val, reproducing CoOp, which
    seeds Python's global ``random`` with the run seed and then samples in that order.
    """
    rng = random.Random(seed)
    train = generate_fewshot(splits.train, num_shots, rng)
    val = generate_fewshot(splits.val, min(num_shots, MAX_VAL_SHOTS), rng)
    log.info(
        "%s: %d-shot draw (seed %d): %d train, %d val images",
        splits.spec.name,
        num_shots,
        seed,
        len(train),
        len(val),
    )
    return {
        "dataset": splits.spec.name,
        "shots": num_shots,
        "seed": seed,
        "train": [d.to_list() for d in train],
        "val": [d.to_list() for d in val],
    }


def limited(data: list[Datum], max_images: int | None, seed: int = 0) -> list[Datum]:
    """At most `max_images` of `data`, a seeded choice kept in list order (`limit` in the
    config: rehearsals and quick checks; the published protocols use every image)."""
    if max_images is None or len(data) <= max_images:
        return data
    keep = sorted(random.Random(seed).sample(range(len(data)), max_images))
    return [data[i] for i in keep]


def limit_draw(draw: dict[str, Any], max_images: int | None) -> dict[str, Any]:
    """A draw with its train and val lists capped at `max_images` each (seeded by the draw)."""
    if max_images is None:
        return draw
    return {**draw, **{k: [d.to_list() for d in limited(fewshot_data(draw, k), max_images,
                                                        draw["seed"])]
                       for k in ("train", "val")}}


def save_fewshot(path: str | os.PathLike, draw: dict[str, Any]) -> None:
    """Write a draw as JSON atomically (a killed job never leaves a half-written draw)."""
    validate_fewshot(draw, path)
    write_json(path, {k: draw[k] for k in FEWSHOT_KEYS})


def validate_fewshot(draw: Any, source: str | os.PathLike) -> dict[str, Any]:
    """Check a draw's keys and entries; errors name ``source`` and how to regenerate it."""
    fix = "re-create it with `pdiff fewshot`"
    if not isinstance(draw, dict):
        raise PdiffError(f"few-shot file {source} must hold a JSON object; {fix}")
    missing = [k for k in FEWSHOT_KEYS if k not in draw]
    if missing:
        raise PdiffError(f"few-shot file {source} lacks key(s) {missing}; {fix}")
    for key in ("shots", "seed"):
        if not isinstance(draw[key], int) or isinstance(draw[key], bool):
            raise PdiffError(
                f"few-shot file {source}: {key!r} must be an integer, got {draw[key]!r}; {fix}"
            )
    for key in ("train", "val"):
        try:
            parse_entries(draw[key], source, key)
        except PdiffError as e:
            raise PdiffError(f"{e}; or {fix}") from None
    return draw


def load_fewshot(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a draw written by :func:`save_fewshot`."""
    path = Path(path)
    if not path.is_file():
        raise PdiffError(f"few-shot file {path} not found; create it with `pdiff fewshot`")
    try:
        draw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PdiffError(
            f"few-shot file {path} is corrupt ({e}); delete it and re-create it with "
            "`pdiff fewshot`"
        ) from e
    return validate_fewshot(draw, path)


def fewshot_data(draw: dict[str, Any], split: str) -> list[Datum]:
    """The ``"train"`` or ``"val"`` list of a draw as Datum objects."""
    if split not in ("train", "val"):
        raise PdiffError(f"few-shot split must be 'train' or 'val', got {split!r}")
    return parse_entries(draw[split], f"few-shot draw {draw.get('dataset')!r}", split)


def _check_subsample(subsample: str) -> None:
    if subsample not in SUBSAMPLES:
        raise PdiffError(
            f"subsample must be one of {list(SUBSAMPLES)}, got {subsample!r}; fix the config"
        )


def _selected(labels: list[int], subsample: str) -> list[int]:
    # CoOp: first ceil(n/2) sorted labels are "base", the rest "new".
    m = math.ceil(len(labels) / 2)
    return labels[:m] if subsample == "base" else labels[m:]


def subsample_classes(*datasets: list[Datum], subsample: str = "all") -> tuple[list[Datum], ...]:
    """CoOp's base-to-new split: keep the base or new half of the classes and relabel them.

    Labels are the sorted set over the FIRST dataset (as in CoOp, usually the few-shot train
    set); kept labels map to 0..k-1 in sorted order; class names are unchanged.
    """
    _check_subsample(subsample)
    if subsample == "all" or not datasets:
        return tuple(datasets)
    labels = sorted({d.label for d in datasets[0]})
    selected = _selected(labels, subsample)
    relabel = {y: i for i, y in enumerate(selected)}
    return tuple(
        [Datum(d.impath, relabel[d.label], d.classname) for d in data if d.label in relabel]
        for data in datasets
    )


def class_subset(classnames: list[str], subsample: str) -> list[str]:
    """Class names of the ``subsample`` half, in relabelled order (index = new label).

    Assumes every class is present in the dataset :func:`subsample_classes` splits on, which
    holds for CoOp's few-shot train sets.
    """
    _check_subsample(subsample)
    if subsample == "all":
        return list(classnames)
    return [classnames[y] for y in _selected(list(range(len(classnames))), subsample)]
