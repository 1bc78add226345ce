"""Diagnostics of generated prompts on known cases: perfect recovery, noise, copies."""

from __future__ import annotations

import pytest
import torch

from pdiff.diagnose import delta_agreement, memorisation


@pytest.fixture
def prompts():
    g = torch.Generator().manual_seed(0)
    init = torch.randn(4, 8, generator=g)
    true = init + 0.1 * torch.randn(50, 4, 8, generator=g)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[:, 6:] = False  # padding never counts
    true[:, :, 6:] = 123.0
    return g, init, true, mask


def test_recovering_each_delta_scores_one(prompts):
    _, init, true, mask = prompts
    d = delta_agreement(true, true, init, mask)
    assert d["cosine_mean"] == pytest.approx(1.0) and d["correlation_mean"] == pytest.approx(1.0)
    assert d["norm_ratio"] == pytest.approx(1.0) and d["n"] == 50


def test_unrelated_deltas_score_near_zero(prompts):
    g, init, true, mask = prompts
    noise = init + 0.1 * torch.randn(50, 4, 8, generator=g)
    d = delta_agreement(noise, true, init, mask)
    assert abs(d["cosine_mean"]) < 0.1 and abs(d["correlation_mean"]) < 0.1


def test_copies_of_the_store_are_flagged(prompts):
    g, init, true, mask = prompts
    assert memorisation(true[:10], true, mask)["ratio"] < 1e-6
    fresh = init + 0.1 * torch.randn(30, 4, 8, generator=g)
    assert memorisation(fresh, true, mask)["ratio"] > 0.5
    assert memorisation(fresh + 10.0, true, mask)["ratio"] > 10
