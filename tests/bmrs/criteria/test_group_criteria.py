"""Coupled groups: one decision per channel of a group, for every criterion.

The BMR identity ``log E_q[prod_i p~_i / p_i] = sum_i dF_i`` is checked against a direct k-dimensional
quadrature of the joint integral (k = 2, 3), through the criteria themselves, not the closed form."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate
from torch import nn

from bmrs.criteria import CRITERIA, GroupView, LayerView, as_group, build_criterion, group_views
from bmrs.nn.noise import LogNormalNoise
from bmrs_reference import log_npdf, log_z

LOG_A, LOG_B = -20.0, 0.0


def noise_with(mu: list[float], sigma: list[float]) -> LogNormalNoise:
    noise = LogNormalNoise(len(mu), log_a=LOG_A, log_b=LOG_B)
    with torch.no_grad():
        noise.mu.copy_(torch.tensor(mu))
        noise.log_sigma.copy_(torch.tensor(sigma).log())
    return noise


def group_of(*noises: LogNormalNoise, sources=None, grad_sq=None) -> GroupView:
    members = tuple(
        LayerView(f"m{i}", noise, sources[i] if sources else nn.Linear(3, noise.num_structures), grad_sq[i] if grad_sq else None)
        for i, noise in enumerate(noises)
    )  # fmt: skip
    return GroupView("m0", members)


def joint_log_evidence_ratio(posteriors, log_ratio_density, bounds) -> float:
    """``log of the k-dim integral of prod_i q_i(phi_i) * prod_i p~_i(phi_i) / p_i(phi_i)``, computed
    as one joint integral (not as a product of 1-d ones): what the group identity claims to equal."""
    log_zq = [log_z(mu, sigma, LOG_A, LOG_B) for mu, sigma in posteriors]

    def integrand(*phis: float) -> float:
        total = 0.0
        for (mu, sigma), zq, phi in zip(posteriors, log_zq, phis):
            total += log_npdf(phi, mu, sigma) - zq + log_ratio_density(phi)
        return math.exp(total)

    value, _ = integrate.nquad(integrand, bounds, opts={"epsabs": 0.0, "epsrel": 1e-8, "limit": 100})
    return math.log(value)


# Posteriors wide enough that the joint integrand is smooth for a k-dimensional quadrature.
POSTERIORS = [(-4.0, 1.5), (-9.0, 2.0), (-1.0, 0.8)]


@pytest.mark.parametrize("k", [2, 3])
def test_bmrs_n_group_score_is_the_joint_reduction_of_the_group(k):
    mu_p, sigma_p = -6.0, 1.5  # a wide reduced prior, so the quadrature needs no spike handling
    posteriors = POSTERIORS[:k]
    # The integrand is concentrated where q_i p~_i peaks: integrate over +-12 of those widths.
    log_zp = log_z(mu_p, sigma_p, LOG_A, LOG_B)
    ratio = lambda phi: log_npdf(phi, mu_p, sigma_p) - log_zp + math.log(LOG_B - LOG_A)  # noqa: E731
    bounds = []
    for mu, s in posteriors:
        width = (1.0 / s**2 + 1.0 / sigma_p**2) ** -0.5
        centre = width**2 * (mu / s**2 + mu_p / sigma_p**2)
        bounds.append((max(LOG_A, centre - 12 * width), min(LOG_B, centre + 12 * width)))
    expected = joint_log_evidence_ratio(posteriors, ratio, bounds)
    group = group_of(*(noise_with([mu], [s]) for mu, s in posteriors))
    decision = build_criterion("bmrs_n", mu_p=mu_p, sigma_p=sigma_p).decide(group)
    assert float(-decision.scores[0]) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert bool(decision.prune[0]) == (expected >= 0)


@pytest.mark.parametrize("k", [2, 3])
def test_bmrs_u_group_score_is_the_joint_reduction_of_the_group(k):
    p1, p2 = 4.0, 23.0
    lo, hi = -p2 * math.log(2.0), -p1 * math.log(2.0)
    ratio = lambda phi: math.log(LOG_B - LOG_A) - math.log(hi - lo)  # noqa: E731  (zero outside [lo, hi])
    posteriors = POSTERIORS[:k]
    expected = joint_log_evidence_ratio(posteriors, ratio, [(lo, hi)] * k)
    group = group_of(*(noise_with([mu], [s]) for mu, s in posteriors))
    decision = build_criterion("bmrs_u", p1=p1, p2=p2).decide(group)
    assert float(-decision.scores[0]) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_a_confident_member_carries_the_group_and_not_every_member_must_agree():
    criterion = build_criterion("bmrs_n")
    # Channel 0: member 0 is sure it can go (dF ~ +4.1), member 1 leans to keep it (dF ~ -2.3).
    # Channel 1: member 0 leans to prune (dF ~ +0.1), member 1 is sure it must stay.
    sure = noise_with([-19.9, -18.0], [0.1, 1.0])
    lean = noise_with([-19.0, 0.0], [0.3, 0.05])
    alone = [criterion.decide(LayerView("x", noise, nn.Linear(3, 2))) for noise in (sure, lean)]
    together = criterion.decide(group_of(sure, lean))
    assert alone[0].prune.tolist() == [True, True] and alone[1].prune.tolist() == [False, False]
    assert torch.allclose(together.scores, alone[0].scores + alone[1].scores)
    assert together.prune.tolist() == [True, False]


def test_threshold_criteria_remove_a_channel_only_when_every_member_would():
    strong, weak = noise_with([0.0, -15.0], [0.05, 3.0]), noise_with([-15.0, -15.0], [3.0, 3.0])
    for name in ("snr", "etheta"):
        decision = build_criterion(name).decide(group_of(strong, weak))
        assert decision.prune.tolist() == [False, True], name


def test_fraction_criteria_score_the_norm_over_the_whole_group():
    first, second = nn.Linear(2, 3, bias=False), nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
        second.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 2.5], [2.0, 0.0]]))
    noises = (noise_with([0.0] * 3, [0.1] * 3), noise_with([0.0] * 3, [0.1] * 3))
    l2 = build_criterion("l2", ratio=0.34).decide(group_of(*noises, sources=[first, second]))
    assert l2.scores.tolist() == pytest.approx([3.0, 2.5, math.sqrt(5.0)])
    assert l2.prune.tolist() == [False, False, True]
    grad = build_criterion("grad", ratio=0.34).decide(group_of(*noises, grad_sq=[torch.tensor([1.0, 4.0, 0.0]), torch.tensor([3.0, 0.0, 1.0])]))
    assert grad.scores.tolist() == pytest.approx([2.0, 2.0, 1.0])
    assert grad.prune.tolist() == [False, False, True]


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_a_group_of_one_decides_as_the_layer_alone(name):
    noise = noise_with([0.0, -19.0, -3.0, -8.0], [0.05, 0.5, 1.0, 0.7])
    source = nn.Linear(3, 4)
    grad_sq = torch.tensor([1.0, 0.1, 2.0, 0.5])
    view = LayerView("layer", noise, source, grad_sq)
    criterion = build_criterion(name)
    alone, grouped = criterion.decide(view), criterion.decide(as_group(view))
    assert torch.equal(alone.prune, grouped.prune) and torch.equal(alone.scores, grouped.scores)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_pruned_channels_of_a_group_stay_pruned(name):
    noises = (noise_with([0.0] * 4, [0.05] * 4), noise_with([0.0] * 4, [0.05] * 4))
    for noise in noises:
        noise.prune_(torch.tensor([False, True, False, False]))
    group = group_of(*noises, grad_sq=[torch.ones(4), torch.ones(4)])
    decision = build_criterion(name).decide(group)
    assert bool(decision.prune[1]) and decision.scores[1] == -math.inf


def test_group_views_follow_the_model_groups():
    from layer_patterns import build_pattern
    from bmrs.models.structures import analyse_structures
    from bmrs.nn.insert import insert_noise

    model, shape = build_pattern("resnet_blocks", seed=0)
    insert_noise(model, analyse_structures(model, torch.randn(2, *shape)).default_points())
    views = group_views(model)
    assert [(view.name, [member.name for member in view.members]) for view in views] == [
        ("bn.noise", ["bn.noise", "block1.bn2.noise", "block2.bn2.noise"]),
        ("block1.bn1.noise", ["block1.bn1.noise"]),
        ("block2.bn1.noise", ["block2.bn1.noise"]),
    ]
    assert [member.source for member in views[0].members] == [model.stem, model.block1.conv2, model.block2.conv2]


def test_a_group_needs_members_of_one_size():
    with pytest.raises(ValueError, match="different numbers of structures"):
        group_of(noise_with([0.0, 0.0], [0.1, 0.1]), noise_with([0.0], [0.1]))
    with pytest.raises(TypeError, match="GroupView"):
        as_group("layer")
