"""Tests for pdiff.data: CoOp split reading, few-shot draws, subsampling, templates, images."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from pdiff.data import (
    DatasetSpec,
    Datum,
    class_subset,
    clean_classname,
    draw_fewshot,
    fewshot_data,
    format_prompt,
    generate_fewshot,
    load_fewshot,
    read_split,
    save_fewshot,
    subsample_classes,
)
from pdiff.data.images import ImageDataset, image_loader, load_image
from pdiff.errors import PdiffError
from tests.helpers import VARIED, dassl_reference, save_varied

CLASSES = ["cat", "dog", "fox", "owl", "yak"]  # odd count on purpose (base 3 / new 2)
SPEC = {"name": "Toy", "folder": "toy", "split_file": "split_zhou_Toy.json", "image_dir": "images"}


def make_tree(root: Path, n_train: int = 6, n_val: int = 5, n_test: int = 2) -> Path:
    """A tiny CoOp-layout dataset: 8x8 PNGs per class, split file listing them."""
    img_dir = root / "toy" / "images"
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CLASSES):
        (img_dir / name).mkdir(parents=True)
        for part, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            for i in range(n):
                rel = f"{name}/{part}_{i}.png"
                Image.new("RGB", (8, 8), (label * 40, i * 20, 7)).save(img_dir / rel)
                split[part].append([rel, label, name])
    (root / "toy" / SPEC["split_file"]).write_text(json.dumps(split))
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "data")


@pytest.fixture
def splits(root: Path):
    return read_split(root, SPEC)


def write_split(root: Path, split: object) -> Path:
    path = root / "toy" / SPEC["split_file"]
    path.write_text(split if isinstance(split, str) else json.dumps(split))
    return path


# --- reader --------------------------------------------------------------------------------


def test_read_split(splits, root):
    assert splits.classnames == CLASSES
    assert splits.num_classes == 5
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 25, 10)
    assert splits.train[0] == Datum("cat/train_0.png", 0, "cat")
    assert {d.label for d in splits.test} == set(range(5))
    assert splits.spec.image_root(root) == root / "toy" / "images"
    assert splits.spec.template == "a photo of a {}."


def test_spec_from_dict_and_known_name():
    spec = DatasetSpec.from_dict("OxfordPets")
    assert (spec.folder, spec.image_dir, spec.split_file) == (
        "oxford_pets",
        "images",
        "split_zhou_OxfordPets.json",
    )
    assert spec.template == "a photo of a {}, a type of pet."
    with pytest.raises(PdiffError, match="valid keys"):
        DatasetSpec.from_dict({**SPEC, "imgdir": "x"})
    with pytest.raises(PdiffError, match="missing"):
        DatasetSpec.from_dict({"name": "x"})
    with pytest.raises(PdiffError, match="placeholder"):
        DatasetSpec.from_dict({**SPEC, "template": "no slot"})


def test_missing_root(tmp_path):
    with pytest.raises(PdiffError, match="data root .*nope does not exist"):
        read_split(tmp_path / "nope", SPEC)


def test_missing_split_file(root):
    (root / "toy" / SPEC["split_file"]).unlink()
    with pytest.raises(PdiffError, match="split_zhou_Toy.json not found"):
        read_split(root, SPEC)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not readable JSON"),
        ({"train": [], "val": []}, "lacks split"),
        ({"train": [["a.png", 0]], "val": [], "test": []}, r"malformed entry train\[0\]"),
        ({"train": [["/abs.png", 0, "a"]], "val": [], "test": []}, "malformed entry"),
        ({"train": [["a.png", "0", "a"]], "val": [], "test": []}, "malformed entry"),
        ({"train": [["a.png", 0, "a"]], "val": [["b.png", 2, "c"]], "test": []}, "contiguous"),
        ({"train": [["a.png", 0, "a"], ["b.png", 0, "b"]], "val": [], "test": []}, "two class"),
    ],
)
def test_bad_split_file(root, content, match):
    write_split(root, content)
    with pytest.raises(PdiffError, match=match) as exc:
        read_split(root, SPEC)
    assert "split_zhou_Toy.json" in str(exc.value)


# --- few-shot -------------------------------------------------------------------------------


def test_fewshot_counts_and_reference(splits):
    draw = draw_fewshot(splits, 2, seed=1)
    train, val = fewshot_data(draw, "train"), fewshot_data(draw, "val")
    assert all(sum(d.label == y for d in train) == 2 for y in range(5))
    assert all(sum(d.label == y for d in val) == 2 for y in range(5))
    state = random.getstate()
    try:
        random.seed(1)  # CoOp: global seed, then train, then val on the same stream
        assert train == dassl_reference(splits.train, 2)
        assert val == dassl_reference(splits.val, min(2, 4))
    finally:
        random.setstate(state)


def test_fewshot_val_capped_at_4_and_small_classes_kept(splits):
    draw = draw_fewshot(splits, 8, seed=0)  # only 6 train / 5 val images per class
    train, val = fewshot_data(draw, "train"), fewshot_data(draw, "val")
    assert len(train) == 30  # fewer than k -> all kept
    assert all(sum(d.label == y for d in val) == 4 for y in range(5))


def test_fewshot_seeds(splits):
    assert draw_fewshot(splits, 2, 3) == draw_fewshot(splits, 2, 3)
    assert draw_fewshot(splits, 2, 3)["train"] != draw_fewshot(splits, 2, 4)["train"]
    assert generate_fewshot(splits.train, 0, random.Random(0)) == splits.train


def test_save_load_roundtrip(splits, tmp_path):
    draw = draw_fewshot(splits, 1, seed=2)
    path = tmp_path / "fs" / "shot_1-seed_2.json"
    save_fewshot(path, draw)
    assert load_fewshot(path) == draw
    assert not path.with_name(path.name + ".partial").exists()
    with pytest.raises(PdiffError, match="not found.*pdiff fewshot"):
        load_fewshot(tmp_path / "absent.json")
    path.write_text("{")
    with pytest.raises(PdiffError, match="shot_1-seed_2.json is corrupt.*pdiff fewshot"):
        load_fewshot(path)
    path.write_text(json.dumps({"dataset": "Toy", "shots": 1}))
    with pytest.raises(PdiffError, match=r"lacks key.*pdiff fewshot"):
        load_fewshot(path)


# --- base-to-new --------------------------------------------------------------------------


def test_subsample_base_new(splits):
    base_train, base_test = subsample_classes(splits.train, splits.test, subsample="base")
    new_train, new_test = subsample_classes(splits.train, splits.test, subsample="new")
    assert sorted({d.label for d in base_train}) == [0, 1, 2]
    assert {d.classname for d in base_test} == {"cat", "dog", "fox"}
    assert sorted({d.label for d in new_train}) == [0, 1]
    assert {(d.label, d.classname) for d in new_test} == {(0, "owl"), (1, "yak")}
    assert class_subset(CLASSES, "base") == ["cat", "dog", "fox"]
    assert class_subset(CLASSES, "new") == ["owl", "yak"]
    assert subsample_classes(splits.train, subsample="all") == (splits.train,)
    with pytest.raises(PdiffError, match="subsample"):
        subsample_classes(splits.train, subsample="half")


# --- templates ------------------------------------------------------------------------------


def test_templates():
    assert format_prompt("{} texture.", "banded") == "banded texture."
    with pytest.raises(PdiffError, match="exactly one"):
        format_prompt("a {} {}", "x")
    assert clean_classname("  golden__retriever ") == "golden retriever"
    assert clean_classname("Apply_Eye_Makeup", camel=True) == "Apply Eye Makeup"
    assert clean_classname("ApplyEyeMakeup", camel=True) == "Apply Eye Makeup"
    assert clean_classname("ApplyEyeMakeup") == "ApplyEyeMakeup"


# --- images ---------------------------------------------------------------------------------


def test_images(splits, root, backbone):
    image_root = splits.spec.image_root(root)
    ds = ImageDataset(image_root, splits.test, backbone.transform())
    x, label, index = ds[3]
    assert x.shape == (3, 32, 32) and label == 1 and index == 3
    batches = list(image_loader(ds, batch_size=4))
    pixels = torch.cat([b[0] for b in batches])
    assert pixels.shape == (10, 3, 32, 32) and pixels.dtype == torch.float32
    assert torch.equal(pixels[3], x)
    assert torch.cat([b[2] for b in batches]).tolist() == list(range(10))


def test_images_of_every_size_and_mode_batch_through_the_models_preprocessing(tmp_path,
                                                                               backbone):
    data = []
    for i in range(len(VARIED)):
        path = save_varied(tmp_path / f"img{i}", (200, 40, 90), i)
        with Image.open(path) as im:
            assert (im.size, im.mode) == (VARIED[i][:2], VARIED[i][2])
        data.append(Datum(path.name, 0, "x"))
    ds = ImageDataset(tmp_path, data, backbone.transform())
    (pixels, _, _), = image_loader(ds, batch_size=len(data))
    assert pixels.shape == (len(data), 3, 32, 32)
    # open_clip's preprocessing, not a squash: the shorter side is resized, then centre-cropped
    ref = backbone.transform()(load_image(tmp_path / data[1].impath))
    torch.testing.assert_close(pixels[1], ref)
    # every mode becomes RGB with the same colour (JPEG and CMYK round trips aside)
    mean = backbone.model.visual.preprocess_cfg["mean"]
    std = backbone.model.visual.preprocess_cfg["std"]
    rgb = pixels[[0, 2, 3, 5]].mean((-1, -2)) * torch.tensor(std)[:, None].T + torch.tensor(mean)
    torch.testing.assert_close(rgb, torch.tensor([[200, 40, 90]] * 4) / 255.0, atol=0.06,
                               rtol=0)


def test_augmentation_is_seeded_per_image_and_draw(tmp_path, backbone):
    data = [Datum(save_varied(tmp_path / f"img{i}", (9, 99, 199), i).name, 0, "x")
            for i in range(10)]
    ds = ImageDataset(tmp_path, data, backbone.transform({"enabled": True}), seed=1)
    assert torch.equal(ds[(2, 0)][0], ds[(2, 0)][0])  # same draw: same crop, in any worker
    assert not torch.equal(ds[(2, 0)][0], ds[(2, 1)][0])  # next epoch: another crop
    ordered = torch.cat([b[0] for b in image_loader(ds, [(i, 0) for i in range(10)], 3)])
    workers = torch.cat([b[0] for b in image_loader(ds, [(i, 0) for i in range(10)], 4,
                                                    workers=2)])
    assert torch.equal(ordered, workers)


def test_unreadable_and_missing_image(root, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    with pytest.raises(PdiffError, match=r"broken\.png is unreadable.*pdiff check-data"):
        load_image(bad)
    with pytest.raises(PdiffError, match=r"gone\.png is missing"):
        load_image(tmp_path / "gone.png")
    with pytest.raises(PdiffError, match=r"broken\.png"):
        next(iter(image_loader(ImageDataset(tmp_path, [Datum("broken.png", 0, "x")],
                                            lambda im: im))))
