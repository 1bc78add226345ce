"""`pdiff check-data`: is every configured dataset on disk, complete, and the size CoOp's is?

Runs first in the workflow so that a missing dataset fails in seconds, not after hours. For each
dataset it reports the files its reader needs that are missing, images listed in a split file
that do not exist, and the image counts per split beside the published ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pdiff.coop_sizes import PUBLISHED_COUNTS
from pdiff.data.catalogue import SPLITS, DatasetSpec, Datum
from pdiff.data.readers import READERS, read_split, required_paths
from pdiff.errors import PdiffError

log = logging.getLogger(__name__)



def dataset_specs(value: Any) -> list[DatasetSpec]:
    """Specs from a JSON value: a name, one entry, a list of names/entries, or a catalogue
    ``{name: entry}`` as in the config's ``datasets`` (``{}`` or null for a known CoOp name)."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value:
        items = value
    elif isinstance(value, Mapping) and value and all(
        v is None or isinstance(v, Mapping) for v in value.values()
    ):
        items = [{"name": k, **(v or {})} for k, v in value.items()]
    elif isinstance(value, Mapping) and value:
        items = [value]
    else:
        raise PdiffError(
            f"datasets must be a non-empty JSON list of entries or a {{name: entry}} object, "
            f"got {value!r}; e.g. --datasets '[\"OxfordPets\"]'"
        )
    return [DatasetSpec.from_dict(item) for item in items]


def missing_images(image_root: Path, data: Iterable[Datum]) -> list[str]:
    """Relative paths in ``data`` with no file under ``image_root``, in first-seen order.

    Lists each folder once instead of one stat per image: much faster on network file systems.
    """
    listings: dict[str, set[str]] = {}
    missing: list[str] = []
    seen: set[str] = set()
    for d in data:
        if d.impath in seen:
            continue
        seen.add(d.impath)
        parent, _, name = d.impath.replace("\\", "/").rpartition("/")
        if parent not in listings:
            try:
                listings[parent] = set(os.listdir(image_root / parent))
            except OSError:
                listings[parent] = set()
        if name not in listings[parent]:
            missing.append(d.impath)
    return missing


def check_dataset(data_root: Path, spec: DatasetSpec, sample: int = 10) -> dict[str, Any]:
    """One dataset's report; ``status`` is present, missing (a needed file or folder is absent)
    or broken (a file is unreadable or listed images are missing)."""
    report: dict[str, Any] = {
        "name": spec.name,
        "format": spec.format,
        "folder": str(spec.dataset_dir(data_root)),
        "image_root": str(spec.image_root(data_root)),
        "status": "present",
        "missing": [],
        "error": None,
        "missing_images": {"count": 0, "sample": []},
        "classes": None,
        "counts": None,
        "expected": PUBLISHED_COUNTS.get(spec.name),
        "warnings": [],
    }
    for path in required_paths(data_root, spec):
        if not path.exists():
            report["missing"].append(str(path))
            if path == spec.dataset_dir(data_root):
                break  # everything inside is missing too
    if report["missing"]:
        report["status"] = "missing"
        return report
    try:
        splits = read_split(data_root, spec)
    except PdiffError as e:
        report.update(status="broken", error=str(e))
        return report
    parts = {s: getattr(splits, s) for s in SPLITS}
    report["classes"] = splits.num_classes
    report["counts"] = {s: len(data) for s, data in parts.items()}
    if READERS[spec.format].listed:
        gone = missing_images(spec.image_root(data_root), (d for s in SPLITS for d in parts[s]))
        report["missing_images"] = {"count": len(gone), "sample": gone[:sample]}
        if gone:
            report["status"] = "broken"
    expected = report["expected"] or {}
    got = {"classes": splits.num_classes, **report["counts"]}
    for key, want in expected.items():
        if got[key] != want:
            report["warnings"].append(f"{key}: {got[key]} here, {want} in CoOp's split")
    return report


def check_data(
    *, data_root: str | os.PathLike, datasets: Any, sample: int = 10
) -> dict[str, Any]:
    """Check every dataset in ``datasets`` (see :func:`dataset_specs`) under ``data_root``."""
    root = Path(data_root).expanduser()
    specs = dataset_specs(datasets)
    reports = [check_dataset(root, spec, sample) for spec in specs]
    for r in reports:
        log.debug("%s: %s, %s classes, %s", r["name"], r["status"], r["classes"], r["counts"])
    bad = [r["name"] for r in reports if r["status"] != "present"]
    log.info("checked %d dataset(s) under %s: %d not usable %s", len(reports), root, len(bad), bad)
    return {
        "data_root": str(root),
        "data_root_exists": root.is_dir(),
        "ok": all(r["status"] == "present" for r in reports),
        "datasets": reports,
    }


def _problems(r: dict[str, Any]) -> list[str]:
    out = [f"missing {p}" for p in r["missing"]]
    if r["error"]:
        out.append(r["error"])
    n = r["missing_images"]["count"]
    if n:
        shown = ", ".join(r["missing_images"]["sample"])
        out.append(f"{n} listed image(s) missing under {r['image_root']}: {shown}"
                   + (", ..." if n > len(r["missing_images"]["sample"]) else ""))
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table; sizes that differ from CoOp's are followed by CoOp's,
    problems are listed below the table."""
    header = ["dataset", "format", "status", "classes", *SPLITS]
    rows = [header]
    for r in report["datasets"]:
        got = {"classes": r["classes"], **(r["counts"] or {})}
        expected = r["expected"] or {}
        cells = [r["name"], r["format"], r["status"]]
        for key in header[3:]:
            cell = "-" if got.get(key) is None else str(got[key])
            if got.get(key) is not None and key in expected and got[key] != expected[key]:
                cell += f" (CoOp {expected[key]})"
            cells.append(cell)
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"data root: {report['data_root']}"
             + ("" if report["data_root_exists"] else "  (does not exist)")]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    lines += [f"{r['name']}: {p}" for r in report["datasets"] for p in _problems(r)]
    differ = [r["name"] for r in report["datasets"] if r["warnings"]]
    if differ:
        lines.append(f"warning: {', '.join(differ)} differ from CoOp's published sizes (marked "
                     "'CoOp N' above): results on them are not comparable with published ones")
    return "\n".join(lines)


def assert_ok(report: dict[str, Any]) -> None:
    """Raise one PdiffError naming every unusable dataset and what is wrong with it."""
    bad = [r for r in report["datasets"] if r["status"] != "present"]
    if not bad:
        return
    what = "; ".join(f"{r['name']} ({_problems(r)[0]})" for r in bad)
    raise PdiffError(
        f"{len(bad)} of {len(report['datasets'])} dataset(s) not usable under "
        f"{report['data_root']}: {what}; put the files in place as CoOp's DATASETS.md "
        "describes, or fix data.root / the dataset entries in the config, then rerun "
        "`pdiff check-data`"
    )
