"""Classification metrics for reports: accuracy, NLL and expected calibration error; ``mean_std``,
the mean and sample standard deviation over seeds that every multi-seed report gives."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmrs.data import Split
from bmrs.devices import module_device

ECE_BINS = 15


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    nll: float  # mean negative log-likelihood (nats per example)
    ece: float  # expected calibration error, ECE_BINS equal-width confidence bins

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def expected_calibration_error(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """``sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|`` over equal-width bins of the top-class
    probability (Guo et al., 2017). Bins are right-closed, so a confidence of exactly 1 lands in the
    last bin and one of exactly 0 (impossible for a top class) would be dropped."""
    if probabilities.dim() != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(
            f"expected probabilities (N, classes) and labels (N,), got {tuple(probabilities.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    index = torch.clamp(torch.ceil(confidence.double() * bins).long() - 1, 0, bins - 1)
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(correct))
    hits = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    mass = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence.double())
    gap = torch.where(count > 0, (hits - mass).abs(), 0.0)
    return float(gap.sum() / labels.numel())


@torch.no_grad()
def classification_metrics(model: nn.Module, split: Split, batch_size: int = 2048) -> ClassificationMetrics:
    """Metrics of ``model`` in evaluation mode (noise layers use ``E[theta]``), wherever it lives:
    each batch goes to the model's device, the scores come back to the CPU's split."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    log_probs = torch.cat([F.log_softmax(model(images.to(device)), dim=1).cpu() for images, _ in split.batches(batch_size)])
    model.train(was_training)
    labels = split.labels
    return ClassificationMetrics(
        accuracy=float((log_probs.argmax(1) == labels).double().mean()),
        nll=float(F.nll_loss(log_probs, labels)),
        ece=expected_calibration_error(log_probs.exp(), labels),
    )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value), as the paper's tables report."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
