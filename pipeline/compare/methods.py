"""``bmrs compare --methods`` specs -> the ``train.criterion`` (and ``sparsify.enabled``) each run is made with.

A spec is ``none`` (the dense model: ``train.criterion: null``), a registered criterion's name
(``bmrs_n``), ``name:VALUE`` (BMRS_U's ``p1``: ``bmrs_u:8``) or ``name:key=value[,key=value]``
(``bmrs_u:p1=4``, ``snr:threshold=2``); values are YAML, as in ``--set``. ``bmr_weights`` is BMR on
the dense model's individual weights (``train.criterion: null``, ``sparsify.enabled: true``), and a
criterion's spec followed by ``+bmr_weights`` (``bmrs_u:8+bmr_weights``) is the combined mode: that
criterion prunes structures, then BMR the surviving weights. Every method sets ``sparsify.enabled``
(false for the others), whatever the flow says; the sparsify settings themselves are the flow's.
Every spec is checked by building the flow's ``FlowConfig`` with it, through the builder ``--set
train.criterion=...`` goes through, so a bad setting is refused with the same words, before
anything is written.

A criterion with ``layer_ratios`` (l2, grad, snr_ratio) given neither ``ratio`` nor ``layer_ratios`` prunes, per
noise layer, the fraction the same seed's ``bmrs_n`` run ended with (the paper's protocol, as in
``benchmarks.paper.table1``): ``Method.at_ratio_source``; the fractions are filled in per seed.
``bmrs compare --widths-of SPEC`` takes them from another method's run instead (``bmrs_u:4``, on
models where exact BMRS_N removes nothing at a short budget): the ratio source.
Unlike table1, which also moves their pruning to after the last training epoch (``prune_start =
epochs``), they keep the flow's schedule: a method changes ``train.criterion`` and
``sparsify.enabled`` and nothing else, so every run of a seed has the same dense baseline (whose
checkpoint records every training setting), and ``bmr_weights`` starts from that very model.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import yaml

from bmrs.criteria import CRITERIA, criterion_settings
from pipeline.compare.command import RATIO_SOURCE  # light: no torch, no Prefect
from pipeline.config import ConfigError, FlowConfig, flow_config_from_dict
from pipeline.config.schema import DENSE_METHOD, WEIGHT_METHOD

RATIO_SETTINGS = ("ratio", "layer_ratios")  # given either, a fixed-fraction criterion keeps it
SHORTHAND = {"bmrs_u": "p1"}  # name:VALUE sets this setting
DENSE_FOLDER = "dense"  # <out>/dense/seed<k>/: the dense baseline shared by a seed's runs; no method's label
_SETTING_SPLIT = re.compile(r",(?=\s*[A-Za-z_]\w*\s*=)")  # a comma inside a value ({a: 1, b: 2}) stays
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]")


@dataclass(frozen=True)
class Method:
    spec: str  # as the user wrote it
    label: str  # its folder under the comparison directory: bmrs_u-p1=8
    criterion: dict[str, Any] | None  # train.criterion as a config tree holds it; None: the dense model
    at_ratio_source: bool = False  # its layer_ratios are the same seed's ratio source's fractions
    is_ratio_source: bool = False  # the ratio source (bmrs_n at its defaults unless --widths-of): others prune at its fractions
    ratio_source: str = RATIO_SOURCE  # the spec of the method whose fractions an at_ratio_source method prunes at
    sparsify: bool = False  # BMR on weights after training (sparsify.enabled): bmr_weights, or name+bmr_weights

    @property
    def name(self) -> str:
        """As ``FlowConfig.method`` names it: ``none``, ``bmrs_u``, ``bmr_weights``, ``bmrs_u+bmr_weights``."""
        structured = None if self.criterion is None else self.criterion["name"]
        if not self.sparsify:
            return DENSE_METHOD if structured is None else structured
        return WEIGHT_METHOD if structured is None else f"{structured}+{WEIGHT_METHOD}"

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "label": self.label, "method": self.name, "criterion": self.criterion,
                "sparsify": self.sparsify, "layer_ratios_from": self.ratio_source if self.at_ratio_source else None,
                "ratio_source": self.is_ratio_source}  # fmt: skip


def known_methods() -> str:
    return (
        f"known methods: {', '.join([DENSE_METHOD, *CRITERIA, WEIGHT_METHOD])}; write name:VALUE for bmrs_u's p1 "
        "(bmrs_u:8), name:key=value[,key=value] for any setting (snr:threshold=2), and a criterion's spec then "
        f"+{WEIGHT_METHOD} for structures first, then weights (bmrs_u:8+{WEIGHT_METHOD})"
    )


def _bad(spec: str, problem: str) -> ValueError:
    return ValueError(f"--methods {spec!r}: {problem}; {known_methods()}")


def _value(spec: str, key: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise _bad(spec, f"the value of {key!r} is not valid YAML ({str(error).splitlines()[0]})") from None


def _settings(spec: str, name: str, rest: str) -> dict[str, Any]:
    if not rest.strip():
        raise _bad(spec, "nothing follows ':'; write the criterion's name alone for its defaults")
    if "=" not in rest:
        if name not in SHORTHAND:
            raise _bad(
                spec, f"name:VALUE is shorthand for {', '.join(f'{c} {s}' for c, s in SHORTHAND.items())} only; write "
                f"{name}:key=value with one of its settings {sorted(criterion_settings(name))}",
            )  # fmt: skip
        return {SHORTHAND[name]: _value(spec, SHORTHAND[name], rest)}
    settings: dict[str, Any] = {}
    for part in _SETTING_SPLIT.split(rest):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise _bad(spec, f"{part.strip()!r} is not key=value")
        if key in settings:
            raise _bad(spec, f"sets {key!r} twice")
        settings[key] = _value(spec, key, raw)
    return settings


def with_criterion(base: FlowConfig, criterion: dict[str, Any] | None, *, sparsify: bool | None = None) -> FlowConfig:
    """``base`` with ``train.criterion`` replaced (and ``sparsify.enabled``, unless None), built from
    its config tree exactly as ``--set train.criterion=...`` builds it (``ConfigError`` naming the
    setting when it is bad)."""
    tree = base.to_dict()
    tree["train"]["criterion"] = None if criterion is None else dict(criterion)
    if sparsify is not None:
        tree["sparsify"]["enabled"] = sparsify
    return flow_config_from_dict(json.loads(json.dumps(tree)))


def _label_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def parse_method(spec: str, base: FlowConfig) -> Method:
    """One ``--methods`` spec as a method of ``base``'s flow; ``ValueError`` (one line naming the
    spec and the known methods) when it names nothing or sets something the criterion refuses."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad(str(spec), "empty method")
    text = spec.strip()
    structured, plus, tail = text.rpartition("+")
    if not plus or tail.strip() != WEIGHT_METHOD:
        return _parse_one(spec, text, base)
    structured = structured.strip()
    if not structured:
        raise _bad(spec, f"nothing precedes '+{WEIGHT_METHOD}'; write {WEIGHT_METHOD} alone for the dense model's weights")
    if structured in (DENSE_METHOD, WEIGHT_METHOD):
        raise _bad(spec, f"write {WEIGHT_METHOD} alone: it is BMR on the dense model's weights")
    if structured.rpartition("+")[2].strip() == WEIGHT_METHOD:
        raise _bad(spec, f"names +{WEIGHT_METHOD} twice")
    method = _parse_one(spec, structured, base)
    # The structured method's settings are checked above; BMR's own are the flow's sparsify section.
    return replace(method, spec=text, label=f"{method.label}+{WEIGHT_METHOD}", sparsify=True)


