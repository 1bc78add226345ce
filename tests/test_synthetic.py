"""The embedded demo world: deterministic, CoOp layout, colour-major labels, the cast shift."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from pdiff.data import DatasetSpec, class_subset, read_split
from pdiff.data.synthetic import (
    DATASETS,
    STYLES,
    CaptionSampler,
    WorldSpec,
    apply_cast,
    render_batch,
    write_world,
)
from tests.helpers import TINY_WORLD, dataset_spec


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.name != "manifest.json":
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_world_is_written_in_the_coop_layout_and_read_back(world):
    for name, (_, _, has_train) in DATASETS.items():
        splits = read_split(world, DatasetSpec.from_dict(dataset_spec(name)))
        assert len(splits.classnames) == TINY_WORLD["colours"] * TINY_WORLD["objects"]
        assert len(splits.test) == len(splits.classnames) * TINY_WORLD["test_per_class"]
        assert bool(splits.train) == has_train
        assert all(len(c.split()) >= 2 for c in splits.classnames)  # "<colour> <object>"


def test_base_and_new_classes_split_the_colours(world):
    names = read_split(world, DatasetSpec.from_dict(dataset_spec("shapes"))).classnames
    base = {c.split()[0] for c in class_subset(names, "base")}
    new = {c.split()[0] for c in class_subset(names, "new")}
    assert base and new and not base & new


def test_world_is_deterministic(tmp_path):
    params = {**TINY_WORLD, "colours": 2, "objects": 2, "test_per_class": 1}
    write_world(tmp_path / "a", params)
    write_world(tmp_path / "b", params)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_every_style_renders_valid_images():
    gen = torch.Generator().manual_seed(0)
    for family in ("shapes", "patterns"):
        imgs = render_batch(family, torch.tensor([0, 1] * 5), torch.arange(10) % 8,
                            STYLES * 2, gen)
        assert imgs.shape == (10, 3, 32, 32)
        assert imgs.min() >= 0 and imgs.max() <= 1 and imgs.std() > 0.05


def test_cast_swaps_red_and_blue_partially():
    red = torch.zeros(1, 3, 1, 1)
    red[:, 0] = 1
    out = apply_cast(red, 0.4)
    assert out[0, :, 0, 0].tolist() == [0.6000000238418579, 0.0, 0.4000000059604645]


def test_caption_sampler_pairs_images_with_their_class():
    sampler = CaptionSampler(WorldSpec(colours=4, objects=2), torch.Generator().manual_seed(0))
    images, captions, ids = sampler.sample(16)
    assert images.shape == (16, 3, 32, 32) and len(captions) == 16
    for cap, cid in zip(captions, ids.tolist(), strict=True):
        family = sampler.families[cid // 8]
        assert WorldSpec(4, 2).classnames(family)[cid % 8] in cap
