"""Pruning criteria: one protocol, one registry.

A criterion looks at one noise layer at a time (``LayerView``: its noise posterior, the layer that
produces its structures, and gradient statistics when it asks for them) and returns a ``Decision``:
per-structure importance scores (higher keeps) and which structures to prune. Structures already
pruned are never revived: ``Decision.prune`` only ever adds to the mask.

Register a new criterion with ``@register_criterion("name")`` on a frozen dataclass whose fields are
its settings; the test-suite iterates the registry, so registering is enough to get it exercised.
Each checks its settings' types and ranges when it is built, so that ``build_criterion`` at load
time refuses a bad setting before any training; one whose settings must also fit the noise prior's
truncation defines ``check_prior(log_a, log_b)`` (see ``check_criterion``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

import torch
from torch import Tensor, nn

from bmrs.nn.noise import LogNormalNoise
from bmrs.math.reduction import delta_f_lognormal, delta_f_loguniform


@dataclass(frozen=True)
class LayerView:
    name: str
    noise: LogNormalNoise
    source: nn.Module
    grad_sq: Tensor | None = None  # per-structure sum of squared gradients of the incoming weights


@dataclass(frozen=True)
class Decision:
    scores: Tensor  # importance per structure, higher keeps; float64
    prune: Tensor  # bool per structure, True for every structure that should be gone (old and new)


class Criterion(Protocol):
    needs_gradients: ClassVar[bool]

    def decide(self, layer: LayerView) -> Decision: ...


CRITERIA: dict[str, type] = {}


def register_criterion(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if name in CRITERIA:
            raise ValueError(f"criterion {name!r} is registered twice")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"criterion {name!r} must be a frozen dataclass whose fields are its settings")
        cls.registry_name = name
        CRITERIA[name] = cls
        return cls

    return add


def criterion_settings(name: str) -> dict[str, Any]:
    """The settings a criterion takes, with their defaults."""
    cls = _lookup(name)
    return {f.name: f.default for f in dataclasses.fields(cls)}


def build_criterion(name: str, **settings: Any) -> Criterion:
    """The criterion ``name`` with ``settings``; ``ValueError``/``TypeError`` naming the criterion,
    the setting and what it may be when one is unknown or out of range."""
    cls = _lookup(name)
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - allowed, key=str)
    if unknown:
        raise ValueError(f"criterion {name!r} has no setting {unknown[0]!r}; its settings are {sorted(allowed)}")
    try:
        return cls(**settings)
    except (TypeError, ValueError) as error:
        raise type(error)(f"criterion {name!r}: {error}") from None


def check_criterion(name: str, settings: dict[str, Any], *, log_a: float, log_b: float) -> Criterion:
    """``build_criterion``, and the settings checked against the noise prior's truncation
    ``[e^log_a, e^log_b]`` for a criterion whose settings depend on it: what loading a
    configuration runs, so that nothing fails at the first pruning instead."""
    criterion = build_criterion(name, **settings)
    check_prior = getattr(criterion, "check_prior", None)
    if check_prior is not None:
        try:
            check_prior(log_a, log_b)
        except ValueError as error:
            raise ValueError(f"criterion {name!r}: {error}") from None
    return criterion


def _lookup(name: str) -> type:
    if name not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {name!r}; choose one of {sorted(CRITERIA)}")
    return CRITERIA[name]


def _posterior(noise: LogNormalNoise) -> tuple[Tensor, Tensor]:
    # float64: dF is a log-ratio of tail masses, and ranking needs its full resolution.
    return noise.mu.detach().double(), noise.sigma().detach().double()


def _with_history(noise: LogNormalNoise, scores: Tensor, prune_new: Tensor) -> Decision:
    already = ~noise.mask
    return Decision(scores=torch.where(already, -torch.inf, scores), prune=prune_new | already)


def _lowest_fraction(noise: LogNormalNoise, scores: Tensor, ratio: float) -> Decision:
    """Prune the lowest-scoring alive structures until ``ratio`` of the layer is gone."""
    total = noise.num_structures
    target = min(int(round(ratio * total)), total - 1)
    already = ~noise.mask
    extra = max(target - int(already.sum()), 0)
    prune = already.clone()
    if extra:
        candidates = torch.where(already, torch.inf, scores)
        prune[torch.argsort(candidates, stable=True)[:extra]] = True
    return Decision(scores=torch.where(already, -torch.inf, scores), prune=prune)


def _number(owner: object, name: str, allowed: str, fits: Callable[[float], bool] = math.isfinite) -> float:
    """Setting ``name`` of ``owner`` as a float, stored back; ``TypeError`` unless it is a number,
    ``ValueError`` unless ``fits`` it (``allowed`` says what fits, in the message). A string that
    spells a number is one: YAML 1.1 reads ``1e-6`` (no dot) as a string."""
    value = getattr(owner, name)
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    number = float(number)
    if not (math.isfinite(number) and fits(number)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    object.__setattr__(owner, name, number)
    return number


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio is the fraction of each layer's structures to remove, in [0, 1); got {ratio}")


@register_criterion("bmrs_n")
@dataclass(frozen=True)
class BMRSLogNormal:
    """BMRS_N: prune where ``dF >= margin`` under a log-normal reduced prior at ``mu_p`` (paper eq. 8).

    ``mu_p = None`` puts the reduced prior at the layer's lower truncation bound ``log a``, as the
    paper does. ``margin`` is 0 for the exact rule; it exists only to reproduce other thresholds."""

    mu_p: float | None = None
    sigma_p: float = 1e-6
    margin: float = 0.0
    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.mu_p is not None:
            _number(self, "mu_p", "a finite number (log theta at the reduced prior's mean), or null for the layer's log a")
        _number(self, "sigma_p", "a finite number > 0 (the reduced prior's standard deviation of log theta)", lambda v: v > 0)
        _number(self, "margin", "a finite number (0 for the exact rule dF >= 0)")

    def decide(self, layer: LayerView) -> Decision:
        mu, sigma = _posterior(layer.noise)
        mu_p = layer.noise.log_a if self.mu_p is None else self.mu_p
        delta_f = delta_f_lognormal(
            mu, sigma, mu_p=mu_p, sigma_p=self.sigma_p, log_a=layer.noise.log_a, log_b=layer.noise.log_b
        )
        return _with_history(layer.noise, -delta_f, delta_f >= self.margin)


@register_criterion("bmrs_u")
@dataclass(frozen=True)
class BMRSLogUniform:
    """BMRS_U-p1: prune where ``dF >= 0`` under a log-uniform reduced prior on ``[2^-p2, 2^-p1]`` (eq. 10)."""

    p1: float = 8.0
    p2: float = 23.0
    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        p2 = _number(self, "p2", "a finite number > p1 (the reduced support's lower end is 2^-p2)")
        _number(self, "p1", f"a number with 0 <= p1 < p2 (p2 = {p2:g}; the reduced support's upper end is 2^-p1)",
                lambda v: 0 <= v < p2)  # fmt: skip

    def check_prior(self, log_a: float, log_b: float) -> None:
        """The reduced support ``[2^-p2, 2^-p1]`` must lie inside the prior's ``[e^log_a, e^log_b]``."""
        if self.p2 * math.log(2.0) > -log_a:
            raise ValueError(
                f"p2 = {self.p2:g} puts the reduced support's lower end 2^-{self.p2:g} below the noise prior's "
                f"e^{log_a:g} (noise.log_a); choose p2 <= {-log_a / math.log(2.0):.4g}, or lower noise.log_a"
            )
        if self.p1 * math.log(2.0) < -log_b:
            raise ValueError(
                f"p1 = {self.p1:g} puts the reduced support's upper end 2^-{self.p1:g} above the noise prior's "
                f"e^{log_b:g} (noise.log_b); choose p1 >= {-log_b / math.log(2.0):.4g}, or raise noise.log_b"
            )

    def decide(self, layer: LayerView) -> Decision:
        mu, sigma = _posterior(layer.noise)
        delta_f = delta_f_loguniform(
            mu, sigma, p1=self.p1, p2=self.p2, log_a=layer.noise.log_a, log_b=layer.noise.log_b
        )
        return _with_history(layer.noise, -delta_f, delta_f >= 0)


