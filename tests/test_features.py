"""The frozen-feature cache and the streamed image path: the same numbers as encoding whole
tensors at once, one cache per list whatever reads it, clear errors for a stale cache."""

from __future__ import annotations

import json

import h5py
import pytest
import torch

from pdiff.cli import main
from pdiff.data import DatasetSpec, fewshot_data, load_fewshot, read_split
from pdiff.errors import PdiffError
from pdiff.inputs import image_list
from pdiff.methods import get_method
from tests.helpers import dataset_spec, write_checkpoint

SPEC = dataset_spec("shapes")


def _run(*args: str) -> int:
    return main([*args, "--threads", "1", "--log-level", "WARNING"])


@pytest.fixture(scope="module")
def caches(tmp_path_factory, world, backbone_spec):
    """A few-shot draw of `shapes` and its two caches: the test split and the draw (with
    augmented views)."""
    d = tmp_path_factory.mktemp("features")
    bb, ds = json.dumps(backbone_spec), json.dumps(SPEC)
    data = ["--data-root", world, "--dataset", ds]
    assert _run("fewshot", *data, "--shots", "2", "--seed", "1", "--out", f"{d}/fs.json") == 0
    assert _run("features", "--backbone", bb, *data, "--out", f"{d}/test.h5",
                "--batch-size", "7") == 0
    assert _run("features", "--backbone", bb, *data, "--fewshot", f"{d}/fs.json",
                "--augment", json.dumps({"enabled": True, "views": 3}), "--out",
                f"{d}/fs.h5") == 0
    return d


def test_streamed_and_cached_features_equal_encoding_all_images_at_once(caches, world,
                                                                        backbone):
    spec = DatasetSpec.from_dict(SPEC)
    test = read_split(world, spec).test
    everything = torch.stack([backbone.transform()(im) for im in _images(world, spec, test)])
    at_once = backbone.encode_images(everything)
    streamed = image_list(backbone, world, spec, test, batch_size=5).features()
    cached = image_list(backbone, world, spec, test, str(caches / "test.h5")).features()
    torch.testing.assert_close(streamed, at_once, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached, at_once, atol=1e-5, rtol=1e-5)


def test_a_class_subset_reads_its_own_rows_of_the_cache(caches, world, backbone):
    spec = DatasetSpec.from_dict(SPEC)
    test = read_split(world, spec).test
    subset = [d for d in test if d.label % 3 == 1][::-1]
    cached = image_list(backbone, world, spec, subset, str(caches / "test.h5"))
    batches = list(cached.batches(False, batch_size=4))
    feats = torch.cat([b[0].features for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), cached.labels)
    torch.testing.assert_close(feats, image_list(backbone, world, spec, subset).features(),
                               atol=1e-5, rtol=1e-5)


def test_image_methods_stream_pixels_with_the_cached_condition(caches, world, backbone):
    spec = DatasetSpec.from_dict(SPEC)
    test = read_split(world, spec).test[:6]
    images = image_list(backbone, world, spec, test, str(caches / "test.h5"), batch_size=4)
    inputs, labels, index = next(images.batches(True))
    assert inputs.images.shape == (4, 3, 32, 32) and index.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(inputs.features, backbone.encode_images(inputs.images),
                               atol=1e-5, rtol=1e-5)


def test_augmented_views_are_cached_for_the_draw_and_drawn_per_epoch(caches, world, backbone):
    spec = DatasetSpec.from_dict(SPEC)
    train = fewshot_data(load_fewshot(caches / "fs.json"), "train")
    with h5py.File(caches / "fs.h5") as f:
        assert f["train/augmented"].shape == (len(train), 3, backbone.embed_dim)
        assert "augmented" not in f["val"]
    images = image_list(backbone, world, spec, train, str(caches / "fs.h5"), "train", seed=1)
    aug = {"enabled": True, "views": 3}

    def epoch(draw: int) -> torch.Tensor:
        return torch.cat([b[0].features for b in images.batches(False, augment=aug,
                                                                  draw=draw)])

    assert torch.equal(epoch(0), epoch(0))
    assert not torch.equal(epoch(0), epoch(1))
    assert not torch.allclose(epoch(0), images.features())


