"""The paper's baseline criteria: thresholds on the noise posterior (SNR, E[theta]) and fixed
fractions per layer by weight magnitude (L2) or gradient norm.

A coupled group (``GroupView``: layers whose structure ``i`` is one channel) is scored as follows.
SNR and E[theta]: the largest member's value, so a channel goes only when every layer it lives in
would lose it on its own (its members scale different addends of a sum, not one chain, so a
product would call a channel weak that one addend still carries). L2 and gradient: the norm over
the whole group's incoming weights (the root of the members' summed squares), as torch-pruning's
group importance does; the fraction is then removed from the group's channels. SNR at fixed
fractions (``snr_ratio``) ranks by the SNR score and removes fractions as L2 does: SNR at the widths
another criterion reached, where ``snr`` finds its own through its threshold."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from bmrs.nn.attention import structure_weights

from bmrs.criteria.base import (
    Decision, GroupView, LayerView, as_group, check_number, check_ratio, lowest_fraction, register_criterion, with_history,
)  # fmt: skip


@register_criterion("snr")
@dataclass(frozen=True)
class SignalToNoise:
    """SNR ``E[theta] / sqrt(Var[theta])`` below ``threshold`` (Neklyudov et al. recommend 1)."""

    threshold: float = 1.0
    needs_gradients: ClassVar[bool] = False
    prunes_at_evidence_boundary: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_number(self, "threshold", "a finite number >= 0 (structures with a lower SNR are pruned)", lambda v: v >= 0)

    def decide(self, view: GroupView | LayerView) -> Decision:
        group = as_group(view)
        snr = _group_snr(group)
        return with_history(group, snr, snr < self.threshold)


@register_criterion("etheta")
@dataclass(frozen=True)
class ExpectedNoise:
    """``E[theta]`` below ``threshold`` (0.1 in the paper)."""

    threshold: float = 0.1
    needs_gradients: ClassVar[bool] = False
    prunes_at_evidence_boundary: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_number(self, "threshold", "a number in [0, 1] (structures with a lower E[theta] are pruned)", lambda v: 0 <= v <= 1)

    def decide(self, view: GroupView | LayerView) -> Decision:
        group = as_group(view)
        mean = _largest([member.noise.mean().detach().double() for member in group.members])
        return with_history(group, mean, mean < self.threshold)


def _group_snr(group: GroupView) -> Tensor:
    return _largest([member.noise.snr().detach().double() for member in group.members])


def _largest(per_member: list[Tensor]) -> Tensor:
    return torch.stack(per_member).amax(dim=0)


def _root_sum_of_squares(per_member: list[Tensor]) -> Tensor:
    return torch.stack(per_member).pow(2).sum(dim=0).sqrt()


def incoming_weight_norm(source: nn.Module) -> Tensor:
    """L2 norm of each output structure's incoming weights (a row of a Linear, a filter of a Conv2d,
    an attention head's rows of its query, key and value projections)."""
    return structure_weights(source).double().norm(dim=1)


@dataclass(frozen=True)
class _FractionPerLayer:
    """Settings of the fixed-fraction criteria: ``ratio`` for every layer, unless ``layer_ratios``
    (noise-layer name -> fraction) gives each layer its own, e.g. the per-layer compression another
    criterion reached, so that two criteria are compared at the same sizes."""

    ratio: float = 0.5
    layer_ratios: dict[str, float] | None = field(default=None)

    def __post_init__(self) -> None:
        check_number(self, "ratio", "a number in [0, 1) (the fraction of each layer's structures to remove)", lambda v: 0 <= v < 1)
        if self.layer_ratios is None:
            return
        if not isinstance(self.layer_ratios, dict):
            raise TypeError(
                f"layer_ratios maps noise-layer names to fractions, e.g. {{'0': 0.5}}; got {type(self.layer_ratios).__name__}"
            )
        # YAML reads nn.Sequential's child names (`0: 0.5`) as integers; they name the same layers.
        object.__setattr__(self, "layer_ratios", {str(name): value for name, value in self.layer_ratios.items()})
        for name, value in self.layer_ratios.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"layer_ratios[{name!r}] must be a number in [0, 1), got {value!r}")
            try:
                check_ratio(float(value))
            except ValueError as error:
                raise ValueError(f"layer_ratios[{name!r}]: {error}") from None

    def ratio_for(self, layer: str) -> float:
        if self.layer_ratios is None:
            return self.ratio
        if layer not in self.layer_ratios:
            raise ValueError(
                f"layer_ratios has no fraction for noise layer {layer!r} (it names {sorted(self.layer_ratios)}); "
                f"add {layer!r} to layer_ratios, or leave layer_ratios unset to remove ratio={self.ratio} of every layer"
            )
        return float(self.layer_ratios[layer])


@register_criterion("l2")
@dataclass(frozen=True)
class IncomingWeightNorm(_FractionPerLayer):
    """Magnitude pruning: remove ``ratio`` of each layer's structures (or its ``layer_ratios`` entry),
    smallest incoming-weight L2 norm first."""

    needs_gradients: ClassVar[bool] = False
    prunes_at_evidence_boundary: ClassVar[bool] = False

    def decide(self, view: GroupView | LayerView) -> Decision:
        group = as_group(view)
        norms = _root_sum_of_squares([incoming_weight_norm(member.source) for member in group.members])
        return lowest_fraction(group, norms, self.ratio_for(group.name))


@register_criterion("grad")
@dataclass(frozen=True)
class GradientNorm(_FractionPerLayer):
    """Gradient pruning (paper appendix E): remove ``ratio`` of each layer's structures (or its
    ``layer_ratios`` entry) with the smallest L2 norm of the loss gradient of their incoming weights,
    accumulated over an epoch."""

    needs_gradients: ClassVar[bool] = True
    prunes_at_evidence_boundary: ClassVar[bool] = False

    def decide(self, view: GroupView | LayerView) -> Decision:
        group = as_group(view)
        for member in group.members:
            if member.grad_sq is None:
                raise ValueError(
                    f"criterion 'grad' needs gradient statistics for layer {member.name!r}; "
                    "run it through the training loop, which collects them when needs_gradients is set"
                )
        # grad_sq is already a sum of squares per structure: a group's is the members' total.
        summed = torch.stack([member.grad_sq.detach().double() for member in group.members]).sum(dim=0)
        return lowest_fraction(group, summed.sqrt(), self.ratio_for(group.name))


@register_criterion("snr_ratio")
@dataclass(frozen=True)
class SignalToNoiseFraction(_FractionPerLayer):
    """SNR ranking at fixed sizes: remove ``ratio`` of each layer's structures (or its
    ``layer_ratios`` entry), lowest SNR first. ``bmrs compare`` gives it another method's per-layer
    fractions, so that SNR's ranking is compared with L2's and BMRS's at the same widths."""

    needs_gradients: ClassVar[bool] = False
    prunes_at_evidence_boundary: ClassVar[bool] = False
    # Its scores are snr's: lists of every criterion's scores or curves show them once, as snr.
    same_ranking_as: ClassVar[str] = "snr"

    def decide(self, view: GroupView | LayerView) -> Decision:
        group = as_group(view)
        snr = _group_snr(group)
        return lowest_fraction(group, snr, self.ratio_for(group.name))
