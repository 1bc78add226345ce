"""Readers for the 15 CoOp datasets, on miniature copies of their real on-disk layouts."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from pdiff.data import (
    FORMATS,
    KNOWN_DATASETS,
    TEMPLATES,
    DatasetSpec,
    draw_fewshot,
    fewshot_data,
    read_split,
)
from pdiff.data.readers import READERS
from pdiff.errors import PdiffError
from tests.helpers import BUILDERS, build_tree, dassl_reference

ALL = sorted(KNOWN_DATASETS)
TEST_ONLY = ("imagenetv2", "wnid_folders")
TRAINABLE = [n for n in ALL if KNOWN_DATASETS[n].get("format") not in TEST_ONLY]


def test_fixtures_cover_all_15_and_formats_have_readers():
    assert len(ALL) == 15 and set(BUILDERS) == set(ALL)
    assert set(FORMATS) == set(READERS)


@pytest.mark.parametrize("name", ALL)
def test_reader(tmp_path, name):
    tree = build_tree(tmp_path, name)
    splits = read_split(tmp_path, name)
    assert splits.classnames == tree.classnames
    assert {s: len(getattr(splits, s)) for s in tree.counts} == tree.counts
    assert splits.spec.template == TEMPLATES[name]
    image_root = splits.spec.image_root(tmp_path)
    on_disk = {str((image_root / d.impath).relative_to(tmp_path))
               for s in ("train", "val", "test") for d in getattr(splits, s)}
    assert on_disk == set(tree.images)  # every image found, paths relative to image_root
    for part in (splits.train, splits.val, splits.test):
        assert all(d.classname == splits.classnames[d.label] for d in part)
        assert not any(Path(d.impath).is_absolute() for d in part)
    assert {d.label for d in splits.test} == set(range(len(tree.classnames)))


@pytest.mark.parametrize("name", TRAINABLE)
def test_fewshot_on_readers_matches_dassl(tmp_path, name):
    build_tree(tmp_path, name)
    splits = read_split(tmp_path, name)
    draw = draw_fewshot(splits, 1, seed=2)
    train, val = fewshot_data(draw, "train"), fewshot_data(draw, "val")
    assert sorted(d.label for d in train) == [0, 1]
    state = random.getstate()
    try:
        random.seed(2)  # CoOp: global seed, then train, then val on the same stream
        assert train == dassl_reference(splits.train, 1)
        assert val == dassl_reference(splits.val, 1)
    finally:
        random.setstate(state)


def test_imagenet_val_is_test_and_labels_follow_sorted_folders(tmp_path):
    build_tree(tmp_path, "ImageNet")
    splits = read_split(tmp_path, "ImageNet")
    assert splits.val == splits.test
    assert splits.train[0].impath == "train/n01440764/n01440764_1.JPEG"
    assert splits.test[-1].impath == "val/n01443537/ILSVRC2012_val_00000002.JPEG"
    assert [d.label for d in splits.train] == [0, 0, 1, 1]


def test_imagenet_without_train_lists_no_training_image(tmp_path):
    """Training and evaluation read class names and test images only: an unreadable train
    class folder does not stop them (check-data and the few-shot draw still list it)."""
    build_tree(tmp_path, "ImageNet")
    full = read_split(tmp_path, "ImageNet")
    for image in (tmp_path / "imagenet/images/train/n01440764").iterdir():
        image.unlink()
    lean = read_split(tmp_path, "ImageNet", with_train=False)
    assert lean.train == [] and lean.test == full.test and lean.classnames == full.classnames
    with pytest.raises(PdiffError, match="n01440764 of dataset 'ImageNet' holds no images"):
        read_split(tmp_path, "ImageNet")


def test_imagenet_a_r_use_their_own_classes(tmp_path):
    build_tree(tmp_path, "ImageNetA")
    splits = read_split(tmp_path, "ImageNetA")
    assert splits.classnames == ["great white shark", "stingray"]  # README.txt is no class
    assert splits.test[0].impath.startswith("n01484850/")
    assert splits.train == [] and splits.val == []


def test_variant_falls_back_to_imagenet_classnames(tmp_path):
    build_tree(tmp_path, "ImageNet")
    build_tree(tmp_path, "ImageNetSketch")
    (tmp_path / "imagenet-sketch" / "classnames.txt").unlink()
    assert read_split(tmp_path, "ImageNetSketch").classnames == ["tench", "goldfish"]
    (tmp_path / "imagenet" / "classnames.txt").unlink()
    with pytest.raises(PdiffError, match=r"imagenet-sketch/classnames.txt not found"):
        read_split(tmp_path, "ImageNetSketch")


def test_known_name_defaults_and_overrides():
    spec = DatasetSpec.from_dict({"name": "ImageNet"})
    assert (spec.format, spec.folder, spec.image_dir) == ("imagenet", "imagenet", "images")
    moved = DatasetSpec.from_dict({"name": "OxfordPets", "folder": "pets"})
    assert (moved.folder, moved.image_dir, moved.split_file) == (
        "pets", "images", "split_zhou_OxfordPets.json")
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    own = DatasetSpec.from_dict({"name": "mine", "folder": "m", "split_file": "s.json"})
    assert (own.format, own.image_dir, own.template) == ("split_json", "", "a photo of a {}.")


def test_user_dataset_in_another_layout_by_config(tmp_path):
    """A dataset the code does not know, in an ImageNet-style layout, through config alone."""
    (tmp_path / "birds").mkdir()
    (tmp_path / "birds" / "names.txt").write_text("b01 blue_jay\nb02 robin\n")
    build = tmp_path / "birds" / "pics"
    for d in ("b01", "b02"):
        (build / d).mkdir(parents=True)
        (build / d / "x.png").write_bytes(b"")
    entry = {"name": "birds", "folder": "birds", "format": "wnid_folders",
             "image_dir": "pics", "classnames_file": "names.txt", "template": "a {} bird."}
    splits = read_split(tmp_path, entry)
    assert splits.classnames == ["blue jay", "robin"]
    assert [d.impath for d in splits.test] == ["b01/x.png", "b02/x.png"]


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"name": "x", "folder": "x", "format": "csv"}, "unknown format 'csv'"),
        ({"name": "x", "folder": "x"}, "needs 'split_file'"),
        ({"name": "x", "folder": "x", "format": "imagenet", "classnames_file": ""}, "non-empty"),
    ],
)
def test_bad_spec(entry, match):
    with pytest.raises(PdiffError, match=match):
        DatasetSpec.from_dict(entry)


def _corrupt(root: Path, name: str, how: str) -> None:
    if how == "no_classnames":
        (root / KNOWN_DATASETS[name]["folder"] / "classnames.txt").unlink()
    elif how == "bad_classnames":
        (root / KNOWN_DATASETS[name]["folder"] / "classnames.txt").write_text("n01440764\n")
    elif how == "val_folder_missing":
        shutil.rmtree(root / "imagenet/images/val/n01443537")
    elif how == "empty_class":
        for f in (root / "imagenet/images/train/n01443537").iterdir():
            f.unlink()
    elif how == "bad_variant":
        with (root / "fgvc_aircraft/images_variant_val.txt").open("a") as f:
            f.write("0000001 Spitfire\n")
    elif how == "no_split_txt":
        (root / "fgvc_aircraft/images_variant_train.txt").unlink()
    elif how == "extra_v2_folder":
        (root / "imagenetv2/imagenetv2-matched-frequency-format-val/999").mkdir()
    elif how == "no_image_dir":
        shutil.rmtree(root / "imagenet-rendition/imagenet-r")


@pytest.mark.parametrize(
    "name, how, match",
    [
        ("ImageNet", "no_classnames", r"class-name file .*imagenet/classnames.txt not found"),
        ("ImageNet", "bad_classnames", r"classnames.txt:1: .*has no class name"),
        ("ImageNet", "val_folder_missing", r"must hold the same class folders.*n01443537"),
        ("ImageNet", "empty_class", r"n01443537 of dataset 'ImageNet' holds no images"),
        ("FGVCAircraft", "bad_variant", r"images_variant_val.txt:3: .*Spitfire"),
        ("FGVCAircraft", "no_split_txt", r"images_variant_train.txt not found"),
        ("ImageNetV2", "extra_v2_folder", r"folder\(s\) \['999'\] beyond the 4 classes"),
        ("ImageNetR", "no_image_dir", r"folder .*imagenet-r not found"),
    ],
)
def test_layout_errors(tmp_path, name, how, match):
    build_tree(tmp_path, name)
    _corrupt(tmp_path, name, how)
    with pytest.raises(PdiffError, match=match):
        read_split(tmp_path, name)


def test_split_json_names_are_cleaned_as_coop_prompts_them(tmp_path):
    build_tree(tmp_path, "UCF101")
    raw = json.loads((tmp_path / "ucf101/split_zhou_UCF101.json").read_text())
    assert raw["train"][0][2] == "Apply_Eye_Makeup"  # as CoOp stores it
    splits = read_split(tmp_path, "UCF101")
    assert splits.train[0].classname == "Apply Eye Makeup"  # as CoOp's trainers prompt it
