"""Bad input ends with one clear message naming the problem and the fix, a non-zero exit, and no
output that looks finished.

Already covered elsewhere, not repeated here: unknown method or dataset, shots < 1, sampling
steps < 1 (test_workflow_static.py::test_bad_config_rejected); missing data root and a missing
prompt checkpoint through the CLI, a store of another backbone
(test_stages.py::test_missing_inputs_fail_with_one_message, ::test_store_of_another_backbone_is_
refused); the library-level messages (test_data.py, test_readers.py, test_backbone.py,
test_store.py). This file adds the rest, end to end through `pdiff` or `snakemake -n`.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import h5py
import pytest

from tests.helpers import (
    SMOKE,
    dataset_spec,
    load,
    run_cli,
    set_key,
    snakemake,
    tiny_coop_run,
    write_config,
)

COOP = {"n_ctx": 4, "init": "random", "optimizer": "adam", "lr": 0.002, "batch_size": 8,
        "epochs": 1}
OVERFIT = {"steps": 1, "lr": 0.01, "batch_size": 4}
DIFFUSION = {"objective": "flow", "target": "residual", "normalise": "scalar", "depth": 1,
             "width": 32, "heads": 2, "steps": 2, "batch_size": 8, "lr": 0.001,
             "weight_decay": 0.0, "ema": 0.99, "cls_weight": 0.0}
EVAL = {"evaluation": {"batch_size": 64},
        "sampling": {"solver": "euler", "steps": 2, "start": "zero", "draws": 1}}


# ---------------------------------------------------------------------------------------------
# Config schema violations: rejected by `snakemake -n` before any job starts
# ---------------------------------------------------------------------------------------------


@pytest.mark.dryrun
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("protocols.few_shot", {"datasets": ["shapes"]}, ["few_shot", "protocols"]),
        ("diffusion.steps", 0, ["['diffusion']['steps']", "minimum of 1"]),
        ("overfit.steps", 0, ["['overfit']['steps']", "minimum of 1"]),
        ("backbone.pretrain.steps", 0, ["['pretrain']['steps']", "minimum of 1"]),
        ("method_params.coop.epochs", 0, ["['coop']['epochs']", "minimum of 1"]),
    ],
    ids=["unknown-protocol", "diffusion-steps", "overfit-steps", "pretrain-steps",
         "epochs"],
)
def test_config_violation_stops_before_any_job(tmp_path, key, value, expected):
    res = snakemake(tmp_path, "-n", configfile=write_config(tmp_path, set_key(load(SMOKE), key,
                                                                           value)))
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    for text in expected:
        assert text in out, (text, out[-2000:])
    assert not (tmp_path / "results").exists() and "Job stats" not in out


# ---------------------------------------------------------------------------------------------
# Bad inputs to the stages: `pdiff <stage>` exits 2 with one line and writes no output
# ---------------------------------------------------------------------------------------------


def _run(*args: str) -> int:
    return run_cli(*args, log_level="ERROR")


def _one_error(err: str, command: str) -> str:
    """The one error line of `pdiff <command>` (progress bars aside), with no traceback."""
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"pdiff {command}: error: ") and err.endswith(lines[0] + "\n")
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory, world, backbone_spec):
    """A private copy of the `shapes` dataset (cases corrupt it), its draw, a CoOp prompt and
    store."""
    d = tmp_path_factory.mktemp("bad_input")
    shutil.copytree(Path(world) / "shapes", d / "data" / "shapes")
    return tiny_coop_run(d, str(d / "data"), backbone_spec, coop=COOP, overfit=OVERFIT,
                         diffusion=None)


def _store_with(run: Path, tmp: Path, **attrs) -> Path:
    """A copy of the run's store with some attributes replaced."""
    path = tmp / "other.h5"
    shutil.copy(run / "store.h5", path)
    with h5py.File(path, "r+") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def _train(run, backbone, out, data_root=None, dataset=None):
    return ["train", "--method", "coop", "--params", json.dumps(COOP), "--backbone",
            json.dumps(backbone), "--data-root", str(data_root or run / "data"), "--dataset",
            json.dumps(dataset or dataset_spec("shapes")), "--fewshot", f"{run}/fs.json",
            "--classes", "base", "--seed", "1", "--out", str(out)]


def _fit(run, backbone, out, store=None):
    return ["fit-diffusion", "--prompt", f"{run}/prompt.safetensors", "--store",
            str(store or run / "store.h5"), "--backbone", json.dumps(backbone), "--params",
            json.dumps(DIFFUSION), "--seed", "1", "--out", str(out)]


