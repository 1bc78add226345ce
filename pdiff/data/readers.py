"""Readers for the datasets' on-disk formats (:data:`pdiff.data.catalogue.FORMATS`), one registry
(:data:`READERS`) and one entry point, :func:`read_split`.

The default format (``split_json``) is CoOp's split file::

    <data_root>/<folder>/<split_file>             # {"train": [[impath, label, classname], ...],
    <data_root>/<folder>/<image_dir>/<impath>     #  "val": [...], "test": [...]}

ImageNet, FGVCAircraft and the four ImageNet variants have no split file. Their readers follow
CoOp's ``datasets/*.py``: labels are the positions of the class folders in sorted order (ImageNet,
-Sketch, -A, -R; A and R thus get their own 200 labels), the folder's number (ImageNetV2) or the
line of ``variants.txt`` (FGVCAircraft). One difference: images within a class folder are sorted,
where CoOp keeps ``os.listdir`` order, which depends on the file system; sorting makes few-shot
draws reproducible across machines.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdiff.data.catalogue import (
    KNOWN_DATASETS,
    SPLITS,
    DatasetSpec,
    DatasetSplits,
    Datum,
    parse_entries,
)
from pdiff.data.templates import clean_classname
from pdiff.errors import PdiffError

log = logging.getLogger(__name__)

Splits = tuple[list[Datum], list[Datum], list[Datum]]

AIRCRAFT_CLASSES = "variants.txt"
AIRCRAFT_SPLITS = {s: f"images_variant_{s}.txt" for s in SPLITS}
_FIX = "lay the dataset out as CoOp's DATASETS.md describes or fix its entry in the config"


def _missing(path: Path, what: str, spec: DatasetSpec) -> PdiffError:
    return PdiffError(
        f"{what} {path} not found for dataset {spec.name!r}; {_FIX} "
        "(`pdiff check-data` lists everything missing)"
    )


def _entries(path: Path, spec: DatasetSpec, dirs: bool) -> list[str]:
    """Sorted non-hidden sub-folders (``dirs``) or files of ``path``."""
    if not path.is_dir():
        raise _missing(path, "folder", spec)
    with os.scandir(path) as it:
        wanted = [e for e in it if not e.name.startswith(".")]
        return sorted(e.name for e in wanted if (e.is_dir() if dirs else e.is_file()))


def _read_lines(path: Path, what: str, spec: DatasetSpec) -> list[tuple[int, str]]:
    """Non-blank, stripped lines of a text file with their 1-based line numbers."""
    if not path.is_file():
        raise _missing(path, what, spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PdiffError(f"{what} {path} is unreadable ({e}); restore it") from e
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def classnames_path(root: Path, spec: DatasetSpec) -> Path:
    """The class-name file: ``<folder>/<classnames_file>``.

    CoOp's DATASETS.md has a copy of ImageNet's ``classnames.txt`` put into each variant's folder;
    when that copy is absent a variant falls back to ImageNet's own file.
    """
    path = spec.dataset_dir(root) / spec.classnames_file
    if path.is_file() or spec.format not in ("imagenetv2", "wnid_folders"):
        return path
    fallback = root / KNOWN_DATASETS["ImageNet"]["folder"] / "classnames.txt"
    if fallback.is_file():
        log.debug("%s: %s not found, using ImageNet's %s", spec.name, path, fallback)
        return fallback
    return path


def read_classnames(path: Path, spec: DatasetSpec) -> dict[str, str]:
    """``wnid name words`` lines -> {wnid: name}, in file order (CoOp's ``read_classnames``)."""
    names: dict[str, str] = {}
    for i, line in _read_lines(path, "class-name file", spec):
        wnid, _, name = line.partition(" ")
        name = name.strip()
        if not name or wnid in names:
            problem = "has no class name" if not name else f"repeats folder {wnid!r}"
            raise PdiffError(
                f"{path}:{i}: line {line!r} {problem}; each line must be '<folder> <class name>' "
                "with each folder once, restore the file (ImageNet's classnames.txt from CoOp)"
            )
        names[wnid] = name
    if not names:
        raise PdiffError(f"class-name file {path} is empty; restore it")
    return names


def _named(folders: list[str], names: dict[str, str], path: Path, where: Path) -> list[str]:
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise PdiffError(
            f"{where} has class folder(s) {unknown[:5]} (of {len(unknown)}) with no line in "
            f"{path}; add a '<folder> <class name>' line for each (for ImageNet and its "
            "variants: use ImageNet's full classnames.txt) or remove the stray folders"
        )
    return [names[f] for f in folders]


def _folder_items(
    image_root: Path, sub: str, folders: list[str], classnames: list[str], spec: DatasetSpec
) -> list[Datum]:
    """Every image of ``<image_root>/<sub>/<folder>``, labelled by the folder's position."""
    items: list[Datum] = []
    for label, (folder, name) in enumerate(zip(folders, classnames, strict=True)):
        rel = f"{sub}/{folder}" if sub else folder
        files = _entries(image_root / rel, spec, dirs=False)
        if not files:
            raise PdiffError(
                f"class folder {image_root / rel} of dataset {spec.name!r} holds no images; "
                "restore them (an empty class would shift every later label)"
            )
        items.extend(Datum(f"{rel}/{f}", label, name) for f in files)
    return items


def read_split_json(root: Path, spec: DatasetSpec, with_train: bool) -> Splits:
    """CoOp's split file: train, val and test lists as written in ``<folder>/<split_file>``
    (all three whatever ``with_train`` says: the file is read whole anyway)."""
    path = spec.split_path(root)
    if not path.is_file():
        raise PdiffError(
            f"split file {path} not found for dataset {spec.name!r}; check data.root and the "
            "dataset's folder/split_file in the config, or run `pdiff check-data`"
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PdiffError(
            f"split file {path} is not readable JSON ({e}); restore or regenerate it"
        ) from e
    if not isinstance(raw, dict):
        raise PdiffError(
            f"split file {path} must hold a JSON object with keys {list(SPLITS)}; "
            "restore or regenerate it"
        )
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise PdiffError(
            f"split file {path} lacks split(s) {missing}; it needs {list(SPLITS)}, "
            "restore or regenerate it"
        )
    train, val, test = (parse_entries(raw[s], path, s) for s in SPLITS)
    return train, val, test


def read_imagenet(root: Path, spec: DatasetSpec, with_train: bool) -> Splits:
    """ImageNet: train and val class folders; val is the test set and, as in CoOp, also val.

    ``with_train=False`` leaves train empty instead of listing its 1.28M images, for stages
    that need only the class names and the test set.
    """
    path = classnames_path(root, spec)
    names = read_classnames(path, spec)
    image_root = spec.image_root(root)
    folders = _entries(image_root / "train", spec, dirs=True)
    val_folders = _entries(image_root / "val", spec, dirs=True)
    if folders != val_folders:
        odd = sorted(set(folders) ^ set(val_folders))
        raise PdiffError(
            f"dataset {spec.name!r}: {image_root}/train and {image_root}/val must hold the same "
            f"class folders but differ in {odd[:5]} ({len(odd)} in all); val must be sorted into "
            "class folders (e.g. with ImageNet's valprep.sh) and both must be complete"
        )
    classnames = _named(folders, names, path, image_root / "train")
    train = _folder_items(image_root, "train", folders, classnames, spec) if with_train else []
    test = _folder_items(image_root, "val", folders, classnames, spec)
    return train, test, test


def read_wnid_folders(root: Path, spec: DatasetSpec, with_train: bool) -> Splits:
    """ImageNet-Sketch/-A/-R: one folder per class present, test only."""
    path = classnames_path(root, spec)
    names = read_classnames(path, spec)
    image_root = spec.image_root(root)
    folders = _entries(image_root, spec, dirs=True)
    if not folders:
        raise PdiffError(f"{image_root} holds no class folders for dataset {spec.name!r}; {_FIX}")
    classnames = _named(folders, names, path, image_root)
    return [], [], _folder_items(image_root, "", folders, classnames, spec)


def read_imagenetv2(root: Path, spec: DatasetSpec, with_train: bool) -> Splits:
    """ImageNetV2: folder ``<i>`` holds class i of the class-name file's order, test only."""
    names = read_classnames(classnames_path(root, spec), spec)
    image_root = spec.image_root(root)
    folders = [str(i) for i in range(len(names))]
    extra = sorted(set(_entries(image_root, spec, dirs=True)) - set(folders))
    if extra:
        raise PdiffError(
            f"{image_root} has folder(s) {extra[:5]} beyond the {len(names)} classes of the "
            f"class-name file; use ImageNet's full classnames.txt for dataset {spec.name!r}"
        )
    return [], [], _folder_items(image_root, "", folders, list(names.values()), spec)


def read_fgvc_aircraft(root: Path, spec: DatasetSpec, with_train: bool) -> Splits:
    """FGVCAircraft's official split files: ``<image id> <variant>`` lines; class order from
    ``variants.txt``. Reads every split file whatever ``with_train`` says: they are small, and
    the class names come from all three."""
    folder = spec.dataset_dir(root)
    variants = [line for _, line in _read_lines(folder / AIRCRAFT_CLASSES, "class list", spec)]
    label_of = {c: i for i, c in enumerate(variants)}
    parts: list[list[Datum]] = []
    for split in SPLITS:
        path = folder / AIRCRAFT_SPLITS[split]
        items: list[Datum] = []
        for i, line in _read_lines(path, "split file", spec):
            image_id, _, variant = line.partition(" ")
            variant = variant.strip()
            if variant not in label_of:
                raise PdiffError(
                    f"{path}:{i}: line {line!r} must be '<image id> <variant>' with a variant "
                    f"listed in {AIRCRAFT_CLASSES}; restore the official split files"
                )
            items.append(Datum(f"{image_id}.jpg", label_of[variant], variant))
        parts.append(items)
    train, val, test = parts
    return train, val, test


# What each format needs on disk (for check-data) and where its labels come from (for errors).
def split_json_paths(root: Path, spec: DatasetSpec) -> list[Path]:
    return [spec.split_path(root), spec.image_root(root)]


def split_file(root: Path, spec: DatasetSpec) -> Path:
    return spec.split_path(root)


def imagenet_paths(root: Path, spec: DatasetSpec) -> list[Path]:
    image_root = spec.image_root(root)
    return [classnames_path(root, spec), image_root / "train", image_root / "val"]


def fgvc_aircraft_paths(root: Path, spec: DatasetSpec) -> list[Path]:
    folder = spec.dataset_dir(root)
    return [folder / AIRCRAFT_CLASSES, *(folder / f for f in AIRCRAFT_SPLITS.values()),
            spec.image_root(root)]


def class_folder_paths(root: Path, spec: DatasetSpec) -> list[Path]:
    return [classnames_path(root, spec), spec.image_root(root)]


def dataset_folder(root: Path, spec: DatasetSpec) -> Path:
    return spec.dataset_dir(root)


@dataclass(frozen=True)
class Reader:
    """How one on-disk format is read and checked."""

    #: (root, spec, with_train) -> train, val, test. Only ImageNet's skips its training images
    #: when ``with_train`` is false (its class names come from the folders, which both splits
    #: must share, so nothing else changes).
    read: Callable[[Path, DatasetSpec, bool], Splits]
    #: (root, spec) -> the files and folders ``read`` needs, for `pdiff check-data`.
    needs: Callable[[Path, DatasetSpec], list[Path]]
    #: Whether images are listed in a file, so check-data must look each one up (the folder
    #: formats find their images by scanning).
    listed: bool
    #: (root, spec) -> the file or folder the labels come from, named in label errors.
    source: Callable[[Path, DatasetSpec], Path] = dataset_folder


#: format -> its reader; the keys are exactly :data:`pdiff.data.catalogue.FORMATS`.
READERS: dict[str, Reader] = {
    "split_json": Reader(read_split_json, split_json_paths, listed=True, source=split_file),
    "imagenet": Reader(read_imagenet, imagenet_paths, listed=False),
    "fgvc_aircraft": Reader(read_fgvc_aircraft, fgvc_aircraft_paths, listed=True),
    "imagenetv2": Reader(read_imagenetv2, class_folder_paths, listed=False),
    "wnid_folders": Reader(read_wnid_folders, class_folder_paths, listed=False),
}


def required_paths(root: Path, spec: DatasetSpec) -> list[Path]:
    """The files and folders a dataset's reader needs, dataset folder first (for check-data)."""
    folder = spec.dataset_dir(root)
    return [folder, *(p for p in READERS[spec.format].needs(root, spec) if p != folder)]


def _as_spec(spec: DatasetSpec | str | Mapping[str, Any]) -> DatasetSpec:
    return spec if isinstance(spec, DatasetSpec) else DatasetSpec.from_dict(spec)


def classnames_from(data: list[Datum], source: Path | str) -> list[str]:
    """Class names ordered by label; labels must be exactly 0..C-1 with one name each."""
    names: dict[int, str] = {}
    for d in data:
        prev = names.setdefault(d.label, d.classname)
        if prev != d.classname:
            raise PdiffError(
                f"{source}: label {d.label} has two class names, {prev!r} and {d.classname!r} "
                f"(at {d.impath!r}); every label must map to one class name, fix the file"
            )
    labels = sorted(names)
    if labels != list(range(len(labels))):
        missing = sorted(set(range(max(labels, default=-1) + 1)) - set(labels))
        raise PdiffError(
            f"{source}: labels must be contiguous 0..C-1 but {missing[:10]} are missing "
            f"(found {len(labels)} labels up to {max(labels, default=-1)}); relabel the file"
        )
    classnames = [names[i] for i in labels]
    if len(set(classnames)) != len(classnames):
        # Legal but suspicious: two labels would get identical prompts.
        log.warning("%s: some labels share a class name; their prompts will be identical", source)
    return classnames


def cleaned(data: list[Datum], classnames: list[str]) -> list[Datum]:
    """``data`` with each class name replaced by ``classnames[label]`` (same list if unchanged)."""
    if all(d.classname == classnames[d.label] for d in data):
        return data
    return [Datum(d.impath, d.label, classnames[d.label]) for d in data]


def read_split(
    data_root: str | os.PathLike,
    spec: DatasetSpec | str | Mapping[str, Any],
    *,
    with_train: bool = True,
) -> DatasetSplits:
    """Read and validate one dataset in the format its spec names.

    Class names are taken from all three splits, so a class missing from one split still gets
    its name, and cleaned the way CoOp's trainers do before prompting (underscores to spaces:
    CoOp's split files keep e.g. ``"apple_pie"`` and ``"Apply_Eye_Makeup"``). Test-only
    datasets return empty train and val lists. ``with_train=False`` is for stages that need only
    the class names and the test set: ImageNet's reader then leaves train empty instead of
    listing 1.28M images (seconds to minutes per job on a network file system).
    """
    spec = _as_spec(spec)
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise PdiffError(
            f"data root {root} does not exist; set data.root in the config (or --data-root) "
            "to the folder holding the datasets, or run `pdiff check-data`"
        )
    if not spec.dataset_dir(root).is_dir():
        raise _missing(spec.dataset_dir(root), "dataset folder", spec)
    reader = READERS[spec.format]
    train, val, test = reader.read(root, spec, with_train)
    source = reader.source(root, spec)
    raw_names = classnames_from(train + val + test, source)
    classnames = [clean_classname(c) for c in raw_names]
    if classnames != raw_names:
        train, val, test = (cleaned(x, classnames) for x in (train, val, test))
    log.info(
        "read %s (%s): %d classes, train/val/test = %d/%d/%d",
        source,
        spec.format,
        len(classnames),
        len(train),
        len(val),
        len(test),
    )
    return DatasetSplits(spec=spec, train=train, val=val, test=test, classnames=classnames)
