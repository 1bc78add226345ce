"""The rehearsal world (`world.kind: rehearsal`) and random weights (`pretrained: random`): the
world passes `pdiff check-data` with every benchmark dataset's real class count, its images vary
in size, aspect and mode; random weights are the same in every job and refused outside a config
marked `rehearsal: true`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import h5py
import open_clip
import pytest
import torch
from PIL import Image

from pdiff.backbone import check_identity, load_backbone
from pdiff.check_data import PUBLISHED_COUNTS, check_data
from pdiff.cli import build_parser, main
from pdiff.data import KNOWN_DATASETS, read_split
from pdiff.data.images import load_image
from pdiff.data.rehearsal import MARKER, write_rehearsal
from pdiff.errors import PdiffError
from tests.helpers import BIN, REPO, plan, shell_commands, snakemake, write_config

TINY = {"seed": 0, "train_per_class": 1, "val_per_class": 1, "test_per_class": 1,
        "min_side": 16, "max_side": 64}
NAMES = list(KNOWN_DATASETS)
BENCHMARK = REPO / "config" / "benchmark.yaml"
REHEARSAL = REPO / "config" / "rehearsal.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("rehearsal")
    return root, write_rehearsal(root, TINY)


def _images(root: Path, name: str) -> list[Path]:
    splits = read_split(root, name)
    image_root = splits.spec.image_root(root)
    # ImageNet's val and test are the same images (its val folder).
    return list(dict.fromkeys(image_root / d.impath for part in (splits.train, splits.val,
                                                                 splits.test) for d in part))


def test_all_15_datasets_pass_check_data_with_their_real_class_counts(world):
    root, manifest = world
    report = check_data(data_root=root, datasets=NAMES)
    assert report["ok"], [(r["name"], r["error"], r["missing"]) for r in report["datasets"]]
    for r in report["datasets"]:
        assert r["classes"] == PUBLISHED_COUNTS[r["name"]]["classes"], r["name"]
        assert r["counts"] == manifest["datasets"][r["name"]]["counts"], r["name"]
    assert len(report["datasets"]) == 15


def test_imagenet_names_are_open_clips_and_wnids_are_shared(world):
    root, _ = world
    names = list(open_clip.IMAGENET_CLASSNAMES)
    for name in ("ImageNet", "ImageNetV2", "ImageNetSketch"):
        assert read_split(root, name, with_train=False).classnames == names
    assert read_split(root, "ImageNetA").classnames == names[0::5]
    assert read_split(root, "ImageNetR").classnames == names[2::5]
    wnids = sorted(p.name for p in (root / "imagenet/images/train").iterdir())
    assert len(wnids) == 1000 and all(w[0] == "n" and len(w) == 9 and w[1:].isdigit()
                                      for w in wnids)
    assert sorted(p.name for p in (root / "imagenet-sketch/images").iterdir()) == wnids
    for folder in ("imagenet-adversarial/imagenet-a", "imagenet-rendition/imagenet-r"):
        assert {p.name for p in (root / folder).iterdir()} < set(wnids)


def test_images_cover_every_mode_and_vary_in_size_and_aspect(world):
    root, manifest = world
    modes: Counter = Counter()
    shorter, aspects, examples = [], [], {}
    for name in NAMES:
        for path in _images(root, name):
            with Image.open(path) as im:
                # PNG exactly for the palette and RGBA images, JPEG for the rest.
                assert (im.format == "PNG") == (im.mode in ("P", "RGBA")), path
                modes[im.mode] += 1
                examples.setdefault(im.mode, path)
                if name == "EuroSAT":
                    assert im.size == (64, 64)
                else:
                    shorter.append(min(im.size))
                    aspects.append(im.size[0] / im.size[1])
    assert set(modes) == {"RGB", "L", "P", "RGBA", "CMYK"}
    assert sum(modes.values()) == sum(sum(d["counts"].values()) - d["counts"]["val"] * (
        d["format"] == "imagenet") for d in manifest["datasets"].values())
    assert min(shorter) < 20 and max(shorter) > 60
    assert min(aspects) < 0.6 and max(aspects) > 1.7
    for path in examples.values():
        assert load_image(path).mode == "RGB"


def test_prepare_cli_is_deterministic_and_replaces_its_own_stale_files(world, tmp_path):
    root, manifest = world
    again = tmp_path / "data"
    stale = again / "imagenet" / "images" / "train" / "n00000001" / "old.JPEG"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    (again / "imagenet" / MARKER).write_text("")
    args = ["prepare", "--params", json.dumps({"kind": "rehearsal", **TINY}),
            "--data-root", str(again), "--manifest", str(again / "manifest.json")]
    assert main(args) == 0

    def digests(base: Path) -> dict[str, str]:
        return {p.relative_to(base).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(base.rglob("*")) if p.is_file() and p.name != "manifest.json"}

    assert digests(again) == digests(root)
    assert json.loads((again / "manifest.json").read_text())["datasets"] == manifest["datasets"]


def test_a_folder_it_did_not_write_is_never_touched(tmp_path):
    mine = tmp_path / "oxford_pets" / "images" / "cat.jpg"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"real data")
    with pytest.raises(PdiffError, match="not written by the rehearsal world"):
        write_rehearsal(tmp_path, TINY)
    assert mine.read_bytes() == b"real data" and sorted(tmp_path.iterdir()) == [
        tmp_path / "oxford_pets"]


def test_random_weights_are_the_same_in_every_load():
    spec = {"model": "ViT-S-32-alt", "pretrained": "random"}
    state = torch.random.get_rng_state()
    a, b = load_backbone(spec), load_backbone(spec)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is untouched
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                         strict=True):
        assert torch.equal(v, w), k
    assert a.identity == {"model": "ViT-S-32-alt", "pretrained": "random", "sha256": None}
    check_identity(a.identity, b.identity, "a store")
    with pytest.raises(PdiffError, match="rebuild it"):
        check_identity(a.identity, {**a.identity, "pretrained": "openai", "sha256": "ab"}, "x")


@pytest.mark.dryrun
def test_rehearsal_overlay_plans_the_benchmark_with_its_world(tmp_path):
    counts, _ = plan(tmp_path, [BENCHMARK, REHEARSAL])
    assert counts["prepare"] == 1 and counts["check_data"] == 15
    assert "fetch_weights" not in counts and counts["train"] == 6 * 12  # methods x runs
    res = snakemake(tmp_path, "-n", "-p", configfile=[BENCHMARK, REHEARSAL])
    parser = build_parser()
    parsed = [parser.parse_args(argv[1:]) for argv in shell_commands(res.stdout + res.stderr)]
    backbones = {json.dumps(a.backbone) for a in parsed if "backbone" in a}
    assert backbones == {'{"model": "ViT-S-32-alt", "pretrained": "random"}'}
    prepare = next(a for a in parsed if a.command == "prepare")
    assert prepare.params == {"kind": "rehearsal", "seed": 0, "train_per_class": 2,
                              "val_per_class": 1, "test_per_class": 1, "min_side": 40,
                              "max_side": 300}  # not the demo world's keys from config.yaml


@pytest.mark.dryrun
@pytest.mark.parametrize(
    ("overlay", "named"),
    [
        ({"backbone": {"model": "ViT-S-32-alt", "pretrained": "random"}},
         ["backbone.pretrained is random"]),
        ({"rehearsal": False}, ["backbone.pretrained is random", "world.kind is rehearsal"]),
    ],
)
def test_rehearsal_parts_are_refused_outside_a_rehearsal(tmp_path, overlay, named):
    configs = [BENCHMARK, *([REHEARSAL] if "rehearsal" in overlay else [])]
    res = snakemake(tmp_path, "-n", configfile=[*configs, write_config(tmp_path, overlay)])
    out = res.stdout + res.stderr
    assert res.returncode != 0
    for text in [*named, "not marked `rehearsal: true`"]:
        assert text in out, (text, out[-2000:])


# The rehearsal's CI slice: a textual and an image-prompt method through ImageNet's 1,000
# classes (the transfer source) and two targets of other shapes, end to end for real.
SLICE = {
    "methods": ["coop", "vpt"],
    "presets": [],
    "protocols": {"base2new": None,
                  "cross_dataset": {"source": "ImageNet", "targets": ["EuroSAT"]},
                  "domain_generalization": {"source": "ImageNet", "targets": ["ImageNetA"]}},
    "limit": {"train_images": 4, "test_images": 4},
}


@pytest.mark.workflow
def test_rehearsal_slice_runs_end_to_end(tmp_path):
    """prepare -> check -> features -> train -> overfit -> DiT -> evaluate -> report with
    the benchmark's recipes, a real 224-px architecture and the real formats."""
    overlay = write_config(tmp_path, SLICE, "slice.yaml")
    res = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory",
         str(tmp_path), "--configfile", str(BENCHMARK), str(REHEARSAL), str(overlay),
         "--workflow-profile", "none", "--cores", "2"],
        env={**os.environ, "HF_HUB_OFFLINE": "1",
             "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    results = tmp_path / "results" / "rehearsal"
    records = [r for f in (results / "runs").rglob("eval/**/*.json")
               for r in json.loads(f.read_text())["evaluations"]]
    assert {(r["method"], r["target"]) for r in records} == {
        (m, t) for m in ("coop", "vpt") for t in ("ImageNet", "EuroSAT", "ImageNetA")}
    assert all(r["total"] == 4 for r in records)
    for line in (results / "report" / "cross_dataset.md").read_text().splitlines():
        assert "nan" not in line.lower(), line
    with h5py.File(results / "features" / "ImageNet" / "test.h5") as f:
        assert len(f["test/features"]) == 4
