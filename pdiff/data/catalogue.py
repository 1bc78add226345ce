"""The dataset catalogue: what a dataset is (:class:`DatasetSpec`), its on-disk formats, the
15 CoOp benchmark datasets, and the labelled image (:class:`Datum`) every reader returns.

The readers, one per format, live in :mod:`pdiff.data.readers`; this module knows nothing of
them, so anything that only names datasets (config checks, the rehearsal world) imports no reader.

Image paths stay relative to the dataset's image directory everywhere in pdiff (few-shot draws,
caches, manifests), so outputs do not depend on where the data root is mounted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from pdiff.data.templates import GENERIC_TEMPLATE, template_for, validate_template
from pdiff.errors import PdiffError

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


#: On-disk formats: name -> what its reader (:data:`pdiff.data.readers.READERS`) expects under
#: ``<data_root>/<folder>``. The default, CoOp's split file, is shared by nine of the benchmark
#: datasets and by any user dataset laid out the same way.
FORMATS: dict[str, str] = {
    "split_json": "<split_file> (CoOp's split_zhou_*.json) and images under <image_dir>",
    "imagenet": "<classnames_file> ('wnid name' lines), <image_dir>/train/<wnid>/*, "
    "<image_dir>/val/<wnid>/* (val is used as test, and as val, as in CoOp)",
    "fgvc_aircraft": "variants.txt, images_variant_{train,val,test}.txt and <image_dir>/<id>.jpg",
    "imagenetv2": "<classnames_file> and <image_dir>/<label index>/* (test only)",
    "wnid_folders": "<classnames_file> and <image_dir>/<wnid>/*, one folder per class (test only)",
}
DEFAULT_FORMAT = "split_json"

#: The 15 CoOp benchmark datasets under their CoOp names, with CoOp's folders (``datasets/*.py``
#: and DATASETS.md), so ``DatasetSpec.from_dict("OxfordPets")`` finds an unmodified CoOp root.
KNOWN_DATASETS: dict[str, dict[str, str]] = {
    "ImageNet": {"format": "imagenet", "folder": "imagenet", "image_dir": "images"},
    "Caltech101": {
        "folder": "caltech-101",
        "split_file": "split_zhou_Caltech101.json",
        "image_dir": "101_ObjectCategories",
    },
    "OxfordPets": {
        "folder": "oxford_pets",
        "split_file": "split_zhou_OxfordPets.json",
        "image_dir": "images",
    },
    # Paths in Stanford Cars' split file start with cars_train/ or cars_test/.
    "StanfordCars": {
        "folder": "stanford_cars",
        "split_file": "split_zhou_StanfordCars.json",
        "image_dir": "",
    },
    "OxfordFlowers": {
        "folder": "oxford_flowers",
        "split_file": "split_zhou_OxfordFlowers.json",
        "image_dir": "jpg",
    },
    "Food101": {
        "folder": "food-101",
        "split_file": "split_zhou_Food101.json",
        "image_dir": "images",
    },
    "FGVCAircraft": {"format": "fgvc_aircraft", "folder": "fgvc_aircraft", "image_dir": "images"},
    "SUN397": {"folder": "sun397", "split_file": "split_zhou_SUN397.json", "image_dir": "SUN397"},
    "DescribableTextures": {
        "folder": "dtd",
        "split_file": "split_zhou_DescribableTextures.json",
        "image_dir": "images",
    },
    "EuroSAT": {"folder": "eurosat", "split_file": "split_zhou_EuroSAT.json", "image_dir": "2750"},
    "UCF101": {
        "folder": "ucf101",
        "split_file": "split_zhou_UCF101.json",
        "image_dir": "UCF-101-midframes",
    },
    "ImageNetV2": {
        "format": "imagenetv2",
        "folder": "imagenetv2",
        "image_dir": "imagenetv2-matched-frequency-format-val",
    },
    "ImageNetSketch": {
        "format": "wnid_folders",
        "folder": "imagenet-sketch",
        "image_dir": "images",
    },
    "ImageNetA": {
        "format": "wnid_folders",
        "folder": "imagenet-adversarial",
        "image_dir": "imagenet-a",
    },
    "ImageNetR": {
        "format": "wnid_folders",
        "folder": "imagenet-rendition",
        "image_dir": "imagenet-r",
    },
}


@dataclass
class DatasetSpec:
    """Where a dataset lives under the data root, its on-disk format and its prompt template.

    ``split_file`` is needed by the ``split_json`` format only; ``classnames_file`` (relative to
    the dataset folder) by the ImageNet-family formats only.
    """

    name: str
    folder: str
    split_file: str = ""
    template: str = GENERIC_TEMPLATE
    image_dir: str = ""
    format: str = DEFAULT_FORMAT
    classnames_file: str = "classnames.txt"

    def __post_init__(self) -> None:
        for key in ("name", "folder", "format", "classnames_file"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise PdiffError(
                    f"dataset spec field {key!r} must be a non-empty string, got {value!r}; "
                    "fix the dataset entry in the config"
                )
        if self.format not in FORMATS:
            raise PdiffError(
                f"dataset {self.name!r}: unknown format {self.format!r}; use one of "
                f"{', '.join(FORMATS)} (or leave it out for a CoOp split file)"
            )
        if not isinstance(self.split_file, str) or (
            self.format == "split_json" and not self.split_file
        ):
            raise PdiffError(
                f"dataset {self.name!r}: format split_json needs 'split_file', the split JSON's "
                f"name inside the dataset folder (got {self.split_file!r}); add it to the "
                "dataset entry in the config"
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

        A mapping needs ``name`` and ``folder`` (plus ``split_file`` for the default
        ``split_json`` format). When ``name`` is one of :data:`KNOWN_DATASETS` its CoOp values
        fill every key the mapping leaves out, so ``{"name": "ImageNet"}`` is a full entry.
        ``template`` defaults to CoOp's template for that name (generic otherwise).
        """
        if isinstance(name_or_dict, str):
            name_or_dict = {"name": name_or_dict}
            if name_or_dict["name"] not in KNOWN_DATASETS:
                raise PdiffError(
                    f"unknown dataset {name_or_dict['name']!r}; give a mapping with "
                    "name/folder/split_file in the config or use one of: "
                    f"{', '.join(sorted(KNOWN_DATASETS))}"
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
        name = name_or_dict.get("name")
        defaults = KNOWN_DATASETS.get(name, {}) if isinstance(name, str) else {}
        kwargs = {**defaults, **name_or_dict}
        missing = [k for k in ("name", "folder") if k not in kwargs]
        if missing:
            raise PdiffError(
                f"dataset spec {dict(name_or_dict)!r} is missing {missing}; "
                "add them to the dataset entry in the config"
            )
        kwargs.setdefault("template", template_for(str(kwargs["name"])))
        return cls(**kwargs)

    def to_dict(self) -> dict[str, str]:
        """The full entry, every default filled in (a config entry that round-trips)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def dataset_dir(self, data_root: str | os.PathLike) -> Path:
        """``<data_root>/<folder>``."""
        return Path(data_root) / self.folder

    def image_root(self, data_root: str | os.PathLike) -> Path:
        """Directory the datasets' image paths (``Datum.impath``) are relative to."""
        return self.dataset_dir(data_root) / self.image_dir

    def split_path(self, data_root: str | os.PathLike) -> Path:
        """``<data_root>/<folder>/<split_file>`` (split_json format)."""
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


