"""Readers for the CoOp layouts that have no split file: ImageNet, FGVCAircraft and the test-only
ImageNet variants (see :data:`pdiff.data.coop.FORMATS`).

They follow CoOp's ``datasets/*.py``: labels are the positions of the class folders in sorted
order (ImageNet, -Sketch, -A, -R; A and R thus get their own 200 labels), the folder's number
(ImageNetV2) or the line of ``variants.txt`` (FGVCAircraft). One difference: images within a
class folder are sorted, where CoOp keeps ``os.listdir`` order, which depends on the file system;
sorting makes few-shot draws reproducible across machines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from pdiff.data.coop import KNOWN_DATASETS, SPLITS, DatasetSpec, Datum
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


#: format -> reader(root, spec, with_train); only ImageNet's skips its training images (its
#: class names come from the folders, which both splits must share, so nothing else changes).
READERS: dict[str, Callable[[Path, DatasetSpec, bool], Splits]] = {
    "imagenet": read_imagenet,
    "fgvc_aircraft": read_fgvc_aircraft,
    "imagenetv2": read_imagenetv2,
    "wnid_folders": read_wnid_folders,
}


def read_layout(root: Path, spec: DatasetSpec, with_train: bool = True) -> Splits:
    """Train, val and test of a dataset in one of the folder layouts (not ``split_json``);
    ``with_train=False`` lets a reader skip the training images (ImageNet's 1.28M)."""
    if spec.format not in READERS:
        raise PdiffError(
            f"dataset {spec.name!r}: format {spec.format!r} has no folder-layout reader; "
            f"use one of {', '.join(READERS)} or split_json"
        )
    if not spec.dataset_dir(root).is_dir():
        raise _missing(spec.dataset_dir(root), "dataset folder", spec)
    return READERS[spec.format](root, spec, with_train)


def required_paths(root: Path, spec: DatasetSpec) -> list[Path]:
    """The files and folders a dataset's reader needs, dataset folder first (for check-data)."""
    folder = spec.dataset_dir(root)
    image_root = spec.image_root(root)
    if spec.format == "split_json":
        paths = [spec.split_path(root), image_root]
    elif spec.format == "imagenet":
        paths = [classnames_path(root, spec), image_root / "train", image_root / "val"]
    elif spec.format == "fgvc_aircraft":
        paths = [folder / AIRCRAFT_CLASSES, *(folder / f for f in AIRCRAFT_SPLITS.values())]
        paths.append(image_root)
    else:
        paths = [classnames_path(root, spec), image_root]
    return [folder, *(p for p in paths if p != folder)]
