"""The rehearsal world: the 15 CoOp benchmark datasets, fake, in their real on-disk formats.

`pdiff prepare` writes it when ``world.kind`` is ``rehearsal`` (config/rehearsal.yaml), so that
the benchmark config runs end to end without its data: every reader, check, few-shot draw and
data loader meets what it will meet on the real datasets. Each dataset has its real class count,
CoOp's folders (:data:`pdiff.data.catalogue.KNOWN_DATASETS`), file names shaped like the real ones
and its format's index files (split JSON, ``classnames.txt``, FGVCAircraft's list files, label
folders); class names come from :mod:`pdiff.data.rehearsal_names` (ImageNet's are open_clip's).

Images are cheap to draw (a class colour with coarse seeded blotches; nothing to learn beyond
colour) but shaped like real ones: shorter side in [min_side, max_side], aspect ratio in
[1/2, 2] (EuroSAT's are 64x64 as in the real one), mostly RGB JPEGs, plus greyscale and CMYK
JPEGs and palette and RGBA PNGs in the datasets listed in :data:`MODES`, so that every mode
reaches the image loader. Everything is deterministic for a seed.

Per class: ``train_per_class``, ``val_per_class`` and ``test_per_class`` images; ImageNet has no
val split (CoOp uses its val folder as both val and test: it gets ``test_per_class``) and the
test-only variants get ``test_per_class``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from pdiff.data import rehearsal_names as names
from pdiff.data.catalogue import DEFAULT_FORMAT, KNOWN_DATASETS, SPLITS
from pdiff.data.readers import AIRCRAFT_CLASSES, AIRCRAFT_SPLITS
from pdiff.errors import PdiffError

log = logging.getLogger(__name__)

PARAM_KEYS = ("seed", "train_per_class", "val_per_class", "test_per_class", "min_side",
              "max_side")
#: Written first into each dataset folder: only folders holding it are ever deleted.
MARKER = ".pdiff-rehearsal"
PNG_MODES = ("P", "RGBA")
JPEG_QUALITY = 85
EUROSAT_SIDE = 64
MAX_CLASSES = 1000  # ImageNet's; the size of each dataset's table of class colours

#: Image modes per dataset (share of its images): mostly RGB JPEGs, with greyscale and CMYK
#: JPEGs and palette and RGBA PNGs spread so that every mode occurs, as real datasets have odd
#: files (greyscale and CMYK JPEGs in ImageNet, PNG-coded files in Oxford Pets); ImageNet-Sketch
#: is mostly greyscale. FGVCAircraft's reader expects ``<id>.jpg``: JPEG modes only.
MODES: dict[str, dict[str, float]] = {
    "ImageNet": {"RGB": 0.9, "L": 0.05, "CMYK": 0.05},
    "Caltech101": {"RGB": 0.9, "L": 0.1},
    "OxfordPets": {"RGB": 0.9, "RGBA": 0.05, "L": 0.05},
    "StanfordCars": {"RGB": 0.9, "L": 0.05, "CMYK": 0.05},
    "OxfordFlowers": {"RGB": 1.0},
    "Food101": {"RGB": 0.97, "L": 0.03},
    "FGVCAircraft": {"RGB": 0.95, "L": 0.05},
    "SUN397": {"RGB": 0.9, "L": 0.1},
    "DescribableTextures": {"RGB": 1.0},
    "EuroSAT": {"RGB": 1.0},
    "UCF101": {"RGB": 1.0},
    "ImageNetV2": {"RGB": 0.95, "L": 0.05},
    "ImageNetSketch": {"L": 0.7, "RGB": 0.3},
    "ImageNetA": {"RGB": 0.9, "CMYK": 0.05, "L": 0.05},
    "ImageNetR": {"RGB": 0.6, "P": 0.2, "RGBA": 0.2},
}


@dataclass
class _Images:
    """Draws and writes one dataset's images; tallies their modes and shorter sides."""

    image_root: Path
    modes: dict[str, float]
    colours: np.ndarray  # [MAX_CLASSES, 3] in [0, 1], row = label
    rng: np.random.Generator
    min_side: int
    max_side: int
    fixed_side: int | None = None
    mode_counts: Counter = field(default_factory=Counter)
    sides: list[int] = field(default_factory=list)

    def write(self, rel: str, label: int) -> str:
        """Write one image of class ``label`` at ``rel`` (its suffix becomes .png for the PNG
        modes); returns the path as written, relative to the image root."""
        mode = str(self.rng.choice(list(self.modes), p=list(self.modes.values())))
        width, height = self._size()
        # Coarse blotches around the class colour, upsampled: cheap to draw and to encode.
        grid = np.clip(self.colours[label] + self.rng.normal(0.0, 0.18, (5, 5, 3)), 0.0, 1.0)
        image = Image.fromarray((grid * 255).astype(np.uint8), "RGB")
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        if mode in PNG_MODES:
            rel = PurePosixPath(rel).with_suffix(".png").as_posix()
        path = self.image_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "P":
            image.quantize(colors=64).save(path, "PNG", compress_level=1)
        elif mode == "RGBA":
            image.putalpha(Image.linear_gradient("L").resize((width, height)))
            image.save(path, "PNG", compress_level=1)
        else:
            image.convert(mode).save(path, "JPEG", quality=JPEG_QUALITY)
        self.mode_counts[mode] += 1
        self.sides.append(min(width, height))
        return rel

    def _size(self) -> tuple[int, int]:
        if self.fixed_side:
            return self.fixed_side, self.fixed_side
        short = int(self.rng.integers(self.min_side, self.max_side + 1))
        aspect = float(np.exp(self.rng.uniform(np.log(0.5), np.log(2.0))))
        long = max(short, round(short * max(aspect, 1 / aspect)))
        return (long, short) if aspect >= 1 else (short, long)


