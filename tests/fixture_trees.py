"""Miniature copies of the 15 CoOp benchmark datasets' on-disk layouts, for reader tests.

Each tree has two classes and a few 4x4 images per class and split, with the file names, folders
and class names the real dataset (and CoOp's split files) use, e.g. the raw names CoOp stores
("apple_pie", "Apply_Eye_Makeup") and the cleaned ones a reader must return.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pdiff.data import KNOWN_DATASETS

# Real datasets mix sizes, aspect ratios, formats and modes: (width, height, mode, format).
VARIED = [(29, 29, "RGB", "JPEG"), (52, 28, "L", "JPEG"), (40, 75, "P", "PNG"),
          (64, 48, "RGBA", "PNG"), (33, 61, "CMYK", "JPEG"), (90, 40, "RGB", "PNG")]


def save_varied(path: Path, colour: tuple[int, int, int], i: int) -> Path:
    """An image of one colour with noise, the i-th of VARIED's sizes/modes; the suffix follows
    its format. Returns the path written."""
    import numpy as np

    w, h, mode, fmt = VARIED[i % len(VARIED)]
    noise = np.random.default_rng(i).integers(-30, 30, (h, w, 3))
    rgb = Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype("uint8"))
    im = rgb.quantize(16) if mode == "P" else rgb.convert(mode)
    path = path.with_suffix(".jpg" if fmt == "JPEG" else ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt)
    return path


PER_SPLIT = {"train": 2, "val": 1, "test": 1}  # images per class, list-based datasets
TEST_ONLY = 2  # images per class, test-only datasets


@dataclass
class Tree:
    """What a reader must find in a built tree; paths are relative to the data root."""

    name: str
    classnames: list[str]
    counts: dict[str, int]
    index_file: str  # a file the reader needs (split file, classnames.txt, ...)
    images: list[str]


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (seed * 37 % 256, seed * 91 % 256, 128)).save(path)


# CoOp name -> (image path pattern inside image_dir, [(class dir, name as stored, cleaned)]).
SPLIT_JSON_TREES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "Caltech101": ("{d}/image_{n:04d}.jpg", [
        ("Faces", "face", "face"), ("yin_yang", "yin_yang", "yin yang")]),
    "OxfordPets": ("{d}_{n}.jpg", [
        ("Abyssinian", "abyssinian", "abyssinian"),
        ("american_bulldog", "american_bulldog", "american bulldog")]),
    "StanfordCars": ("cars_{part}/{n:05d}.jpg", [
        ("", "1993 Geo Metro Convertible", "1993 Geo Metro Convertible"),
        ("", "2012 Tesla Model S Sedan", "2012 Tesla Model S Sedan")]),
    "OxfordFlowers": ("image_{n:05d}.jpg", [
        ("", "pink primrose", "pink primrose"),
        ("", "hard-leaved pocket orchid", "hard-leaved pocket orchid")]),
    "Food101": ("{d}/{n}.jpg", [
        ("apple_pie", "apple_pie", "apple pie"),
        ("baby_back_ribs", "baby_back_ribs", "baby back ribs")]),
    "SUN397": ("{d}/sun_{n:04d}.jpg", [
        ("a/abbey", "abbey", "abbey"),
        ("a/apartment_building/outdoor", "outdoor apartment_building",
         "outdoor apartment building")]),
    "DescribableTextures": ("{d}/{d}_{n:04d}.jpg", [
        ("banded", "banded", "banded"), ("bubbly", "bubbly", "bubbly")]),
    "EuroSAT": ("{d}/{d}_{n}.jpg", [
        ("AnnualCrop", "Annual Crop Land", "Annual Crop Land"),
        ("SeaLake", "Sea or Lake", "Sea or Lake")]),
    "UCF101": ("{d}/v_{n:04d}.jpg", [
        ("Apply_Eye_Makeup", "Apply_Eye_Makeup", "Apply Eye Makeup"),
        ("Band_Marching", "Band_Marching", "Band Marching")]),
}

# (wnid, name) lines of a classnames.txt: CoOp's file holds all 1000 ImageNet classes, so the
# miniature's holds more lines than any one tree has folders.
WNIDS = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01498041", "stingray"),
]


def _dirs(root: Path, name: str) -> tuple[Path, Path]:
    known = KNOWN_DATASETS[name]
    folder = root / known["folder"]
    return folder, folder / known["image_dir"]


def _classnames_txt(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in WNIDS))


def _split_json(root: Path, name: str) -> Tree:
    pattern, classes = SPLIT_JSON_TREES[name]
    folder, image_dir = _dirs(root, name)
    split: dict[str, list] = {s: [] for s in PER_SPLIT}
    n = 0
    for label, (d, stored, _) in enumerate(classes):
        for part, k in PER_SPLIT.items():
            for _ in range(k):
                n += 1
                rel = pattern.format(d=d, n=n, part="test" if part == "test" else "train")
                write_image(image_dir / rel, n)
                split[part].append([rel, label, stored])
    split_file = KNOWN_DATASETS[name]["split_file"]
    (folder / split_file).write_text(json.dumps(split))
    images = [str((image_dir / e[0]).relative_to(root)) for s in split.values() for e in s]
    counts = {s: len(v) for s, v in split.items()}
    return Tree(name, [c for _, _, c in classes], counts, f"{folder.name}/{split_file}", images)


def _imagenet(root: Path, name: str) -> Tree:
    folder, image_dir = _dirs(root, name)
    _classnames_txt(folder)
    images = []
    for label, (wnid, _) in enumerate(WNIDS[:2]):
        for i in range(PER_SPLIT["train"]):
            images.append(image_dir / "train" / wnid / f"{wnid}_{i + 1}.JPEG")
        images.append(image_dir / "val" / wnid / f"ILSVRC2012_val_{label + 1:08d}.JPEG")
    for n, path in enumerate(images):
        write_image(path, n)
    (image_dir / "train" / WNIDS[0][0] / ".DS_Store").write_text("")  # hidden: not an image
    counts = {"train": 4, "val": 2, "test": 2}
    return Tree(name, [n for _, n in WNIDS[:2]], counts, "imagenet/classnames.txt",
                [str(p.relative_to(root)) for p in images])


def _fgvc_aircraft(root: Path, name: str) -> Tree:
    folder, image_dir = _dirs(root, name)
    variants = ["707-320", "Falcon 2000"]
    folder.mkdir(parents=True)
    (folder / "variants.txt").write_text("\n".join(variants) + "\n")
    images, n = [], 1034000
    for part, k in PER_SPLIT.items():
        lines = []
        for variant in variants:
            for _ in range(k):
                n += 1
                lines.append(f"{n:07d} {variant}")
                write_image(image_dir / f"{n:07d}.jpg", n)
                images.append(f"{folder.name}/images/{n:07d}.jpg")
        (folder / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    counts = {s: 2 * k for s, k in PER_SPLIT.items()}
    return Tree(name, variants, counts, "fgvc_aircraft/images_variant_test.txt", images)


def _test_only(root: Path, name: str) -> Tree:
    folder, image_dir = _dirs(root, name)
    _classnames_txt(folder)
    if name == "ImageNetV2":  # folders are label indices into classnames.txt
        classes = [(str(i), n) for i, (_, n) in enumerate(WNIDS)]
    else:  # sketch has every ImageNet class, A and R their own 200 (here: other subsets)
        classes = {"ImageNetSketch": WNIDS[:2], "ImageNetA": WNIDS[2:], "ImageNetR": WNIDS[1:3]}[
            name
        ]
    images = []
    for c, (d, _) in enumerate(classes):
        for i in range(TEST_ONLY):
            path = image_dir / d / f"{name.lower()}_{i}.jpeg"
            write_image(path, 10 * c + i)
            images.append(str(path.relative_to(root)))
    if name in ("ImageNetA", "ImageNetR"):
        (image_dir / "README.txt").write_text("not a class")  # ships with the archives
    counts = {"train": 0, "val": 0, "test": TEST_ONLY * len(classes)}
    return Tree(name, [n for _, n in classes], counts, f"{folder.name}/classnames.txt", images)


BUILDERS = {
    **dict.fromkeys(SPLIT_JSON_TREES, _split_json),
    "ImageNet": _imagenet,
    "FGVCAircraft": _fgvc_aircraft,
    **dict.fromkeys(["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"], _test_only),
}


def build_tree(root: Path, name: str) -> Tree:
    """Write the miniature of CoOp dataset ``name`` under data root ``root``."""
    return BUILDERS[name](root, name)