def test_a_cached_view_is_the_fresh_crop_of_its_draw(caches, world, backbone):
    """View v in the cache is exactly what fresh crops give in epoch (draw) v: the cache is an
    approximation only in having `views` crops instead of one per epoch."""
    spec = DatasetSpec.from_dict(SPEC)
    train = fewshot_data(load_fewshot(caches / "fs.json"), "train")
    cached = image_list(backbone, world, spec, train, str(caches / "fs.h5"), "train")
    fresh = image_list(backbone, world, spec, train)  # seed 0, as the features rule's crops
    aug = {"enabled": True}
    for draw in range(3):
        crops = torch.cat([b[0].features for b in fresh.batches(False, augment=aug, draw=draw)])
        torch.testing.assert_close(crops, cached.cache.read(cached.rows, "augmented")[:, draw],
                                   atol=1e-5, rtol=1e-5)


def test_evaluation_reads_the_cache_to_the_same_numbers(caches, world, backbone_spec, tmp_path):
    sets = json.dumps([{"dataset": SPEC, "split": "all"}])
    args = ["evaluate", "--mode", "zeroshot", "--backbone", json.dumps(backbone_spec),
            "--data-root", world, "--sets", sets, "--params",
            json.dumps({"evaluation": {"batch_size": 16}})]
    assert _run(*args, "--out", f"{tmp_path}/plain.json") == 0
    assert _run(*args, "--features", json.dumps({"shapes": str(caches / "test.h5")}),
                "--out", f"{tmp_path}/cached.json") == 0
    plain, cached = (json.loads((tmp_path / f"{n}.json").read_text())["evaluations"][0]
                     for n in ("plain", "cached"))
    assert plain["correct"] == cached["correct"] and plain["total"] == 3 * 8
    assert plain["ece"] == pytest.approx(cached["ece"], abs=1e-4)


def test_a_cache_of_another_backbone_is_refused(caches, world, tmp_path):
    from pdiff.backbone import load_backbone

    other = load_backbone({"model": "pdiff-tiny", "pretrained": write_checkpoint(tmp_path, 1)})
    spec = DatasetSpec.from_dict(SPEC)
    with pytest.raises(PdiffError, match="rebuild it with this backbone"):
        image_list(other, world, spec, read_split(world, spec).test, str(caches / "test.h5"))


def test_a_cache_missing_an_image_names_the_fix(caches, world, backbone):
    spec = DatasetSpec.from_dict(SPEC)
    train = fewshot_data(load_fewshot(caches / "fs.json"), "train")
    with pytest.raises(PdiffError, match="no row for image .* delete it and rerun"):
        image_list(backbone, world, spec, read_split(world, spec).test,
                   str(caches / "fs.h5"), "train" if train else "val")


def test_every_method_trains_on_the_cache(caches, world, backbone_spec, tmp_path):
    """A textual method (cached augmented views) and an image-prompt one (fresh crops)."""
    for method, params in (("coop", {"n_ctx": 2, "init": "random"}),
                           ("vpt", {"n_ctx": 2, "depth": 1})):
        cfg = {**params, "optimizer": "adam", "lr": 0.01, "batch_size": 4, "epochs": 2}
        assert _run("train", "--method", method, "--params", json.dumps(cfg), "--backbone",
                    json.dumps(backbone_spec), "--data-root", world, "--dataset",
                    json.dumps(SPEC), "--fewshot", f"{caches}/fs.json", "--features",
                    f"{caches}/fs.h5", "--augment", json.dumps({"enabled": True, "views": 3}),
                    "--seed", "1", "--out", f"{tmp_path}/{method}.safetensors") == 0
        assert get_method(method).needs_images == (method == "vpt")


def _images(world, spec, data):
    from pdiff.data.images import load_image

    return [load_image(spec.image_root(world) / d.impath) for d in data]
