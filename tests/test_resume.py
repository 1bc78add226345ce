"""Long training loops resume after a kill: prompt training (per epoch) and DiT training (every
N steps) interrupted in the middle and started again end with the same checkpoint as an
uninterrupted run; a resume file of another configuration is never used.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import pdiff.diffusion.trainer
import pdiff.host_prompt
from pdiff.cli import main
from pdiff.resume import Resume, resume_path
from tests.helpers import dataset_spec

TRAIN = {
    "coop": {"n_ctx": 4, "init": "random", "optimizer": "adam", "lr": 0.01, "batch_size": 4,
             "epochs": 4, "warmup_epochs": 1},
    # PromptSRC keeps Gaussian-aggregation accumulators across epochs: the method-side state.
    "promptsrc": {"n_ctx": 2, "init": "a photo of a", "depth": 2, "n_ctx_vision": 2,
                  "optimizer": "sgd", "lr": 0.01, "batch_size": 4, "epochs": 4},
}
OVERFIT = {"steps": 2, "lr": 0.01, "batch_size": 8}
DIFFUSION = {"objective": "flow", "target": "residual", "normalise": "scalar", "depth": 1,
             "width": 32, "heads": 2, "steps": 10, "batch_size": 4, "lr": 0.001,
             "weight_decay": 0.0, "ema": 0.99, "cls_weight": 0.5, "log_every": 2}


def _run(*args: str) -> int:
    return main([*args, "--threads", "1", "--log-level", "WARNING"])


def _tensors(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _meta(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def _assert_same_tensors(a, b) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=1e-6, rtol=1e-5, msg=k)


def _dies_at_call(monkeypatch, owner, name: str, k: int | None = None) -> list:
    """Wrap owner.name to count its calls and raise KeyboardInterrupt (a kill) on call k."""
    real, calls = getattr(owner, name), []

    def wrapper(*a, **kw):
        calls.append(1)
        if len(calls) == k:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def run(tmp_path_factory, world, backbone_spec):
    """A few-shot draw, uninterrupted reference prompts of both methods, a CoOp store."""
    d = tmp_path_factory.mktemp("resume")
    data = ["--data-root", world, "--dataset", json.dumps(dataset_spec("shapes"))]
    assert _run("fewshot", *data, "--shots", "2", "--seed", "1", "--out", f"{d}/fs.json") == 0
    for method in TRAIN:
        assert _run(*_train_args(d, world, backbone_spec, method, d / f"{method}.safetensors")
                    ) == 0
    assert _run("overfit", "--prompt", f"{d}/coop.safetensors", "--backbone",
                json.dumps(backbone_spec), *data, "--fewshot", f"{d}/fs.json",
                "--params", json.dumps(OVERFIT), "--seed", "1", "--out", f"{d}/store.h5") == 0
    return d


def _train_args(d, world, backbone_spec, method, out, params=None) -> list[str]:
    return ["train", "--method", method, "--params", json.dumps(params or TRAIN[method]),
            "--backbone", json.dumps(backbone_spec), "--data-root", world, "--dataset",
            json.dumps(dataset_spec("shapes")), "--fewshot", f"{d}/fs.json", "--classes",
            "base", "--seed", "1", "--out", str(out)]


@pytest.mark.parametrize("method", sorted(TRAIN))
def test_interrupted_training_resumes_to_the_same_prompt(run, world, backbone_spec, method,
                                                         monkeypatch):
    out = run / f"{method}-resumed.safetensors"
    args = _train_args(run, world, backbone_spec, method, out)
    _dies_at_call(monkeypatch, pdiff.host_prompt, "epoch_lr", 3)  # killed in epoch 3 of 4
    assert _run(*args) == 130
    assert not out.exists() and resume_path(out).exists()
    monkeypatch.undo()
    epochs = _dies_at_call(monkeypatch, pdiff.host_prompt, "epoch_lr")
    assert _run(*args) == 0
    assert len(epochs) == 2  # resumed: only epochs 3 and 4 ran again
    assert not resume_path(out).exists()  # removed once the prompt is written
    ref = run / f"{method}.safetensors"
    _assert_same_tensors(ref, out)
    history = [json.loads(_meta(p)["pdiff"])["history"] for p in (ref, out)]
    assert history[0] == pytest.approx(history[1], rel=1e-6) and len(history[0]) == 4


def test_resume_file_of_other_params_is_ignored(run, world, backbone_spec, monkeypatch, caplog):
    out = run / "coop-other.safetensors"
    other = {**TRAIN["coop"], "lr": 0.05}
    _dies_at_call(monkeypatch, pdiff.host_prompt, "epoch_lr", 3)
    assert _run(*_train_args(run, world, backbone_spec, "coop", out, other)) == 130
    assert resume_path(out).exists()
    monkeypatch.undo()
    epochs = _dies_at_call(monkeypatch, pdiff.host_prompt, "epoch_lr")
    with caplog.at_level(logging.WARNING, logger="pdiff.resume"):
        assert _run(*_train_args(run, world, backbone_spec, "coop", out)) == 0
    assert "other parameters or inputs" in caplog.text
    assert len(epochs) == 4  # started over
    _assert_same_tensors(run / "coop.safetensors", out)  # as if the old file were not there


def _fit_args(run, backbone_spec, out) -> list[str]:
    return ["fit-diffusion", "--prompt", f"{run}/coop.safetensors", "--store",
            f"{run}/store.h5", "--backbone", json.dumps(backbone_spec), "--params",
            json.dumps(DIFFUSION), "--seed", "1", "--out", str(out)]


def test_interrupted_diffusion_training_resumes_to_the_same_model(run, backbone_spec,
                                                                  monkeypatch):
    monkeypatch.setattr(pdiff.diffusion.trainer, "CHECKPOINT_EVERY", 3)
    ref, out = run / "dit.safetensors", run / "dit-resumed.safetensors"
    assert _run(*_fit_args(run, backbone_spec, ref)) == 0
    assert not resume_path(ref).exists()
    # killed at step 8 of 10: checkpointed after step 6, the steps after it are redone
    _dies_at_call(monkeypatch, pdiff.diffusion.trainer._Batches, "next", 8)
    assert _run(*_fit_args(run, backbone_spec, out)) == 130
    assert not out.exists() and resume_path(out).exists()
    monkeypatch.undo()
    monkeypatch.setattr(pdiff.diffusion.trainer, "CHECKPOINT_EVERY", 3)
    steps = _dies_at_call(monkeypatch, pdiff.diffusion.trainer._Batches, "next")
    assert _run(*_fit_args(run, backbone_spec, out)) == 0
    assert len(steps) == 4  # resumed after step 6 of 10
    assert not resume_path(out).exists()
    _assert_same_tensors(ref, out)
    history = [json.loads(_meta(p)["history"]) for p in (ref, out)]
    assert [s for s, _ in history[0]] == [s for s, _ in history[1]] == [2, 4, 6, 8, 10]
    assert [v for _, v in history[0]] == pytest.approx([v for _, v in history[1]], rel=1e-6)


def test_resume_file_holds_a_fingerprint(tmp_path, caplog):
    out = tmp_path / "x.safetensors"
    a = Resume(out, {"lr": 0.1, "inputs": "abc"})
    assert a.load() is None  # nothing saved yet
    a.save({"step": 3, "w": torch.ones(2), "history": [1.5, 2.5]})
    state = Resume(out, {"inputs": "abc", "lr": 0.1}).load()  # key order does not matter
    assert state["step"] == 3 and state["history"] == [1.5, 2.5]
    assert torch.equal(state["w"], torch.ones(2))
    with caplog.at_level(logging.WARNING, logger="pdiff.resume"):
        assert Resume(out, {"lr": 0.2, "inputs": "abc"}).load() is None
        resume_path(out).write_bytes(b"garbage")
        assert a.load() is None
    assert "other parameters" in caplog.text and "unreadable" in caplog.text
    a.clear()
    assert not resume_path(out).exists()
