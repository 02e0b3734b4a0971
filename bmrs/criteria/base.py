"""The criterion protocol and registry, and the one way a configuration names a criterion.

A criterion looks at one group of noise layers at a time (``GroupView``: for each member its noise
posterior, the layer that produces its structures, and gradient statistics when it asks for them)
and returns a ``Decision``: per-structure importance scores (higher keeps) and which structures to
prune. A group is the set of layers whose structure ``i`` is one removable channel (a residual
stream's producers, a depthwise convolution and its producer; ``bmrs.nn.groups``); most layers are
a group of one, and a criterion may be handed a single ``LayerView`` for one. Each criterion
documents how it scores a group of several. Structures already pruned are never revived:
``Decision.prune`` only ever adds to the mask.

A criterion is a frozen dataclass whose fields are its settings, registered with
``@register_criterion("name")``; the instance *is* the configuration (``TrainConfig(criterion=
BMRSLogUniform(p1=4))``, YAML ``criterion: {name: bmrs_u, p1: 4}`` through ``criterion_from``). Each
checks its settings' types and ranges when it is built; one whose settings must also fit the noise
prior's truncation defines ``check_prior(log_a, log_b)`` (see ``check_criterion``). The test-suite
iterates the registry, so registering is enough to get a new criterion exercised.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from bmrs.nn.groups import noise_groups
from bmrs.nn.noise import LogNormalNoise


@dataclass(frozen=True)
class LayerView:
    name: str
    noise: LogNormalNoise
    source: nn.Module
    grad_sq: Tensor | None = None  # per-structure sum of squared gradients of the incoming weights


@dataclass(frozen=True)
class GroupView:
    """What a criterion decides on: ``members`` whose structure ``i`` is one channel (one member for
    an uncoupled layer). ``name`` is the group's (its first member's noise-layer name)."""

    name: str
    members: tuple[LayerView, ...]

    def __post_init__(self) -> None:
        if not self.members or not all(isinstance(member, LayerView) for member in self.members):
            raise TypeError(f"a GroupView needs one or more LayerViews, got {self.members!r}")
        sizes = {member.name: member.noise.num_structures for member in self.members}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"the members of group {self.name!r} have different numbers of structures {sizes}")

    @property
    def num_structures(self) -> int:
        return self.members[0].noise.num_structures

    @property
    def mask(self) -> Tensor:
        """Channels alive in every member (pruning keeps the members' masks equal)."""
        alive = self.members[0].noise.mask.clone()
        for member in self.members[1:]:
            alive &= member.noise.mask
        return alive


def group_views(model: nn.Module, grad_sq: Mapping[str, Tensor] | None = None) -> list[GroupView]:
    """Every noise group of ``model`` as the criterion sees it, with the gradient statistics
    ``grad_sq`` holds for its members (by noise-layer name)."""
    grad_sq = grad_sq or {}
    return [
        GroupView(group.name, tuple(
            LayerView(name, noise, model.get_submodule(noise.source), grad_sq.get(name)) for name, noise in group.members.items()
        ))  # fmt: skip
        for group in noise_groups(model)
    ]


def as_group(view: LayerView | GroupView) -> GroupView:
    """``view`` as a group: a single layer is a group of one."""
    if isinstance(view, GroupView):
        return view
    if isinstance(view, LayerView):
        return GroupView(view.name, (view,))
    raise TypeError(f"a criterion decides on a GroupView (or a LayerView for one layer), got {type(view).__name__}")


@dataclass(frozen=True)
class Decision:
    scores: Tensor  # importance per structure, higher keeps; float64
    prune: Tensor  # bool per structure, True for every structure that should be gone (old and new)


# runtime_checkable: configs holding a criterion are checked with isinstance (by pydantic, in Prefect).
@runtime_checkable
class Criterion(Protocol):
    needs_gradients: ClassVar[bool]  # the training loop collects per-structure gradient statistics for it
    # Its prune decision is the evidence boundary dF >= 0, which post-training curves mark.
    prunes_at_evidence_boundary: ClassVar[bool]

    def decide(self, view: GroupView | LayerView) -> Decision: ...


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


def ranking_criteria() -> dict[str, type]:
    """The registered criteria whose scores are their own: those a list of every criterion's
    rankings (post-training curves, rank correlations) shows. A criterion that only applies another's
    ranking differently (``snr_ratio``: snr's scores at fixed fractions) names it in the class
    attribute ``same_ranking_as`` and is left out."""
    return {name: cls for name, cls in CRITERIA.items() if getattr(cls, "same_ranking_as", None) is None}


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


def check_criterion(criterion: Criterion, *, log_a: float, log_b: float) -> Criterion:
    """``criterion``, its settings checked against the noise prior's truncation ``[e^log_a, e^log_b]``
    when they depend on it: what loading a configuration runs, so that nothing fails at the first
    pruning instead."""
    check_prior = getattr(criterion, "check_prior", None)
    if check_prior is not None:
        try:
            check_prior(log_a, log_b)
        except ValueError as error:
            raise ValueError(f"criterion {criterion_name(criterion)!r}: {error}") from None
    return criterion


def _lookup(name: str) -> type:
    if name not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {name!r}; choose one of {sorted(CRITERIA)}")
    return CRITERIA[name]


def posterior(noise: LogNormalNoise) -> tuple[Tensor, Tensor]:
    # float64: dF is a log-ratio of tail masses, and ranking needs its full resolution.
    return noise.mu.detach().double(), noise.sigma().detach().double()


def with_history(unit: GroupView | LogNormalNoise, scores: Tensor, prune_new: Tensor) -> Decision:
    """``scores`` and ``prune_new`` with ``unit``'s (a group's or one noise's) pruned structures
    scored lowest and kept pruned."""
    already = ~unit.mask
    return Decision(scores=torch.where(already, -torch.inf, scores), prune=prune_new | already)


def lowest_fraction(unit: GroupView | LogNormalNoise, scores: Tensor, ratio: float) -> Decision:
    """Prune the lowest-scoring alive structures until ``ratio`` of the layer (or group) is gone."""
    total = unit.num_structures
    target = min(int(round(ratio * total)), total - 1)
    already = ~unit.mask
    extra = max(target - int(already.sum()), 0)
    prune = already.clone()
    if extra:
        candidates = torch.where(already, torch.inf, scores)
        prune[torch.argsort(candidates, stable=True)[:extra]] = True
    return Decision(scores=torch.where(already, -torch.inf, scores), prune=prune)


def check_number(owner: object, name: str, allowed: str, fits: Callable[[float], bool] = math.isfinite) -> float:
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


def check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio is the fraction of each layer's structures to remove, in [0, 1); got {ratio}")


def criterion_from(value: Any) -> Criterion:
    """A criterion from the forms a configuration gives it: a registered criterion itself, its
    name (``"bmrs_u"``, default settings) or a mapping of its name and settings
    (``{"name": "bmrs_u", "p1": 4}``). ``None`` is not a criterion: training without pruning is
    ``TrainConfig(criterion=None)``, and a dense model is one built without noise."""
    if type(value) in CRITERIA.values():
        return value
    if isinstance(value, str):
        if value.strip().lower() in ("none", "null", ""):
            raise ValueError(
                f"{value!r} is not a criterion; for the unpruned model write null (YAML) / None (Python), "
                f"else choose one of {sorted(CRITERIA)}"
            )
        return build_criterion(value)
    if isinstance(value, Mapping):
        settings = dict(value)
        name = settings.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(
                f"a criterion given as a mapping needs its name, e.g. {{name: bmrs_u, p1: 4}}; got {dict(value)!r}"
            )
        return build_criterion(name, **settings)
    raise TypeError(
        f"a criterion is a name such as 'bmrs_n', a mapping such as {{name: bmrs_u, p1: 4}}, or one of "
        f"bmrs.criteria's classes; got {value!r}"
    )


def criterion_name(criterion: Criterion) -> str:
    """The name ``criterion``'s class was registered under (``"bmrs_n"``)."""
    name = getattr(type(criterion), "registry_name", None)
    if name is None or CRITERIA.get(name) is not type(criterion):
        raise TypeError(f"{criterion!r} is not a registered criterion; register its class with @register_criterion")
    return name


def settings_of(criterion: Criterion) -> dict[str, Any]:
    """Every setting of ``criterion`` (its dataclass fields), as plain values: what records hold."""
    return {f.name: copy.deepcopy(getattr(criterion, f.name)) for f in dataclasses.fields(criterion)}


def changed_settings(criterion: Criterion) -> dict[str, Any]:
    """The settings of ``criterion`` that differ from its defaults: what a report shows."""
    defaults = criterion_settings(criterion_name(criterion))
    return {name: value for name, value in settings_of(criterion).items() if value != defaults[name]}


def complete_settings(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` with every setting it leaves out at its default: records written when only the
    settings a user gave were kept compare equal to records that keep them all."""
    return {**criterion_settings(name), **dict(given)}
