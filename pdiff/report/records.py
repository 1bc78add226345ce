"""The report's inputs: the evaluation JSON files `pdiff evaluate` writes, checked and indexed.

Every record is keyed by what it evaluated (mode, method, training run, target, split and the
prompt-diffusion setting), so that a table can look up each number it needs and a duplicate or
malformed file is named in one error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pdiff.errors import PdiffError
from pdiff.plan.names import DEFAULT, STAGES, VAL

#: The keys every evaluation JSON carries (the contract of `pdiff evaluate`).
REQUIRED_KEYS = (
    "mode",
    "method",
    "train_dataset",
    "train_classes",
    "seed",
    "target",
    "split",
    "accuracy",
    "correct",
    "total",
    "ece",
    "seconds",
    "images_per_second",
    "nfe",
    "sampling",
)
MODES = ("zeroshot", "baseline", "diffusion")
#: VAL: a run's few-shot validation images in its own classes (settings are chosen on it);
#: the others are class subsets of the test split.
SPLITS = ("base", "new", "all", VAL)

#: (mode, method, train_dataset, train_classes, seed, target, split, setting label)
Key = tuple[str, str, Any, Any, Any, str, str, str]


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def se(values: Sequence[float]) -> float | None:
    """Standard error of the mean (sample std / sqrt(n)); None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mu = mean(values)
    var = math.fsum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def variant_label(variant: dict | None) -> str:
    """"default", or the one stage setting that differs, e.g. "sampling: steps=10"."""
    parts = [f"{k}: {v}" for k, v in (variant or {}).items() if k in STAGES and v != DEFAULT]
    return "; ".join(parts) or DEFAULT


def make_key(mode, method, train_dataset, train_classes, seed, target, split, variant=DEFAULT
         ) -> Key:
    if mode == "zeroshot":  # one deterministic evaluation, whatever was trained
        method, train_dataset, train_classes, seed = "zeroshot", None, None, None
    return (mode, method, train_dataset, train_classes, seed, target, split, variant)


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def load_evaluation(path: Path) -> list[dict]:
    """Read and check one evaluation bundle ({"evaluations": [record, ...]}), naming the file in
    every error."""
    path = Path(path)
    from pdiff.utils import read_json  # lazy: pdiff.utils imports torch; `pdiff docs` must not

    bundle = read_json(path, "report input", "run its `pdiff evaluate` again")
    records = bundle.get("evaluations") if isinstance(bundle, dict) else None
    if not isinstance(records, list) or not records:
        raise PdiffError(f"report input {path} holds no evaluations (expected "
                         '{"evaluations": [...]} as written by `pdiff evaluate`)')
    return [_check_record(path, r) for r in records]


def _check_record(path: Path, record: Any) -> dict:
    if not isinstance(record, dict):
        raise PdiffError(f"report input {path} holds an evaluation that is no JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise PdiffError(
            f"report input {path} lacks key(s) {', '.join(missing)}; an evaluation JSON "
            f"carries {', '.join(REQUIRED_KEYS)}"
        )
    if record["mode"] not in MODES:
        raise PdiffError(f"report input {path}: mode {record['mode']!r} is not one of {MODES}")
    if record["split"] not in SPLITS:
        raise PdiffError(f"report input {path}: split {record['split']!r} is not one of {SPLITS}")
    acc = record["accuracy"]
    if not is_number(acc) or not 0 <= acc <= 100:
        raise PdiffError(f"report input {path}: accuracy {acc!r} is not a percentage in [0, 100]")
    if record["mode"] != "zeroshot":
        for k in ("method", "train_dataset", "train_classes", "seed"):
            if record[k] is None:
                raise PdiffError(f"report input {path}: {k} is null in {record['mode']} mode")
    return record


def index_evaluations(inputs: Iterable[Path]) -> dict[Key, dict]:
    index: dict[Key, dict] = {}
    for path in inputs:
        for r in load_evaluation(path):
            key = make_key(r["mode"], r["method"], r["train_dataset"], r["train_classes"],
                       r["seed"], r["target"], r["split"], variant_label(r.get("variant")))
            if key in index:
                raise PdiffError(
                    f"report inputs {index[key]['_file']} and {path} hold the same evaluation "
                    f"({r['mode']} {r['method']} on {r['target']}/{r['split']}, seed {r['seed']}"
                    f", {key[-1]})"
                )
            index[key] = {**r, "_file": str(path)}
    return index
