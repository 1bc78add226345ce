"""Calibration metric used in every evaluation JSON."""

from __future__ import annotations

import pytest
import torch

from pdiff.evaluate import expected_calibration_error


def test_ece_is_zero_for_calibrated_and_large_for_overconfident_predictions():
    labels = torch.tensor([0, 0, 0, 0])
    calibrated = torch.tensor([[0.75, 0.25]] * 4)  # 75% confident, 3 of 4 right
    calibrated_labels = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(calibrated, calibrated_labels) == pytest.approx(0.0,
                                                                                      abs=1e-5)
    wrong = torch.tensor([[0.01, 0.99]] * 4)  # 99% confident, always wrong
    assert expected_calibration_error(wrong, labels) == pytest.approx(99.0, abs=1e-3)
