"""Tests of the diffusion side: DiT init, objectives, ODE sampling, normaliser, training."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pdiff.diffusion import (
    PromptDiT,
    TargetNormaliser,
    fit_diffusion,
    get_objective,
    integrate,
    load_diffusion,
    sample,
    save_diffusion,
)
from pdiff.diffusion.objective import VPDiffusion
from pdiff.errors import PdiffError
from pdiff.store import PromptStore

T, D, F = 4, 8, 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: on a shared 2-core machine intra-op threads only contend
    # (a training step was >100x slower with 2 threads under load), so run on one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mask() -> np.ndarray:
    mask = np.ones((T, D), dtype=bool)
    mask[-1, D // 2 :] = False  # the last token is half padding
    return mask


def _truth() -> tuple[np.ndarray, np.ndarray]:
    """The fixed map of the toy task: ``W [F, T*D]`` and the host prompt ``init [T, D]``."""
    g = np.random.default_rng(1234)
    w = (g.normal(size=(F, T * D)) / math.sqrt(F)).astype(np.float32)
    return w, g.normal(size=(T, D)).astype(np.float32)


def _toy(n: int, seed: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features and prompts with prompt = init + 0.1 * reshape(cond @ W)."""
    w, init = _truth()
    r = np.random.default_rng(seed)
    cond = r.normal(size=(n, F)).astype(np.float32)
    prompts = init + 0.1 * (cond @ w).reshape(n, T, D)
    if mask is not None:
        prompts = prompts * mask
    return cond, prompts.astype(np.float32)


def _store(n: int = 256, seed: int = 0, mask: np.ndarray | None = None) -> PromptStore:
    cond, prompts = _toy(n, seed, mask)
    init = _truth()[1]
    if mask is not None:
        init = init * mask
    return PromptStore(
        prompts=prompts,
        init_prompt=init,
        features=cond,
        labels=np.arange(n, dtype=np.int64) % 3,
        sample_ids=[f"img_{i}.png" for i in range(n)],
        loss_before=np.ones(n, dtype=np.float32),
        loss_after=np.zeros(n, dtype=np.float32),
        done=np.ones(n, dtype=bool),
        token_mask=mask,
        attrs={"method": "coop"},
    )


def _params(**over: object) -> dict:
    params = {
        "objective": "flow", "target": "residual", "normalise": "scalar",
        "depth": 2, "width": 32, "heads": 4, "steps": 10, "batch_size": 16,
        "lr": 1e-3, "weight_decay": 0.0, "ema": 0.99, "cls_weight": 0.0,
    }
    params.update(over)
    return params


# --------------------------------------------------------------------------- DiT


def test_dit_zero_output_and_identity_blocks() -> None:
    torch.manual_seed(0)
    model = PromptDiT(T, D, F, width=32, depth=3, heads=4)
    x, t, cond = torch.randn(5, T, D), torch.rand(5), torch.randn(5, F)
    out = model(x, t, cond)
    assert out.shape == (5, T, D)
    assert torch.equal(out, torch.zeros_like(out))
    c = model.conditioning(t, cond)
    h = torch.randn(5, T, 32)
    for block in model.blocks:
        assert torch.equal(block(h, c), h)
    # Unconditional variant and a scalar t work too.
    plain = PromptDiT(T, D, 0, width=16, depth=1, heads=2)
    assert plain(x, torch.tensor(0.5), None).shape == (5, T, D)


# --------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_euler_integrates_constant_field_exactly(steps: int) -> None:
    x0 = torch.randn(3, 2, dtype=torch.float64)
    c = torch.randn(3, 2, dtype=torch.float64)
    x1, nfe = integrate(lambda t, x: c.expand_as(x), x0, steps, "euler")
    torch.testing.assert_close(x1, x0 + c, rtol=0, atol=1e-12)
    assert nfe == steps


