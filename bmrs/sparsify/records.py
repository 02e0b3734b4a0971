"""What a ``sparsify_`` run records: one ``SparsifyEpoch`` per SVI epoch, one ``SparsifyRound`` per
round (round 0 is the initial fit), the ``SparsifyResult`` they make up, and the ``Position`` a
checkpoint resumes from."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class SparsifyEpoch:
    round: int  # 0: the initial SVI fit; k >= 1: the fine-tuning after the k-th dF step
    epoch: int  # 1-based, within the round
    loss: float  # mean NLL + kl_scale * KL / N_train, averaged over the epoch's examples
    nll: float
    kl: float  # the KL term as it entered the loss
    train_accuracy: float  # of the sampled network, as trained
    seconds: float


@dataclass(frozen=True)
class SparsifyRound:
    round: int
    pruned: int  # weights this round's dF step removed (0 for round 0)
    alive: int  # Linear/Conv2d weights kept, over every mean-field layer (biases never counted)
    total: int
    sparsity: float  # 1 - alive / total: the fraction of weights removed so far
    accuracy: float  # validation metrics of the posterior mean after the round's training
    nll: float
    ece: float
    prune_seconds: float | None  # wall time of the dF step over every prunable layer; None for round 0
    epoch_seconds: float | None  # mean wall time of one of this round's training epochs; None if none ran
    alive_by_layer: dict[str, int]


@dataclass
class SparsifyResult:
    model: nn.Module  # the model given, in place: plain layers holding the sparse posterior means
    meanfield: nn.Module  # the fitted mean-field model (posterior means, stds, masks)
    rounds: list[SparsifyRound]  # round 0 (the fit), then one per dF step run
    epochs: list[SparsifyEpoch]
    stopped_early: bool  # a dF step removed nothing before max_rounds

    @property
    def sparsity(self) -> float:
        return self.rounds[-1].sparsity

    def as_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "stopped_early": self.stopped_early,
            "rounds": [asdict(record) for record in self.rounds],
            "epochs": [asdict(record) for record in self.epochs],
        }


@dataclass
class Position:
    """Where the run is, besides the model's and optimiser's own state."""

    round: int = 0
    epoch: int = 0  # epochs finished in this round
    pruned: bool = False  # this round's dF step has run (rounds >= 1)
    finished: bool = False
    stopped_early: bool = False
    step: dict[str, Any] = field(default_factory=dict)  # this round's dF step: removed weights and seconds
