"""A dataset as real ones are (JPEGs and PNGs of every size, aspect and mode, in the CoOp
layout) through every stage with the shipped demo backbone: zero-shot, host and prompt diffusion
all read it through open_clip's preprocessing and the feature cache, and the learned ones score
well above chance."""

from __future__ import annotations

import json

import pytest

from pdiff.cli import main
from tests.helpers import CUSTOM_CLASSES, write_custom_dataset

BACKBONE = json.dumps({"model": "pdiff-tiny", "pretrained": "shipped"})
METHODS = {
    "coop": {"n_ctx": 4, "init": "a photo of a", "optimizer": "adam", "lr": 0.01,
             "batch_size": 8, "epochs": 15},
    "vpt": {"n_ctx": 2, "depth": 2, "optimizer": "adam", "lr": 0.01, "batch_size": 8,
            "epochs": 15},
}
DIFFUSION = {"objective": "flow", "target": "residual", "normalise": "scalar", "depth": 1,
             "width": 32, "heads": 2, "steps": 40, "batch_size": 16, "lr": 0.003,
             "weight_decay": 0.0, "ema": 0.9, "cls_weight": 0.0, "holdout": 0.0}
CHANCE = 100 / len(CUSTOM_CLASSES)


def _run(*args: str) -> None:
    assert main([*args, "--threads", "2", "--log-level", "WARNING"]) == 0, args


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    spec = {"name": "custom", **write_custom_dataset(root, (6, 2, 6))}
    data = ["--data-root", str(root), "--dataset", json.dumps(spec)]
    _run("fewshot", *data, "--shots", "4", "--seed", "1", "--out", f"{root}/fs.json")
    _run("features", "--backbone", BACKBONE, *data, "--out", f"{root}/test.h5")
    _run("features", "--backbone", BACKBONE, *data, "--fewshot", f"{root}/fs.json",
         "--augment", json.dumps({"enabled": True}), "--out", f"{root}/fs.h5")
    return root, spec, data


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_stage_reads_varied_images_and_scores_above_chance(custom, method):
    root, spec, data = custom
    run = root / method
    _run("train", "--method", method, "--params", json.dumps(METHODS[method]), "--backbone",
         BACKBONE, *data, "--fewshot", f"{root}/fs.json", "--features", f"{root}/fs.h5",
         "--augment", json.dumps({"enabled": True}), "--seed", "1", "--out",
         f"{run}/prompt.safetensors")
    _run("overfit", "--prompt", f"{run}/prompt.safetensors", "--backbone", BACKBONE, *data,
         "--fewshot", f"{root}/fs.json", "--features", f"{root}/fs.h5", "--params",
         json.dumps({"steps": 3, "lr": 0.003, "batch_size": 8}), "--seed", "1", "--out",
         f"{run}/store.h5")
    _run("fit-diffusion", "--prompt", f"{run}/prompt.safetensors", "--store",
         f"{run}/store.h5", "--backbone", BACKBONE, "--params", json.dumps(DIFFUSION),
         "--seed", "1", "--out", f"{run}/dit.safetensors")
    sets = json.dumps([{"dataset": spec, "split": "all"}])
    common = ["--backbone", BACKBONE, "--data-root", str(root), "--sets", sets, "--features",
              json.dumps({"custom": f"{root}/test.h5"}), "--seed", "1"]
    sampling = {"solver": "euler", "steps": 5, "start": "zero", "draws": 1}
    params = json.dumps({"evaluation": {"batch_size": 16}, "sampling": sampling})
    acc = {}
    for mode in ("zeroshot", "baseline", "diffusion"):
        extra = [] if mode == "zeroshot" else ["--prompt", f"{run}/prompt.safetensors"]
        if mode == "diffusion":
            extra += ["--dit", f"{run}/dit.safetensors", "--store", f"{run}/store.h5"]
        _run("evaluate", "--mode", mode, *extra, *common, "--params", params, "--out",
             f"{run}/{mode}.json")
        (record,) = json.loads((run / f"{mode}.json").read_text())["evaluations"]
        assert record["total"] == 6 * len(CUSTOM_CLASSES)
        acc[mode] = record["accuracy"]
    assert acc["baseline"] >= CHANCE + 40, acc
    assert acc["diffusion"] >= CHANCE + 40, acc