def _parse_one(spec: str, text: str, base: FlowConfig) -> Method:
    """``text`` (the spec, or its part before ``+bmr_weights``) as a method; errors name ``spec``."""
    name, colon, rest = text.partition(":")
    name = name.strip()
    if name == WEIGHT_METHOD:
        if colon:
            raise _bad(spec, f"{WEIGHT_METHOD!r} has no settings here; its settings are the flow's sparsify section "
                             "(--set sparsify.key=value)")  # fmt: skip
        with_criterion(base, None, sparsify=True)
        return Method(spec=text, label=WEIGHT_METHOD, criterion=None, sparsify=True)
    if name == DENSE_METHOD:
        if colon:
            raise _bad(spec, f"{DENSE_METHOD!r} (the dense model) has no settings")
        with_criterion(base, None)
        return Method(spec=text, label=DENSE_METHOD, criterion=None)
    if name not in CRITERIA:
        raise _bad(spec, f"unknown method {name!r}")
    settings = _settings(spec, name, rest) if colon else {}
    try:
        config = with_criterion(base, {"name": name, **settings})
    except ConfigError as error:
        raise _bad(spec, str(error)) from None
    built = config.to_dict()["train"]["criterion"]  # every setting, as the run's config.json records it
    order = list(criterion_settings(name))
    given = sorted(settings, key=order.index)
    label = _UNSAFE.sub("_", "-".join([name, *(f"{key}={_label_value(built[key])}" for key in given)]))
    fixed = any(key in settings for key in RATIO_SETTINGS)
    at_ratio_source = "layer_ratios" in order and not fixed
    return Method(spec=text, label=label, criterion={"name": name, **settings}, at_ratio_source=at_ratio_source)


