"""Calibration metric used in every evaluation JSON."""

from __future__ import annotations

import pytest
import torch

from pdiff.evaluate import expected_calibration_error


def test_ece_is_zero_for_calibrated_and_large_for_overconfident_predictions():
    calibrated = torch.tensor([0.75] * 4)  # 75% confident, 3 of 4 right
    assert expected_calibration_error(calibrated, torch.tensor([1, 1, 1, 0])) == pytest.approx(
        0.0, abs=1e-5)
    wrong = torch.tensor([0.99] * 4)  # 99% confident, always wrong
    assert expected_calibration_error(wrong, torch.zeros(4)) == pytest.approx(99.0, abs=1e-3)