# --- split_json datasets: class names and image paths --------------------------------------
# A path function gets (class names, label, split, k: the image's number within its class from
# 1, n: its number within the dataset from 1) and returns the path under the image folder.
PathFn = Callable[[list[str], int, str, int, int], str]


def _pet_path(cats: set[str]) -> PathFn:
    def path(c: list[str], label: int, split: str, k: int, n: int) -> str:
        stem = c[label].title() if c[label] in cats else c[label]  # cats' files are capitalised
        return f"{stem}_{k}.jpg"

    return path


def _ucf_path(c: list[str], label: int, split: str, k: int, n: int) -> str:
    group, clip = (k - 1) // 4 + 1, (k - 1) % 4 + 1  # v_<Action>_g<group>_c<clip>
    return f"{c[label]}/v_{c[label].replace('_', '')}_g{group:02d}_c{clip:02d}.jpg"


def _split_json_datasets() -> dict[str, tuple[list[str], PathFn]]:
    pets, cats = names.pet_names()
    return {
        "Caltech101": (names.caltech_names(), lambda c, y, s, k, n: f"{c[y]}/image_{k:04d}.jpg"),
        "OxfordPets": (pets, _pet_path(cats)),
        # Cars' train and val come from cars_train/, test from cars_test/ (CoOp's split).
        "StanfordCars": (names.car_names(), lambda c, y, s, k, n:
                         f"cars_{'test' if s == 'test' else 'train'}/{n:05d}.jpg"),
        "OxfordFlowers": (names.flower_names(), lambda c, y, s, k, n: f"image_{n:05d}.jpg"),
        "Food101": (names.food_names(), lambda c, y, s, k, n: f"{c[y]}/{1_000_000 + n}.jpg"),
        "SUN397": (names.sun_names(), lambda c, y, s, k, n:
                   f"{names.sun_folder(c[y])}/sun_{_digest(c[y], k)[:16]}.jpg"),
        "DescribableTextures": (names.dtd_names(), lambda c, y, s, k, n:
                                f"{c[y]}/{c[y]}_{k:04d}.jpg"),
        "EuroSAT": (names.eurosat_names(), lambda c, y, s, k, n:
                    f"{names.EUROSAT_FOLDERS[y]}/{names.EUROSAT_FOLDERS[y]}_{k}.jpg"),
        "UCF101": (names.ucf_names(), _ucf_path),
    }


def _digest(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


# --- writers, one per format: each returns (classes, images per split) ----------------------

Written = tuple[int, dict[str, int]]


def _write_split_json(folder: Path, name: str, images: _Images, classnames: list[str],
                      path: PathFn, per_class: dict[str, int]) -> Written:
    split: dict[str, list[list[Any]]] = {s: [] for s in SPLITS}
    n = 0
    for label in range(len(classnames)):
        k = 0
        for part in SPLITS:
            for _ in range(per_class[part]):
                k, n = k + 1, n + 1
                rel = images.write(path(classnames, label, part, k, n), label)
                split[part].append([rel, label, classnames[label]])
    (folder / KNOWN_DATASETS[name]["split_file"]).write_text(json.dumps(split))
    return len(classnames), {s: len(v) for s, v in split.items()}


def _classnames_txt(folder: Path) -> None:
    lines = zip(names.imagenet_wnids(), names.imagenet_classnames(), strict=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in lines))


def _write_imagenet(folder: Path, images: _Images, per_class: dict[str, int]) -> Written:
    _classnames_txt(folder)
    n = 0
    for label, wnid in enumerate(names.imagenet_wnids()):
        for k in range(1, per_class["train"] + 1):
            images.write(f"train/{wnid}/{wnid}_{k}.JPEG", label)
        for _ in range(per_class["test"]):
            n += 1
            images.write(f"val/{wnid}/ILSVRC2012_val_{n:08d}.JPEG", label)
    test = 1000 * per_class["test"]
    return 1000, {"train": 1000 * per_class["train"], "val": test, "test": test}


def _write_aircraft(folder: Path, images: _Images, per_class: dict[str, int]) -> Written:
    variants = names.aircraft_names()
    (folder / AIRCRAFT_CLASSES).write_text("".join(f"{v}\n" for v in variants))
    image_id = 1_000_000
    for part in SPLITS:
        lines = []
        for label, variant in enumerate(variants):
            for _ in range(per_class[part]):
                image_id += 1
                images.write(f"{image_id:07d}.jpg", label)
                lines.append(f"{image_id:07d} {variant}\n")
        (folder / AIRCRAFT_SPLITS[part]).write_text("".join(lines))
    return len(variants), {s: len(variants) * per_class[s] for s in SPLITS}