def parse_methods(specs: Sequence[str], base: FlowConfig, ratio_source: str = RATIO_SOURCE) -> tuple[list[Method], Method | None]:
    """The methods in run order (dense first, methods at the ratio source's fractions last) and the
    ratio source that had to be added for them (None when listed or not needed). ``ratio_source`` is
    the spec of the method whose per-layer fractions l2, grad and snr_ratio prune at (``--widths-of``)."""
    if not specs:
        raise ValueError(f"--methods needs at least one method, e.g. --methods none bmrs_n l2; {known_methods()}")
    methods = [parse_method(spec, base) for spec in specs]
    def key(method: Method) -> tuple[str, bool, bool]:
        criterion = with_criterion(base, method.criterion).to_dict()["train"]["criterion"]
        return json.dumps(criterion, sort_keys=True), method.at_ratio_source, method.sparsify

    seen: dict[tuple[str, bool, bool], Method] = {}
    for method in methods:
        first = seen.get(key(method)) or next((m for m in seen.values() if m.label == method.label), None)
        if first is not None:
            raise ValueError(f"--methods lists {first.spec!r} and {method.spec!r}, which are the same method; list it once")
        if method.label == DENSE_FOLDER:
            raise ValueError(f"--methods {method.spec!r}: its folder would be {DENSE_FOLDER!r}, which holds the shared dense baselines")
        seen[key(method)] = method
    source = _ratio_source(ratio_source, base)
    methods = [replace(m, ratio_source=source.spec) if m.at_ratio_source else m for m in methods]
    listed = seen.get(key(source))
    added = None
    if listed is not None:
        methods[methods.index(listed)] = replace(listed, is_ratio_source=True)
    elif any(m.at_ratio_source for m in methods):
        added = replace(source, is_ratio_source=True)
        methods.append(added)
    dense = [m for m in methods if m.criterion is None]
    later = [m for m in methods if m.at_ratio_source]
    return dense + [m for m in methods if m not in dense and m not in later] + later, added


def _ratio_source(spec: str, base: FlowConfig) -> Method:
    """``--widths-of``'s method: one that prunes structures by itself, so it has fractions to give."""
    try:
        source = parse_method(spec, base)
    except ValueError as error:
        raise ValueError(f"--widths-of: {error}") from None
    if source.criterion is None or source.sparsify or source.at_ratio_source:
        raise ValueError(f"--widths-of {spec!r}: l2, grad and snr_ratio take their per-layer fractions from a method that prunes "
                         "structures by itself, e.g. bmrs_n or bmrs_u:4 (not none, bmr_weights, +bmr_weights, l2, grad or snr_ratio)")  # fmt: skip
    return source


def method_config(base: FlowConfig, method: Method, seed: int, layer_ratios: dict[str, float] | None = None) -> FlowConfig:
    """The config of ``method``'s run for ``seed``: ``base`` with the method's criterion (and, for a
    method at the ratio source's fractions, ``layer_ratios``), ``sparsify.enabled`` and ``train.seed``;
    nothing else changes, so every run of a seed trains the same dense baseline."""
    criterion = method.criterion
    if method.at_ratio_source:
        if layer_ratios is None:
            raise ValueError(f"method {method.spec!r} needs the per-layer fractions of the {method.ratio_source!r} run of seed {seed}")
        criterion = {**criterion, "layer_ratios": dict(layer_ratios)}
    config = with_criterion(base, criterion, sparsify=method.sparsify)
    return replace(config, train=replace(config.train, seed=seed))
