"""Calibration and the metrics bundle, against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bmrs.data import Split
from bmrs.train.metrics import classification_metrics, expected_calibration_error


def test_ece_matches_a_hand_computed_example():
    # Two bins of 15 are hit: confidence 0.9 (bin 14, 2 examples, 1 right) and 0.6 (bin 9, 2 examples, 2 right).
    probabilities = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 0, 1])
    expected = 2 / 4 * abs(0.5 - 0.9) + 2 / 4 * abs(1.0 - 0.6)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected)


def test_a_perfectly_calibrated_confident_model_has_zero_ece():
    probabilities = torch.eye(5)
    assert expected_calibration_error(probabilities, torch.arange(5)) == 0.0


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error(torch.rand(4), torch.zeros(4, dtype=torch.long))


def test_metrics_of_a_fixed_linear_model():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 2, 2)
    labels = torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    metrics = classification_metrics(model, Split(images, labels), batch_size=10)
    with torch.no_grad():
        logits = model(images)
    assert metrics.accuracy == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert metrics.nll == pytest.approx(float(nn.functional.cross_entropy(logits, labels)), rel=1e-6)
    assert 0.0 <= metrics.ece <= 1.0 and math.isfinite(metrics.ece)