def _write_test_only(folder: Path, name: str, images: _Images, per_class: int) -> Written:
    """ImageNetV2 (label-index folders) and -Sketch/-A/-R (wnid folders), with a copy of
    ImageNet's classnames.txt in the dataset folder as CoOp's DATASETS.md has it."""
    _classnames_txt(folder)
    wnids = names.imagenet_wnids()
    offsets = {"ImageNetA": names.IMAGENET_A_OFFSET, "ImageNetR": names.IMAGENET_R_OFFSET}
    labels = names.imagenet_subset(offsets[name]) if name in offsets else range(1000)
    styles = ("art", "cartoon", "graffiti", "painting", "sculpture", "toy")  # ImageNet-R's
    for position, label in enumerate(labels):
        for k in range(per_class):
            if name == "ImageNetV2":
                rel = f"{label}/{_digest(label, k)}.jpeg"
            elif name == "ImageNetSketch":
                rel = f"{wnids[label]}/sketch_{k}.JPEG"
            elif name == "ImageNetR":
                rel = f"{wnids[label]}/{styles[k % len(styles)]}_{k}.jpg"
            else:
                rel = f"{wnids[label]}/{_digest(label, k)[:12]}.jpg"
            images.write(rel, position)
    return len(labels), {"train": 0, "val": 0, "test": len(labels) * per_class}


# --- the world -----------------------------------------------------------------------------


def _check_params(params: dict[str, Any]) -> None:
    """The world's keys are present and in range (the workflow's schema checks them too; this is
    for `pdiff prepare` run by hand)."""
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise PdiffError(f"rehearsal world: missing key(s) {missing}; the world needs "
                         f"{list(PARAM_KEYS)} (see config/README.md, `world`)")
    low = {k: 0 if k == "seed" else 8 if k.endswith("_side") else 1 for k in PARAM_KEYS}
    bad = [k for k in PARAM_KEYS if not isinstance(params[k], int) or params[k] < low[k]]
    if not bad and params["min_side"] > params["max_side"]:
        bad = ["min_side", "max_side"]
    if bad:
        got = ", ".join(f"{k}={params[k]!r}" for k in bad)
        raise PdiffError(
            f"rehearsal world: {got}; seed must be an integer >= 0, the *_per_class counts "
            ">= 1, and 8 <= min_side <= max_side (fix `world` in the config)"
        )


def _claim(folders: list[Path]) -> None:
    """Empty every dataset folder for a new world, refusing (before touching any) if one exists
    that this module did not write: a data root pointed at real datasets must never lose them,
    and stale images would change the folder layouts' class sizes."""
    foreign = [f for f in folders if f.exists() and not (f / MARKER).is_file()]
    if foreign:
        raise PdiffError(
            f"{', '.join(map(str, foreign))} exist(s) and were not written by the rehearsal "
            "world; refusing to overwrite them. Point data.root at an empty folder (e.g. under "
            "results/)"
        )
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / MARKER).write_text("written by pdiff prepare (world.kind: rehearsal)\n")


def write_rehearsal(root: str | Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write the 15 benchmark datasets under ``root`` and return the manifest (the caller
    writes it last, so a killed job never looks finished)."""
    _check_params(params)
    root = Path(root)
    per_class = {s: params[f"{s}_per_class"] for s in SPLITS}
    split_json = _split_json_datasets()
    _claim([root / known["folder"] for known in KNOWN_DATASETS.values()])
    manifest: dict[str, Any] = {"world": params, "datasets": {}}
    for index, name in enumerate(KNOWN_DATASETS):
        known = KNOWN_DATASETS[name]
        folder = root / known["folder"]
        rng = np.random.default_rng([params["seed"], index])
        images = _Images(folder / known["image_dir"], MODES[name], rng.random((MAX_CLASSES, 3)),
                         rng, params["min_side"], params["max_side"],
                         EUROSAT_SIDE if name == "EuroSAT" else None)
        if name in split_json:
            classes, counts = _write_split_json(folder, name, images, *split_json[name],
                                                per_class)
        elif name == "ImageNet":
            classes, counts = _write_imagenet(folder, images, per_class)
        elif name == "FGVCAircraft":
            classes, counts = _write_aircraft(folder, images, per_class)
        else:
            classes, counts = _write_test_only(folder, name, images, per_class["test"])
        manifest["datasets"][name] = {
            "folder": known["folder"],
            "format": known.get("format", DEFAULT_FORMAT),
            "classes": classes,
            "counts": counts,
            "modes": dict(sorted(images.mode_counts.items())),
            "shorter_side": [min(images.sides), max(images.sides)],
        }
        log.info("wrote %s: %d classes, %s, modes %s", name, classes, counts,
                 manifest["datasets"][name]["modes"])
    return manifest
