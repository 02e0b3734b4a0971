"""The paper's baseline criteria: thresholds on the noise posterior (SNR, E[theta]) and fixed
fractions per layer by weight magnitude (L2) or gradient norm."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from bmrs.criteria.base import (
    Decision, LayerView, check_number, check_ratio, lowest_fraction, register_criterion, with_history,
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

    def decide(self, layer: LayerView) -> Decision:
        snr = layer.noise.snr().detach().double()
        return with_history(layer.noise, snr, snr < self.threshold)


@register_criterion("etheta")
@dataclass(frozen=True)
class ExpectedNoise:
    """``E[theta]`` below ``threshold`` (0.1 in the paper)."""

    threshold: float = 0.1
    needs_gradients: ClassVar[bool] = False
    prunes_at_evidence_boundary: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_number(self, "threshold", "a number in [0, 1] (structures with a lower E[theta] are pruned)", lambda v: 0 <= v <= 1)

    def decide(self, layer: LayerView) -> Decision:
        mean = layer.noise.mean().detach().double()
        return with_history(layer.noise, mean, mean < self.threshold)


def incoming_weight_norm(source: nn.Module) -> Tensor:
    """L2 norm of each output structure's incoming weights (a row of a Linear, a filter of a Conv2d)."""
    weight = source.weight.detach().double()
    return weight.flatten(1).norm(dim=1)


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

    def decide(self, layer: LayerView) -> Decision:
        return lowest_fraction(layer.noise, incoming_weight_norm(layer.source), self.ratio_for(layer.name))


@register_criterion("grad")
@dataclass(frozen=True)
class GradientNorm(_FractionPerLayer):
    """Gradient pruning (paper appendix E): remove ``ratio`` of each layer's structures (or its
    ``layer_ratios`` entry) with the smallest L2 norm of the loss gradient of their incoming weights,
    accumulated over an epoch."""

    needs_gradients: ClassVar[bool] = True
    prunes_at_evidence_boundary: ClassVar[bool] = False

    def decide(self, layer: LayerView) -> Decision:
        if layer.grad_sq is None:
            raise ValueError(
                f"criterion 'grad' needs gradient statistics for layer {layer.name!r}; "
                "run it through the training loop, which collects them when needs_gradients is set"
            )
        return lowest_fraction(layer.noise, layer.grad_sq.detach().double().sqrt(), self.ratio_for(layer.name))
