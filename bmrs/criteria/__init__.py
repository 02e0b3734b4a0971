"""Pruning criteria: the protocol and registry (``base``), the Bayesian model reduction criteria
BMRS_N and BMRS_U (``bmr``) and the paper's baselines SNR, E[theta], L2 and gradient, with SNR
at fixed fractions (``baselines``).

A criterion is its own configuration: ``BMRSLogUniform(p1=4)`` in Python, ``{name: bmrs_u, p1: 4}``
or ``bmrs_u`` in ``flows.yaml`` (``criterion_from``)."""
from bmrs.criteria.base import (
    CRITERIA, Criterion, Decision, GroupView, LayerView, as_group, build_criterion, group_views, changed_settings, check_criterion, complete_settings, criterion_from,
    criterion_name, criterion_settings, ranking_criteria, register_criterion, settings_of,
)  # fmt: skip
# BMR first: the registry's order is the order reports and default criteria lists show.
from bmrs.criteria.bmr import BMRSLogNormal, BMRSLogUniform  # isort: skip
from bmrs.criteria.baselines import ExpectedNoise, GradientNorm, IncomingWeightNorm, SignalToNoise, SignalToNoiseFraction, incoming_weight_norm  # isort: skip

__all__ = [
    "CRITERIA", "BMRSLogNormal", "BMRSLogUniform", "Criterion", "Decision", "ExpectedNoise", "GradientNorm",
    "GroupView", "IncomingWeightNorm", "LayerView", "as_group", "group_views", "SignalToNoise", "SignalToNoiseFraction", "build_criterion", "changed_settings", "check_criterion", "complete_settings",
    "criterion_from", "criterion_name", "criterion_settings", "incoming_weight_norm", "ranking_criteria", "register_criterion", "settings_of",
]  # fmt: skip
