"""Every stage through the `pdiff` CLI on the tiny world: outputs, resume, clear errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import pdiff.overfit
from pdiff.methods import get_method
from pdiff.store import read_store
from tests.helpers import (
    TINY_COOP,
    TINY_DIFFUSION,
    TINY_OVERFIT,
    dataset_spec,
    run_cli,
    tiny_coop_run,
)

COOP, OVERFIT = TINY_COOP, TINY_OVERFIT
DIFFUSION = {**TINY_DIFFUSION, "cls_weight": 0.5, "holdout": 0.25}
EVAL = {"evaluation": {"batch_size": 64},
        "sampling": {"solver": "euler", "steps": 3, "start": "zero", "draws": 2}}
_run = run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, world, backbone_spec):
    """fewshot -> train -> overfit -> fit-diffusion for CoOp on the base classes of `shapes`."""
    return tiny_coop_run(tmp_path_factory.mktemp("run"), world, backbone_spec,
                         diffusion=DIFFUSION, diagnostics=True)


def test_store_holds_one_overfitted_prompt_per_base_training_sample(run_dir):
    store = read_store(run_dir / "store.h5", expect_method="coop")
    assert store.num_samples == 4 * 2  # 4 base classes x 2 shots
    assert set(store.labels.tolist()) == {0, 1, 2, 3}
    assert store.token_shape == (4, 128)
    assert (store.loss_after < store.loss_before).all()
    assert not np.allclose(store.prompts, store.init_prompt[None])
    with h5py.File(run_dir / "store.h5") as f:
        assert f["prompts"].compression == "gzip" and f["prompts"].chunks is not None


def _sets(name: str, *splits: str) -> str:
    return json.dumps([{"dataset": dataset_spec(name), "split": s} for s in splits])


@pytest.mark.parametrize("mode", ["zeroshot", "baseline", "diffusion"])
def test_evaluate_writes_full_metrics_per_set(run_dir, world, backbone_spec, mode):
    out = run_dir / f"eval_{mode}.json"
    extra = [] if mode == "zeroshot" else ["--prompt", f"{run_dir}/prompt.safetensors"]
    if mode == "diffusion":
        extra += ["--dit", f"{run_dir}/dit.safetensors", "--store", f"{run_dir}/store.h5"]
    assert _run("evaluate", "--mode", mode, *extra, "--backbone", json.dumps(backbone_spec),
                "--data-root", world, "--sets", _sets("shapes", "base", "new", "all"),
                "--params", json.dumps(EVAL), "--out", str(out)) == 0
    records = json.loads(out.read_text())["evaluations"]
    assert [(m["target"], m["split"]) for m in records] == [
        ("shapes", "base"), ("shapes", "new"), ("shapes", "all")]
    for m in records:
        assert m["total"] == (8 if m["split"] == "all" else 4) * 3 and m["mode"] == mode
        assert m["accuracy"] == pytest.approx(100 * m["correct"] / m["total"])
        assert m["nfe"] == (2 * 3 if mode == "diffusion" else 0)  # 2 draws x 3 Euler steps


def test_diffusion_evaluation_checks_memorisation_against_the_store(run_dir, world,
                                                                   backbone_spec):
    out = run_dir / "eval_memo.json"
    assert _run("evaluate", "--mode", "diffusion", "--prompt", f"{run_dir}/prompt.safetensors",
                "--dit", f"{run_dir}/dit.safetensors", "--store", f"{run_dir}/store.h5",
                "--backbone", json.dumps(backbone_spec), "--data-root", world,
                "--sets", _sets("shapes", "base"), "--params", json.dumps(EVAL),
                "--out", str(out)) == 0
    memo = json.loads(out.read_text())["evaluations"][0]["memorisation"]
    assert memo["n"] == 4 * 3 and memo["store_nearest_neighbour"] > 0 and memo["ratio"] >= 0


def test_dit_diagnostics_on_held_out_store_rows(run_dir):
    diag = json.loads((run_dir / "dit.json").read_text())
    assert diag["method"] == "coop" and diag["stored"] == 8 and diag["held_out_rows"] == 2
    for part in ("held_out", "train"):
        assert diag[part]["n"] == 2 and -1 <= diag[part]["cosine_mean"] <= 1
        assert diag[part]["norm_ratio"] > 0


def test_evaluation_of_a_set_does_not_depend_on_the_sets_before_it(run_dir, world,
                                                                   backbone_spec):
    args = ["evaluate", "--mode", "diffusion", "--prompt", f"{run_dir}/prompt.safetensors",
            "--dit", f"{run_dir}/dit.safetensors", "--store", f"{run_dir}/store.h5",
            "--backbone", json.dumps(backbone_spec), "--data-root", world, "--params",
            json.dumps({**EVAL, "sampling": {**EVAL["sampling"], "start": "noise"}})]
    assert _run(*args, "--sets", _sets("shapes", "base", "new"), "--out",
                str(run_dir / "two.json")) == 0
    assert _run(*args, "--sets", _sets("shapes", "new"), "--out", str(run_dir / "one.json")) == 0
    two = json.loads((run_dir / "two.json").read_text())["evaluations"][1]
    one = json.loads((run_dir / "one.json").read_text())["evaluations"][0]
    assert (two["correct"], two["ece"]) == (one["correct"], one["ece"])


def test_killed_overfit_resumes_to_the_same_store(run_dir, world, backbone_spec, monkeypatch):
    args = ["overfit", "--prompt", f"{run_dir}/prompt.safetensors", "--backbone",
            json.dumps(backbone_spec), "--data-root", world, "--dataset",
            json.dumps(dataset_spec("shapes")), "--fewshot", f"{run_dir}/fs.json",
            "--params", json.dumps(OVERFIT), "--seed", "1", "--out", f"{run_dir}/resumed.h5"]
    real, calls = pdiff.overfit.overfit_batch, []

    def dies_on_second_batch(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for a kill in the middle of the job
        return real(*a, **kw)

    monkeypatch.setattr(pdiff.overfit, "overfit_batch", dies_on_second_batch)
    assert _run(*args) == 130
    assert not (run_dir / "resumed.h5").exists()  # nothing that looks finished
    monkeypatch.setattr(pdiff.overfit, "overfit_batch", real)
    assert _run(*args) == 0
    a, b = read_store(run_dir / "store.h5"), read_store(run_dir / "resumed.h5")
    np.testing.assert_allclose(a.prompts, b.prompts, atol=1e-6)


def test_store_of_another_backbone_is_refused(run_dir, tmp_path, capsys):
    other = tmp_path / "other.h5"
    with h5py.File(run_dir / "store.h5") as src, h5py.File(other, "w") as dst:
        for k in src:
            src.copy(k, dst)
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        dst.attrs["backbone"] = json.dumps({"model": "pdiff-tiny", "pretrained": "x",
                                            "sha256": "0" * 64})
    rc = _run("fit-diffusion", "--prompt", f"{run_dir}/prompt.safetensors", "--store",
              str(other), "--backbone", json.dumps({"model": "pdiff-tiny",
                                                    "pretrained": _pretrained(run_dir)}),
              "--params", json.dumps(DIFFUSION), "--seed", "1", "--out", str(tmp_path / "d"))
    assert rc == 2
    assert "backbone" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def _pretrained(run_dir) -> str:
    from pdiff.checkpoint import read_prompt_meta

    return read_prompt_meta(run_dir / "prompt.safetensors")["backbone"]["pretrained"]


def test_missing_inputs_fail_with_one_message(tmp_path, world, backbone_spec, capsys):
    rc = _run("evaluate", "--mode", "baseline", "--prompt", str(tmp_path / "nope.safetensors"),
              "--backbone", json.dumps(backbone_spec), "--data-root", world, "--sets",
              _sets("shapes", "base"), "--params", json.dumps(EVAL), "--out",
              str(tmp_path / "m.json"))
    err = capsys.readouterr().err
    assert rc == 2 and "pdiff train" in err and err.count("\n") == 1
    rc = _run("fewshot", "--data-root", str(tmp_path / "nowhere"), "--dataset",
              json.dumps(dataset_spec("shapes")), "--shots", "2", "--seed", "1", "--out",
              str(tmp_path / "f.json"))
    assert rc == 2 and not (tmp_path / "f.json").exists()


# Every host method through every stage with the same commands: the stages hold no
# method-specific code (deep prompts, meta-nets, couplings and regularisers stay in the methods).
ALL_METHODS = {
    "coop": COOP,
    "cocoop": {**COOP, "init": "a photo of a", "n_ctx": 2},
    "kgcoop": {**COOP, "kg_weight": 8.0},
    # VPT has no text context to initialise: no `init`
    "vpt": {**{k: v for k, v in COOP.items() if k != "init"}, "n_ctx": 2, "depth": 2},
    "maple": {**COOP, "n_ctx": 2, "init": "a photo of a", "depth": 2},
    "promptsrc": {**COOP, "n_ctx": 2, "init": "a photo of a", "depth": 2, "n_ctx_vision": 2,
                  "text_weight": 25.0, "image_weight": 10.0, "kl_weight": 1.0, "gpa_mean": 1.5,
                  "gpa_std": 1.0},
}


@pytest.mark.parametrize("method", sorted(ALL_METHODS))
def test_every_method_runs_every_stage(tmp_path, run_dir, world, backbone_spec, method):
    bb, ds = json.dumps(backbone_spec), json.dumps(dataset_spec("shapes"))
    data = ["--data-root", world, "--dataset", ds]
    d = tmp_path
    assert _run("train", "--method", method, "--params", json.dumps(ALL_METHODS[method]),
                "--backbone", bb, *data, "--fewshot", f"{run_dir}/fs.json", "--classes",
                "base", "--seed", "1", "--out", f"{d}/prompt.safetensors") == 0
    assert _run("overfit", "--prompt", f"{d}/prompt.safetensors", "--backbone", bb, *data,
                "--fewshot", f"{run_dir}/fs.json", "--params", json.dumps(OVERFIT), "--seed",
                "1", "--out", f"{d}/store.h5") == 0
    fit = ["fit-diffusion", "--prompt", f"{d}/prompt.safetensors", "--store", f"{d}/store.h5",
           "--backbone", bb, "--seed", "1", "--out", f"{d}/dit.safetensors"]
    if get_method(method).needs_images:  # the store has no images for a classification term
        assert _run(*fit, "--params", json.dumps({**DIFFUSION, "steps": 3})) == 2
        assert not (d / "dit.safetensors").exists()
    assert _run(*fit, "--params", json.dumps({**DIFFUSION, "steps": 3, "cls_weight": 0.0}),
                "--diagnostics", f"{d}/dit.json") == 0
    assert _run("evaluate", "--mode", "diffusion", "--prompt", f"{d}/prompt.safetensors",
                "--dit", f"{d}/dit.safetensors", "--store", f"{d}/store.h5", "--backbone", bb,
                "--data-root", world, "--sets", _sets("shapes", "base", "new"), "--params",
                json.dumps(EVAL), "--out", f"{d}/eval.json") == 0
    store = read_store(d / "store.h5", expect_method=method)
    assert store.num_samples == 8 and (store.loss_after <= store.loss_before + 1e-6).all()
    records = json.loads((d / "eval.json").read_text())["evaluations"]
    assert [r["method"] for r in records] == [method, method]
    assert all(r["total"] == 12 and "memorisation" in r for r in records)


def test_sigkilled_overfit_resumes_to_the_same_store(run_dir, world, backbone_spec, tmp_path):
    """A real SIGKILL in the middle of `pdiff overfit` (no handler runs), then the same
    command: it continues from the rows already flushed and ends with the uninterrupted store."""
    import os
    import signal
    import subprocess
    import sys
    import time

    params = {**OVERFIT, "batch_size": 1, "steps": 150}  # 8 batches, each long enough to kill
    args = [sys.executable, "-m", "pdiff.cli", "overfit", "--prompt",
            f"{run_dir}/prompt.safetensors", "--backbone", json.dumps(backbone_spec),
            "--data-root", world, "--dataset", json.dumps(dataset_spec("shapes")),
            "--fewshot", f"{run_dir}/fs.json", "--params", json.dumps(params), "--seed", "1",
            "--threads", "1"]
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}
    assert subprocess.run([*args, "--out", str(tmp_path / "ref.h5")], env=env).returncode == 0
    out = tmp_path / "killed.h5"
    partial = out.with_name(out.name + ".partial")
    for _ in range(3):  # kill after at least one flushed row and before the last
        proc = subprocess.Popen([*args, "--out", str(out)], env=env)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            done = _done_rows(partial)
            if done and done < 6:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            break
        out.unlink(missing_ok=True)
    else:
        pytest.skip("could not catch the job between two flushed rows on this machine")
    assert not out.exists() and 0 < _done_rows(partial) < 8
    assert subprocess.run([*args, "--out", str(out)], env=env).returncode == 0
    a, b = read_store(tmp_path / "ref.h5"), read_store(out)
    np.testing.assert_allclose(a.prompts, b.prompts, atol=1e-6)


def _done_rows(partial) -> int:
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return int(f["done"][...].sum())
    except (OSError, KeyError):
        return 0


def test_a_compute_budget_changes_no_result_and_is_recorded_nowhere(run_dir, world,
                                                                    backbone_spec, tmp_path):
    """`compute.max_pairs` in each stage's --params (here 3 pairs: fewer than one sample's 4
    classes, so every text encoding is chunked): the same prompt, store and accuracy, and no
    artifact records it; the DiT's sampled classification term runs and is recorded."""
    from safetensors.torch import load_file

    from pdiff.checkpoint import read_prompt_meta
    from pdiff.diffusion import load_diffusion

    compute = {"compute": {"max_pairs": 3}}
    bb, ds = json.dumps(backbone_spec), json.dumps(dataset_spec("shapes"))
    data = ["--data-root", world, "--dataset", ds]
    d = tmp_path
    assert _run("train", "--method", "coop", "--params", json.dumps({**COOP, **compute}),
                "--backbone", bb, *data, "--fewshot", f"{run_dir}/fs.json", "--classes",
                "base", "--seed", "1", "--out", f"{d}/prompt.safetensors") == 0
    assert read_prompt_meta(d / "prompt.safetensors")["params"] == {**COOP, "init_seed": 1}
    ref, got = (load_file(p / "prompt.safetensors") for p in (run_dir, d))
    for k in ref:
        np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), atol=1e-5)

    assert _run("overfit", "--prompt", f"{run_dir}/prompt.safetensors", "--backbone", bb, *data,
                "--fewshot", f"{run_dir}/fs.json", "--params", json.dumps({**OVERFIT, **compute}),
                "--seed", "1", "--out", f"{d}/store.h5") == 0
    a, b = read_store(run_dir / "store.h5"), read_store(d / "store.h5")
    np.testing.assert_allclose(b.prompts, a.prompts, atol=1e-5)
    assert b.attrs["overfit"] == OVERFIT

    sampled = {**DIFFUSION, "steps": 3, "cls_negatives": 2, **compute}  # 1 + 2 of 4 classes
    assert _run("fit-diffusion", "--prompt", f"{run_dir}/prompt.safetensors", "--store",
                f"{run_dir}/store.h5", "--backbone", bb, "--params", json.dumps(sampled),
                "--seed", "1", "--out", f"{d}/dit.safetensors") == 0
    params = load_diffusion(d / "dit.safetensors").params
    assert params["cls_negatives"] == 2 and "compute" not in params

    def correct(extra: dict, out: str) -> list[int]:
        assert _run("evaluate", "--mode", "baseline", "--prompt",
                    f"{run_dir}/prompt.safetensors", "--backbone", bb, "--data-root", world,
                    "--sets", _sets("shapes", "base", "new"), "--params",
                    json.dumps({**EVAL, **extra}), "--out", f"{d}/{out}") == 0
        return [r["correct"] for r in json.loads((d / out).read_text())["evaluations"]]

    assert correct(compute, "budget.json") == correct({}, "default.json")
