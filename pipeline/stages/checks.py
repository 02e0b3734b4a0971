"""Sanity bounds on a finished run's accuracies: a model that collapsed must not pass for a success.

A run whose pruned model is near chance, or far below the dense reference, still writes its ONNX
model and ``report.json`` (they show what happened), but ``report.json`` says which bound failed,
``status.json`` ends ``degraded`` and ``bmrs`` exits with a code of its own. "Chance" is the
accuracy of always predicting the test split's most common class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class ChecksConfig:
    """``min_accuracy_over_chance``: every trained model's test accuracy must exceed the majority-class
    rate by this much (absolute). ``max_accuracy_drop``: the pruned model may lose at most this much
    (absolute) against the dense reference, when one was trained; null: no such bound.
    ``parity_examples``: how many test examples the exported ONNX models are compared on with the
    PyTorch models they stand for (always checked; a mismatch fails the run)."""

    # The shipped recipes' lowest accuracy is 82.6% on 10 balanced classes: far above 10% + 5 points.
    min_accuracy_over_chance: float = 0.05
    # The largest drop in the shipped results is 3.7 points (README, BMRS_U-8 at the default budget).
    max_accuracy_drop: float | None = 0.10
    parity_examples: int = 512

    def __post_init__(self) -> None:
        bounds = {"min_accuracy_over_chance": self.min_accuracy_over_chance}
        if self.max_accuracy_drop is not None:
            bounds["max_accuracy_drop"] = self.max_accuracy_drop
        for name, value in bounds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be an accuracy difference from 0 to 1, got {value}")
        examples = self.parity_examples
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise ValueError(f"parity_examples must be an integer >= 1, got {examples!r}")


def chance_accuracy(labels: Tensor) -> float:
    """The accuracy of always predicting the most common label."""
    if labels.numel() == 0:
        raise ValueError("the test split is empty; there is nothing to measure accuracy on")
    return float(torch.bincount(labels.flatten()).max()) / labels.numel()


@dataclass(frozen=True)
class RunFacts:
    """What the warning needs to name a cause and a fix. ``best_val_accuracy``: the method's model's
    best validation accuracy over its training epochs (before fine-tuning), None when unknown; at
    chance, the model never learned, and pruning is not what collapsed it. ``sparsified``: BMR on
    weights (the ``sparsify`` section) ran after training, so what removed too much may be it;
    ``structured``: a criterion pruned structures (False for ``bmr_weights`` on the dense model)."""

    train_examples: int
    steps_per_epoch: int
    lr: float
    method: str
    best_val_accuracy: float | None = None
    sparsified: bool = False
    structured: bool = True


def evaluate_checks(
    config: ChecksConfig, *, chance: float, pruned: float, dense: float | None, facts: RunFacts
) -> dict[str, Any]:
    """The report's ``checks`` section for test accuracies ``pruned`` and ``dense`` (None: no dense
    reference was trained): every bound applied with its figures, the names of those that failed and,
    when any did, one warning line naming the cause and the fix."""
    floor = chance + config.min_accuracy_over_chance
    bounds: dict[str, dict[str, Any]] = {
        "pruned_above_chance": {"passed": pruned > floor, "accuracy": pruned, "min_accuracy": floor},
    }
    if dense is not None:
        bounds["dense_above_chance"] = {"passed": dense > floor, "accuracy": dense, "min_accuracy": floor}
        if config.max_accuracy_drop is not None:
            drop = dense - pruned
            bounds["pruned_drop_from_dense"] = {
                "passed": drop <= config.max_accuracy_drop, "drop": drop, "max_drop": config.max_accuracy_drop,
            }  # fmt: skip
    failed = [name for name, bound in bounds.items() if not bound["passed"]]
    return {
        "passed": not failed,
        "failed": failed,
        "chance_accuracy": chance,
        "min_accuracy_over_chance": config.min_accuracy_over_chance,
        "max_accuracy_drop": config.max_accuracy_drop,
        "bounds": bounds,
        "warning": _warning(failed, config, chance=chance, pruned=pruned, dense=dense, facts=facts) if failed else None,
    }


def _warning(
    failed: list[str], config: ChecksConfig, *, chance: float, pruned: float, dense: float | None, facts: RunFacts
) -> str:
    at_chance = (
        f"no more than always predicting the most common class ({chance:.1%}) plus "
        f"checks.min_accuracy_over_chance ({config.min_accuracy_over_chance:g})"
    )
    steps = (
        f"training had {facts.steps_per_epoch} optimiser steps per epoch over {facts.train_examples} examples; "
        "a recipe counted in epochs on larger data means far fewer steps here"
    )
    model = f"the {facts.method} model"
    floor = chance + config.min_accuracy_over_chance
    learned = facts.best_val_accuracy is None or facts.best_val_accuracy > floor
    if "dense_above_chance" in failed:
        cause = (
            f"the recipe does not train on this data: the dense baseline's test accuracy is {dense:.1%} and "
            f"{model}'s {pruned:.1%}, {at_chance}"
        )
        fix = f"check train.lr ({facts.lr:g}) and the data's labels, and give training more steps ({steps})"
    elif "pruned_above_chance" in failed and not learned:
        dense_part = f", though the dense baseline reaches {dense:.1%}" if dense is not None else ""
        cause = (
            f"{model} never learned: its best validation accuracy while training was {facts.best_val_accuracy:.1%} "
            f"and its test accuracy is {pruned:.1%}{dense_part}, {at_chance}"
        )
        fix = (
            f"give it more optimiser steps ({steps}), check train.lr ({facts.lr:g}) and the noise initialisation "
            "(noise.init_mu, noise.start_on)"
        )
        if dense is None:
            fix += ", and train the dense baseline (baseline.enabled=true) to see whether the recipe trains at all"
    elif "pruned_above_chance" in failed and dense is None and facts.best_val_accuracy is None:
        cause = f"{model} collapsed: its test accuracy is {pruned:.1%}, {at_chance}"
        fix = (
            f"check train.lr ({facts.lr:g}), give training more steps ({steps}), and train the dense baseline "
            "(baseline.enabled=true) to tell a recipe that does not train from pruning that removes too much"
        )
    elif "pruned_above_chance" in failed:
        before = f"{dense:.1%} dense" if dense is not None else f"{facts.best_val_accuracy:.1%} validation while training"
        cause = f"pruning collapsed {model}: its test accuracy is {pruned:.1%} ({before}), {at_chance}"
        structured = ("prune less or later (the settings of train.criterion, train.prune_start) or fine-tune longer "
                      "(train.finetune_epochs)")  # fmt: skip
        fix = f"{_pruning_fix(facts, structured)}; {steps}"
    else:
        cause = (
            f"pruning cost {dense - pruned:.1%} of test accuracy ({model} {pruned:.1%}, dense {dense:.1%}), "
            f"more than checks.max_accuracy_drop ({config.max_accuracy_drop:g})"
        )
        structured = "prune less (the settings of train.criterion) or fine-tune longer (train.finetune_epochs)"
        fix = f"{_pruning_fix(facts, structured)}, or raise checks.max_accuracy_drop if the trade is intended"
    return f"the run is degraded: {cause}; {fix}"


def _pruning_fix(facts: RunFacts, structured: str) -> str:
    """``structured`` (the criterion's levers) and, when BMR on weights ran, its own: fewer rounds, a
    narrower posterior (which removes fewer weights), longer fine-tuning."""
    weights = (
        "remove fewer weights (fewer sparsify.max_rounds; a narrower posterior: a lower sparsify.init_std or fewer "
        "sparsify.epochs) or fine-tune them longer (sparsify.finetune_epochs)"
    )
    if not facts.sparsified:
        return structured
    return f"{structured}; {weights}" if facts.structured else weights