def _missing_split(run, tmp, bb, out):
    broken = tmp / "data"
    shutil.copytree(run / "data", broken)
    (broken / "shapes" / "split_zhou_shapes.json").unlink()
    return ["fewshot", "--data-root", str(broken), "--dataset",
            json.dumps(dataset_spec("shapes")), "--shots", "2", "--seed", "1", "--out", out]


def _corrupt_image(run, tmp, bb, out):
    broken = tmp / "data"
    shutil.copytree(run / "data", broken)
    draw = json.loads((run / "fs.json").read_text())
    first = draw["train"][0][0] if isinstance(draw["train"][0], list) else draw["train"][0][
        "impath"]
    image = next((broken / "shapes").rglob(Path(first).name))
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG header, then garbage
    return _train(run, bb, out, data_root=broken)


CASES = {
    # case: (build the argv, words the message must hold)
    "missing-split-file": (_missing_split, ["split_zhou_shapes.json", "not found"]),
    "unreadable-image": (_corrupt_image, ["unreadable", "pdiff check-data"]),
    "unknown-open-clip-model": (
        lambda run, tmp, bb, out: _train(run, {**bb, "model": "ViT-Nope-99"}, out),
        ["unknown open_clip model 'ViT-Nope-99'", "list_models"]),
    "missing-backbone-checkpoint": (
        lambda run, tmp, bb, out: _train(run, {**bb, "pretrained": str(tmp / "gone.pt")}, out),
        ["gone.pt not found", "backbone.pretrained"]),
    "missing-prompt-store": (
        lambda run, tmp, bb, out: _fit(run, bb, out, store=tmp / "nope.h5"),
        ["nope.h5 not found", "pdiff overfit"]),
    "missing-dit": (
        lambda run, tmp, bb, out: [
            "evaluate", "--mode", "diffusion", "--prompt", f"{run}/prompt.safetensors",
            "--dit", str(tmp / "nope.safetensors"), "--store", f"{run}/store.h5",
            "--backbone", json.dumps(bb),
            "--data-root", str(run / "data"), "--sets",
            json.dumps([{"dataset": dataset_spec("shapes"), "split": "base"}]), "--params",
            json.dumps(EVAL), "--out", out],
        ["nope.safetensors not found", "pdiff fit-diffusion"]),
    "store-of-another-method": (
        lambda run, tmp, bb, out: _fit(run, bb, out, store=_store_with(run, tmp,
                                                                       method="maple")),
        ["built for method maple, expected coop", "rerun `pdiff overfit`"]),
    "store-of-another-backbone": (
        lambda run, tmp, bb, out: _fit(run, bb, out, store=_store_with(
            run, tmp, backbone=json.dumps({"model": "pdiff-tiny", "pretrained": bb["pretrained"],
                                           "sha256": "0" * 64}))),
        ["different backbone", "sha256", "rerun `pdiff overfit`"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_clear_error(run, tmp_path, backbone_spec, capsys, case):
    build, words = CASES[case]
    out = tmp_path / "out.file"
    argv = build(run, tmp_path, backbone_spec, str(out))
    capsys.readouterr()
    rc = _run(*argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    message = _one_error(err, argv[0])
    for word in words:
        assert word in message, (word, message)
    assert not out.exists() and not list(tmp_path.glob("out.file*"))


def test_disk_full_while_writing_a_store(run, tmp_path, backbone_spec, capsys, monkeypatch):
    """ENOSPC in the middle of the store: one message, the partial store kept for a resume, no
    store that looks finished; with space again the same command completes it."""
    real, writes = h5py.Dataset.__setitem__, []

    def full_after_first_batch(self, key, value):
        if self.name == "/prompts":
            writes.append(1)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full_after_first_batch)
    out = tmp_path / "store.h5"
    argv = ["overfit", "--prompt", f"{run}/prompt.safetensors", "--backbone",
            json.dumps(backbone_spec), "--data-root", str(run / "data"), "--dataset",
            json.dumps(dataset_spec("shapes")), "--fewshot", f"{run}/fs.json", "--params",
            json.dumps(OVERFIT), "--seed", "1", "--out", str(out)]
    capsys.readouterr()
    assert _run(*argv) == 2
    message = _one_error(capsys.readouterr().err, "overfit")
    assert "disk full" in message and "free some space" in message, message
    assert not out.exists() and (tmp_path / "store.h5.partial").exists()
    monkeypatch.undo()
    assert _run(*argv) == 0 and out.exists()
