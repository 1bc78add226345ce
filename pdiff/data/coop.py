"""Reader for datasets in the CoOp/Dassl on-disk layout.

Layout::

    <data_root>/<folder>/<split_file>             # {"train": [[impath, label, classname], ...],
    <data_root>/<folder>/<image_dir>/<impath>     #  "val": [...], "test": [...]}

Image paths stay relative to the dataset's image directory everywhere in pdiff (few-shot draws,
caches, manifests), so outputs do not depend on where the data root is mounted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from pdiff.data.templates import GENERIC_TEMPLATE, template_for, validate_template
from pdiff.errors import PdiffError

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Datum:
    """One labelled image; ``impath`` is relative to the dataset's image directory."""

    impath: str
    label: int
    classname: str

    def to_list(self) -> list[Any]:
        """The split-file form ``[impath, label, classname]``."""
        return [self.impath, self.label, self.classname]


#: The CoOp datasets that ship a ``split_zhou_*.json`` file: folder and image dir as in CoOp's
#: ``datasets/*.py``, so ``DatasetSpec.from_dict("OxfordPets")`` finds an unmodified CoOp root.
KNOWN_DATASETS: dict[str, dict[str, str]] = {
    "Caltech101": {"folder": "caltech-101", "image_dir": "101_ObjectCategories"},
    "DescribableTextures": {"folder": "dtd", "image_dir": "images"},
    "EuroSAT": {"folder": "eurosat", "image_dir": "2750"},
    "Food101": {"folder": "food-101", "image_dir": "images"},
    "OxfordFlowers": {"folder": "oxford_flowers", "image_dir": "jpg"},
    "OxfordPets": {"folder": "oxford_pets", "image_dir": "images"},
    "StanfordCars": {"folder": "stanford_cars", "image_dir": ""},
    "SUN397": {"folder": "sun397", "image_dir": "SUN397"},
    "UCF101": {"folder": "ucf101", "image_dir": "UCF-101-midframes"},
}


@dataclass
class DatasetSpec:
    """Where a dataset lives under the data root and which prompt template it uses."""

    name: str
    folder: str
    split_file: str
    template: str = GENERIC_TEMPLATE
    image_dir: str = ""

    def __post_init__(self) -> None:
        for key in ("name", "folder", "split_file"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise PdiffError(
                    f"dataset spec field {key!r} must be a non-empty string, got {value!r}; "
                    "fix the dataset entry in the config"
                )
        if not isinstance(self.image_dir, str):
            raise PdiffError(
                f"dataset {self.name!r}: image_dir must be a string, got {self.image_dir!r}; "
                'use "" for images directly in the dataset folder'
            )
        validate_template(self.template)

    @classmethod
    def from_dict(cls, name_or_dict: str | Mapping[str, Any]) -> DatasetSpec:
        """Build a spec from a config mapping, or from the name of a known CoOp dataset.

        A mapping needs ``name``, ``folder`` and ``split_file``; ``template`` defaults to CoOp's
        template for that name (generic otherwise) and ``image_dir`` to ``""``.
        """
        if isinstance(name_or_dict, str):
            name = name_or_dict
            if name not in KNOWN_DATASETS:
                raise PdiffError(
                    f"unknown dataset {name!r}; give a mapping with name/folder/split_file in the "
                    f"config or use one of: {', '.join(sorted(KNOWN_DATASETS))}"
                )
            return cls(
                name=name,
                split_file=f"split_zhou_{name}.json",
                template=template_for(name),
                **KNOWN_DATASETS[name],
            )
        if not isinstance(name_or_dict, Mapping):
            raise PdiffError(
                f"dataset spec must be a mapping or a dataset name, got "
                f"{type(name_or_dict).__name__}; fix the dataset entry in the config"
            )
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(name_or_dict) - set(valid))
        if unknown:
            raise PdiffError(f"unknown dataset spec key(s) {unknown}; valid keys are {valid}")
        missing = [k for k in ("name", "folder", "split_file") if k not in name_or_dict]
        if missing:
            raise PdiffError(
                f"dataset spec {dict(name_or_dict)!r} is missing {missing}; "
                "add them to the dataset entry in the config"
            )
        kwargs = dict(name_or_dict)
        kwargs.setdefault("template", template_for(str(kwargs["name"])))
        return cls(**kwargs)

    def dataset_dir(self, data_root: str | os.PathLike) -> Path:
        """``<data_root>/<folder>``."""
        return Path(data_root) / self.folder

    def image_root(self, data_root: str | os.PathLike) -> Path:
        """Directory the split file's image paths are relative to."""
        return self.dataset_dir(data_root) / self.image_dir

    def split_path(self, data_root: str | os.PathLike) -> Path:
        """``<data_root>/<folder>/<split_file>``."""
        return self.dataset_dir(data_root) / self.split_file


@dataclass
class DatasetSplits:
    """The three CoOp splits of one dataset plus its class names ordered by label."""

    spec: DatasetSpec
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def _as_spec(spec: DatasetSpec | str | Mapping[str, Any]) -> DatasetSpec:
    return spec if isinstance(spec, DatasetSpec) else DatasetSpec.from_dict(spec)


def parse_entry(entry: Any) -> Datum | None:
    """Turn one ``[impath, label, classname]`` entry into a Datum, or None if malformed.

    Paths must be relative and stay inside the image directory, so that a split file cannot
    point readers (or cached outputs) outside the data root.
    """
    if not isinstance(entry, list | tuple) or len(entry) != 3:
        return None
    impath, label, classname = entry
    # bool is an int subclass; a True label is certainly a bug in the file.
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        return None
    if not isinstance(impath, str) or not impath or not isinstance(classname, str):
        return None
    if not classname.strip():
        return None
    p = PurePosixPath(impath.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        return None
    return Datum(impath=impath, label=label, classname=classname)


def parse_entries(items: Any, source: Path | str, where: str) -> list[Datum]:
    """Parse a list of split entries; ``where`` names the list (e.g. "train") in errors."""
    if not isinstance(items, list):
        raise PdiffError(
            f"{source}: {where!r} must be a list of [impath, label, classname] entries, got "
            f"{type(items).__name__}; regenerate the file"
        )
    out: list[Datum] = []
    for i, entry in enumerate(items):
        datum = parse_entry(entry)
        if datum is None:
            raise PdiffError(
                f"{source}: malformed entry {where}[{i}] = {entry!r}; each entry must be "
                "[relative_image_path, label (int >= 0), classname]; fix or regenerate the file"
            )
        out.append(datum)
    return out


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


def read_split(
    data_root: str | os.PathLike, spec: DatasetSpec | str | Mapping[str, Any]
) -> DatasetSplits:
    """Read and validate ``<data_root>/<folder>/<split_file>``.

    Class names are taken as written in the split file (CoOp's files hold cleaned names), from
    all three splits, so a class missing from one split still gets its name.
    """
    spec = _as_spec(spec)
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise PdiffError(
            f"data root {root} does not exist; set data.root in the config (or --data-root) "
            "to the folder holding the datasets, or run `pdiff check-data`"
        )
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
    parts = {s: parse_entries(raw[s], path, s) for s in SPLITS}
    classnames = classnames_from(parts["train"] + parts["val"] + parts["test"], path)
    log.info(
        "read %s: %d classes, train/val/test = %d/%d/%d",
        path,
        len(classnames),
        len(parts["train"]),
        len(parts["val"]),
        len(parts["test"]),
    )
    return DatasetSplits(spec=spec, classnames=classnames, **parts)