@register_criterion("snr")
@dataclass(frozen=True)
class SignalToNoise:
    """SNR ``E[theta] / sqrt(Var[theta])`` below ``threshold`` (Neklyudov et al. recommend 1)."""

    threshold: float = 1.0
    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _number(self, "threshold", "a finite number >= 0 (structures with a lower SNR are pruned)", lambda v: v >= 0)

    def decide(self, layer: LayerView) -> Decision:
        snr = layer.noise.snr().detach().double()
        return _with_history(layer.noise, snr, snr < self.threshold)


@register_criterion("etheta")
@dataclass(frozen=True)
class ExpectedNoise:
    """``E[theta]`` below ``threshold`` (0.1 in the paper)."""

    threshold: float = 0.1
    needs_gradients: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _number(self, "threshold", "a number in [0, 1] (structures with a lower E[theta] are pruned)", lambda v: 0 <= v <= 1)

    def decide(self, layer: LayerView) -> Decision:
        mean = layer.noise.mean().detach().double()
        return _with_history(layer.noise, mean, mean < self.threshold)


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
        _number(self, "ratio", "a number in [0, 1) (the fraction of each layer's structures to remove)", lambda v: 0 <= v < 1)
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
                _check_ratio(float(value))
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

    def decide(self, layer: LayerView) -> Decision:
        return _lowest_fraction(layer.noise, incoming_weight_norm(layer.source), self.ratio_for(layer.name))


@register_criterion("grad")
@dataclass(frozen=True)
class GradientNorm(_FractionPerLayer):
    """Gradient pruning (paper appendix E): remove ``ratio`` of each layer's structures (or its
    ``layer_ratios`` entry) with the smallest L2 norm of the loss gradient of their incoming weights,
    accumulated over an epoch."""

    needs_gradients: ClassVar[bool] = True

    def decide(self, layer: LayerView) -> Decision:
        if layer.grad_sq is None:
            raise ValueError(
                f"criterion 'grad' needs gradient statistics for layer {layer.name!r}; "
                "run it through the training loop, which collects them when needs_gradients is set"
            )
        return _lowest_fraction(layer.noise, layer.grad_sq.detach().double().sqrt(), self.ratio_for(layer.name))
