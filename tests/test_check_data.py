"""`pdiff check-data` through the CLI, on miniature CoOp trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdiff.check_data import PUBLISHED_COUNTS, dataset_specs
from pdiff.cli import main
from pdiff.data import KNOWN_DATASETS
from pdiff.errors import PdiffError
from tests.helpers import build_tree

NAMES = ["OxfordPets", "ImageNet", "FGVCAircraft", "ImageNetA"]


def check(root: Path, datasets: object, out: Path | None = None) -> int:
    args = ["check-data", "--data-root", str(root), "--datasets", json.dumps(datasets),
            "--log-level", "WARNING"]
    return main(args + (["--out", str(out)] if out else []))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in NAMES:
        build_tree(tmp_path / "data", name)
    return tmp_path / "data"


def test_all_present(root, tmp_path, capsys):
    out = tmp_path / "report" / "check.json"
    assert check(root, NAMES, out) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and [r["status"] for r in report["datasets"]] == ["present"] * 4
    pets = report["datasets"][0]
    assert pets["counts"] == {"train": 4, "val": 2, "test": 2} and pets["classes"] == 2
    assert pets["expected"] == PUBLISHED_COUNTS["OxfordPets"]
    assert pets["warnings"][0] == "classes: 2 here, 37 in CoOp's split"
    table = capsys.readouterr().out
    assert "OxfordPets" in table and "4 (CoOp 2944)" in table and "ImageNetA" in table
    assert "differ from CoOp's published sizes" in table
    assert not out.with_name("check.json.partial").exists()


def test_removed_image_is_named(root, tmp_path, capsys):
    (root / "fgvc_aircraft/images/1034003.jpg").unlink()
    out = tmp_path / "check.json"
    assert check(root, NAMES, out) == 2
    err = capsys.readouterr().err
    assert "FGVCAircraft" in err and "1034003.jpg" in err
    aircraft = json.loads(out.read_text())["datasets"][2]
    assert aircraft["status"] == "broken"
    assert aircraft["missing_images"] == {"count": 1, "sample": ["1034003.jpg"]}


@pytest.mark.parametrize(
    "name, rel",
    [
        ("OxfordPets", "oxford_pets/split_zhou_OxfordPets.json"),
        ("ImageNet", "imagenet/classnames.txt"),
        ("FGVCAircraft", "fgvc_aircraft/images_variant_test.txt"),
    ],
)
def test_removed_index_file_is_named(root, capsys, name, rel):
    (root / rel).unlink()
    assert check(root, {n: {} for n in NAMES}) == 2  # the config's catalogue form
    captured = capsys.readouterr()
    assert f"{name}: missing {root / rel}" in captured.out
    assert rel in captured.err and "not usable" in captured.err


def test_missing_dataset_folder_and_user_dataset(root, tmp_path, capsys):
    mine = {"name": "mine", "folder": "mine", "split_file": "split.json"}
    assert check(root, ["OxfordPets", mine]) == 2
    out = capsys.readouterr().out
    assert f"mine: missing {root / 'mine'}" in out and "split.json" not in out
    (root / "mine").mkdir()
    (root / "mine/split.json").write_text('{"train": [], "val": [], "test": [["a.png", 0, "a"]]}')
    assert check(root, mine) == 2  # a.png itself is missing
    (root / "mine/a.png").write_bytes(b"")
    assert check(root, mine) == 0
    assert "CoOp" not in capsys.readouterr().out  # unknown to CoOp: no expected sizes


def test_malformed_file_is_broken(root, capsys):
    (root / "oxford_pets/split_zhou_OxfordPets.json").write_text("{")
    assert check(root, ["OxfordPets"]) == 2
    assert "is not readable JSON" in capsys.readouterr().err


def test_dataset_arguments():
    assert [s.name for s in dataset_specs("EuroSAT")] == ["EuroSAT"]
    assert dataset_specs({"name": "x", "folder": "x", "split_file": "s.json"})[0].folder == "x"
    assert dataset_specs({"ImageNetR": None})[0].image_dir == "imagenet-r"
    for bad in ([], {}, 3):
        with pytest.raises(PdiffError, match="non-empty JSON list"):
            dataset_specs(bad)
    assert set(PUBLISHED_COUNTS) == set(KNOWN_DATASETS)
    with pytest.raises(SystemExit):
        main(["check-data", "--data-root", ".", "--datasets", "[oops"])