@pytest.mark.parametrize(("solver", "stages"), [("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_linear_in_time_field_exact(solver: str, stages: int, steps: int) -> None:
    x0 = torch.randn(4, dtype=torch.float64)
    a, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    x1, nfe = integrate(lambda t, x: a + b * t, x0, steps, solver)
    torch.testing.assert_close(x1, x0 + a + b / 2, rtol=0, atol=1e-12)
    assert nfe == stages * steps


def test_exponential_rk4_and_adaptive() -> None:
    x0 = torch.ones(2, dtype=torch.float64)
    x1, nfe = integrate(lambda t, x: x, x0, 5, "rk4")
    assert abs(float(x1[0]) - math.e) < 1e-4 and nfe == 20
    x1, nfe = integrate(lambda t, x: x, x0, 999, "dopri5")  # steps ignored when adaptive
    assert abs(float(x1[0]) - math.e) < 1e-4 and 0 < nfe < 100


def test_sampler_rejects_bad_options() -> None:
    model = PromptDiT(T, D, F, width=16, depth=1, heads=2)
    flow = get_objective("flow")
    with pytest.raises(PdiffError, match="unknown ODE solver 'leapfrog'.*euler"):
        sample(flow, model, torch.zeros(1, F), (T, D), solver="leapfrog")
    with pytest.raises(PdiffError, match="start"):
        sample(flow, model, torch.zeros(1, F), (T, D), start="middle")
    with pytest.raises(PdiffError, match="positive integer"):
        integrate(lambda t, x: x, torch.zeros(1), 0, "euler")


# --------------------------------------------------------------------------- objectives


class _Oracle(nn.Module):
    """The exact field for a single data point ``x1`` (a point mass), for each
    parametrisation: recovers the noise from ``x_t`` and ``t``."""

    def __init__(self, x1: Tensor, kind: str) -> None:
        super().__init__()
        self.x1, self.kind = x1, kind

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        tb = t.to(x.dtype).reshape(-1, 1, 1)
        if self.kind == "flow":
            x0 = (x - tb * self.x1) / (1 - tb)
            return self.x1 - x0
        a, s = torch.sin(0.5 * math.pi * tb), torch.cos(0.5 * math.pi * tb)
        eps = (x - a * self.x1) / s
        return eps if self.kind == "eps" else s * self.x1 - a * eps


@pytest.mark.parametrize(
    ("name", "kw", "kind"),
    [("flow", {}, "flow"), ("vp", {"prediction": "v"}, "v"), ("vp", {"prediction": "eps"}, "eps")],
)
def test_objective_oracle_is_consistent(name: str, kw: dict, kind: str) -> None:
    mask = torch.as_tensor(_mask())
    x1 = torch.randn(16, T, D, dtype=torch.float64) * mask
    obj = get_objective(name, token_mask=mask, **kw)
    oracle = _Oracle(x1, kind)
    gen = torch.Generator().manual_seed(0)
    loss, x1_hat = obj.loss(oracle, x1, torch.zeros(16, F), generator=gen)
    assert loss.shape == (16,)
    assert float(loss.max()) < 1e-12
    torch.testing.assert_close(x1_hat, x1)
    assert torch.all(x1_hat[:, ~mask] == 0)


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_vp_velocity_is_path_derivative(prediction: str) -> None:
    obj = VPDiffusion(prediction=prediction)
    x1, eps = torch.randn(3, T, D, dtype=torch.float64), torch.randn(3, T, D, dtype=torch.float64)
    t, h = torch.full((3,), 0.37, dtype=torch.float64), 1e-6

    def path(tt: Tensor) -> Tensor:
        a, s = obj.schedule(tt.reshape(-1, 1, 1))
        return a * x1 + s * eps

    numeric = (path(t + h) - path(t - h)) / (2 * h)
    v = obj.velocity(_Oracle(x1, prediction), path(t), t, torch.zeros(3, F))
    torch.testing.assert_close(v, numeric, rtol=1e-6, atol=1e-6)


def test_flow_sampling_with_oracle_reaches_target() -> None:
    x1 = torch.randn(2, T, D)
    gen = torch.Generator().manual_seed(3)
    out, nfe = sample(
        get_objective("flow"), _Oracle(x1, "flow"), torch.zeros(2, F), (T, D),
        solver="euler", steps=4, start="noise", generator=gen,
    )
    torch.testing.assert_close(out, x1, rtol=1e-4, atol=1e-4)  # straight paths: Euler exact
    assert nfe == 4


def test_masked_loss_ignores_padding() -> None:
    mask = torch.as_tensor(_mask())
    obj = get_objective("flow", token_mask=mask)
    err = torch.where(mask, torch.ones(2, T, D), torch.full((2, T, D), 100.0))
    torch.testing.assert_close(obj.reduce(err), torch.ones(2))


def test_unknown_objective() -> None:
    with pytest.raises(PdiffError, match=r"unknown diffusion objective 'ddim'.*flow, vp"):
        get_objective("ddim")


# --------------------------------------------------------------------------- normaliser


@pytest.mark.parametrize("target", ["residual", "absolute"])
@pytest.mark.parametrize("normalise", ["scalar", "per_dim"])
def test_normaliser_round_trip(target: str, normalise: str) -> None:
    mask = _mask()
    store = _store(n=32, mask=mask)
    norm = TargetNormaliser.fit(
        store.prompts, store.init_prompt, target=target, normalise=normalise, token_mask=mask
    )
    x = norm.encode(store.prompts)
    m = torch.as_tensor(mask)
    real = x[:, m]
    if normalise == "scalar":
        assert abs(float(real.mean())) < 1e-5 and abs(float(real.std(unbiased=False)) - 1) < 1e-4
    else:
        assert float(real.mean(0).abs().max()) < 1e-5
        torch.testing.assert_close(real.std(0, unbiased=False), torch.ones(real.shape[1]))
    assert torch.all(x[:, ~m] == 0)
    back = norm.decode(x + 5.0 * (~m))  # junk in padded entries must not leak
    torch.testing.assert_close(back, torch.as_tensor(store.prompts), rtol=1e-5, atol=1e-6)
    assert torch.all(back[:, ~m] == 0)

    again = TargetNormaliser.from_state(norm.state_dict())
    assert torch.equal(again.encode(store.prompts), x)
    assert (again.target, again.normalise) == (target, normalise)


@pytest.mark.parametrize("normalise", ["scalar", "per_dim"])
def test_normaliser_statistics_stream_over_row_blocks(normalise: str, monkeypatch) -> None:
    """Fitted in blocks of 5 rows from an h5py dataset, the statistics equal those of the
    whole store in memory."""
    import h5py

    import pdiff.diffusion.normalise as nm

    mask = _mask()
    store = _store(n=23, mask=mask)
    whole = TargetNormaliser.fit(store.prompts, store.init_prompt, normalise=normalise,
                                 token_mask=mask)
    monkeypatch.setattr(nm, "STATS_ROWS", 5)
    with h5py.File("mem.h5", "w", driver="core", backing_store=False) as f:
        rows = f.create_dataset("prompts", data=store.prompts)
        blocked = TargetNormaliser.fit(rows, store.init_prompt, normalise=normalise,
                                       token_mask=mask)
    for name in ("mean", "std"):
        torch.testing.assert_close(getattr(blocked, name), getattr(whole, name))
    real = torch.as_tensor(store.prompts, dtype=torch.float64)[:, torch.as_tensor(mask)]
    real = real - torch.as_tensor(store.init_prompt, dtype=torch.float64)[torch.as_tensor(mask)]
    if normalise == "scalar":  # the direct definition: all real entries of all rows at once
        assert float(whole.mean[0, 0]) == pytest.approx(float(real.mean()), rel=1e-6)
        assert float(whole.std[0, 0]) == pytest.approx(float(real.std(unbiased=False)),
                                                       rel=1e-6)


def test_normaliser_single_sample_is_finite() -> None:
    store = _store(n=1)
    for normalise in ("scalar", "per_dim"):
        norm = TargetNormaliser.fit(store.prompts, store.prompts[0], normalise=normalise)
        assert torch.isfinite(norm.encode(store.prompts)).all()


# --------------------------------------------------------------------------- training


def test_flow_matching_learns_toy_conditional_target() -> None:
    store = _store(n=256)
    params = _params(width=64, steps=300, batch_size=64, lr=3e-3)
    dm = fit_diffusion(store, params, seed=0)
    losses = [v for _, v in dm.history]
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])
    cond, truth = _toy(64, seed=99)
    out, nfe = dm.generate(cond, solver="euler", steps=10)
    assert out.shape == (64, T, D) and nfe == 10
    gen_res = (out.numpy() - store.init_prompt).ravel()
    true_res = (truth - store.init_prompt).ravel()
    assert np.corrcoef(gen_res, true_res)[0, 1] > 0.9


def test_vp_trains_and_samples_masked_shape() -> None:
    mask = _mask()
    store = _store(n=32, mask=mask)
    dm = fit_diffusion(store, _params(objective="vp", steps=5), seed=0)
    out, nfe = dm.generate(store.features[:3], solver="midpoint", steps=3, start="noise",
                           generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, T, D) and nfe == 6
    assert torch.isfinite(out).all() and torch.all(out[:, ~torch.as_tensor(mask)] == 0)


def test_cls_loss_receives_decoded_prompts() -> None:
    store = _store(n=16, mask=_mask())
    calls: list[tuple] = []

    def cls_loss(prompts: Tensor, labels: Tensor, feats: Tensor, generator) -> Tensor:
        calls.append((prompts.shape, labels.shape, feats.shape, prompts.requires_grad))
        return prompts.pow(2).mean()

    fit_diffusion(store, _params(steps=3, batch_size=8, cls_weight=0.5), seed=0, cls_loss=cls_loss)
    assert calls == [((8, T, D), (8,), (8, F), True)] * 3


def test_cls_batch_puts_that_many_rows_of_each_batch_in_the_cls_term() -> None:
    # Rows keep their labels and features: label i is row i's, so the features name the rows.
    store = replace(_store(n=16), labels=np.arange(16, dtype=np.int64))
    rows: list[Tensor] = []

    def cls_loss(prompts: Tensor, labels: Tensor, feats: Tensor, generator) -> Tensor:
        assert prompts.shape == (3, T, D)
        assert torch.equal(feats, torch.as_tensor(store.features)[labels])
        rows.append(labels)
        return prompts.pow(2).mean()

    fit_diffusion(store, _params(steps=4, batch_size=8, cls_weight=0.5, cls_batch=3), seed=0,
                  cls_loss=cls_loss)
    assert len(rows) == 4 and len({tuple(r.tolist()) for r in rows}) == 4  # a new draw per step
    with pytest.raises(PdiffError, match="cls_batch"):
        fit_diffusion(store, _params(cls_weight=0.5, cls_batch=0), seed=0, cls_loss=cls_loss)


def test_same_seed_same_weights() -> None:
    store = _store(n=32)
    a = fit_diffusion(store, _params(steps=5), seed=7)
    b = fit_diffusion(store, _params(steps=5), seed=7)
    c = fit_diffusion(store, _params(steps=5), seed=8)
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.history == b.history


def test_save_load_round_trip(tmp_path: Path) -> None:
    mask = _mask()
    store = _store(n=32, mask=mask)
    dm = fit_diffusion(store, _params(objective="vp", normalise="per_dim", steps=5), seed=0)
    path = tmp_path / "diffusion.safetensors"
    save_diffusion(path, dm)
    assert path.exists() and not (tmp_path / "diffusion.safetensors.partial").exists()
    back = load_diffusion(path)
    assert back.params == dm.params and back.history == dm.history
    assert back.objective.config() == dm.objective.config()
    for start in ("zero", "noise"):
        kw = {"solver": "rk4", "steps": 2, "start": start}
        x, _ = dm.generate(store.features[:4], generator=torch.Generator().manual_seed(1), **kw)
        y, _ = back.generate(store.features[:4], generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(x, y)


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(PdiffError, match=r"nothing\.safetensors.*pdiff fit-diffusion"):
        load_diffusion(tmp_path / "nothing.safetensors")
    params = _params()
    del params["steps"]  # the one key without a default
    with pytest.raises(PdiffError, match="steps"):
        fit_diffusion(_store(n=4), params, seed=0)
    with pytest.raises(PdiffError, match="ema"):
        fit_diffusion(_store(n=4), _params(ema=1.0), seed=0)
    with pytest.raises(PdiffError, match="normalise"):
        fit_diffusion(_store(n=4), _params(normalise="minmax"), seed=0)
