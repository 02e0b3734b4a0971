"""Pruning criteria: the shared protocol over the whole registry, then each rule's own behaviour."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from bmrs.criteria import (
    CRITERIA,
    BMRSLogNormal,
    BMRSLogUniform,
    Decision,
    LayerView,
    build_criterion,
    criterion_settings,
    ranking_criteria,
    register_criterion,
)
from bmrs.nn.noise import LogNormalNoise
from bmrs.math.reduction import delta_f_lognormal

# Eight structures, the third and sixth already pruned.
UNITS = [(0.0, -5.0), (-19.0, math.log(0.5)), (-5.0, 0.0), (0.5, -3.0), (-10.0, 0.5), (-2.0, -1.0), (-19.5, 0.0), (-0.5, -2.0)]
PRUNED = [2, 5]


def make_noise(units, pruned=()) -> LogNormalNoise:
    noise = LogNormalNoise(len(units))
    with torch.no_grad():
        noise.mu.copy_(torch.tensor([u[0] for u in units]))
        noise.log_sigma.copy_(torch.tensor([u[1] for u in units]))
    mask = torch.zeros(len(units), dtype=torch.bool)
    mask[list(pruned)] = True
    noise.prune_(mask)
    return noise


def make_view(name: str, noise: LogNormalNoise, source: nn.Module | None = None, grad_sq=None) -> LayerView:
    if source is None:
        torch.manual_seed(0)
        source = nn.Linear(5, noise.num_structures)
    return LayerView(name, noise, source, grad_sq)


# The criteria that remove a fraction per layer (every one with ``layer_ratios``).
FRACTION_CRITERIA = sorted(name for name in CRITERIA if "layer_ratios" in criterion_settings(name))


def decide(criterion_name: str, noise: LogNormalNoise, source: nn.Module | None = None, **settings) -> Decision:
    criterion = build_criterion(criterion_name, **settings)
    grad_sq = None
    if criterion.needs_gradients:
        grad_sq = torch.rand(noise.num_structures, generator=torch.Generator().manual_seed(1)) + 0.1
    return criterion.decide(make_view("layer", noise, source, grad_sq))


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_protocol(name):
    noise = make_noise(UNITS, PRUNED)
    mask_before = noise.mask.clone()
    decision = decide(name, noise)
    assert isinstance(decision, Decision)
    assert decision.scores.shape == (8,) and decision.scores.dtype == torch.float64
    assert decision.prune.shape == (8,) and decision.prune.dtype == torch.bool
    assert decision.prune[PRUNED].all(), "already-pruned structures must stay pruned"
    assert (decision.scores[PRUNED] == -math.inf).all()
    alive = noise.mask
    assert torch.isfinite(decision.scores[alive]).all()
    assert torch.equal(noise.mask, mask_before), "deciding must not change the layer"
    assert not decision.prune.all(), "the defaults must not wipe out this layer"
    again = decide(name, noise)
    assert torch.equal(again.prune, decision.prune) and torch.equal(again.scores, decision.scores)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_settings_round_trip_and_unknown_setting(name):
    settings = criterion_settings(name)
    assert isinstance(settings, dict)
    assert dataclasses.is_dataclass(build_criterion(name, **settings))
    with pytest.raises(ValueError, match="no_such_setting"):
        build_criterion(name, no_such_setting=1)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_nothing_alive_stays_nothing_alive(name):
    noise = make_noise(UNITS[:3], pruned=[0, 1, 2])
    decision = decide(name, noise)
    assert decision.prune.all() and (decision.scores == -math.inf).all()


def test_unknown_criterion():
    with pytest.raises(ValueError, match="unknown pruning criterion"):
        build_criterion("no_such_criterion")
    with pytest.raises(ValueError):
        criterion_settings("no_such_criterion")


def test_registry_rejects_duplicates_and_non_dataclasses():
    before = dict(CRITERIA)
    with pytest.raises(ValueError):

        @register_criterion("bmrs_n")
        @dataclasses.dataclass(frozen=True)
        class Twice:
            pass

    with pytest.raises(TypeError):

        @register_criterion("__test_not_a_dataclass__")
        class Plain:
            pass

    assert CRITERIA == before


def test_bmrs_n_prunes_near_zero_keeps_near_one():
    noise = make_noise([(-19.0, math.log(0.5)), (0.0, -5.0)])
    decision = decide("bmrs_n", noise)
    assert decision.prune.tolist() == [True, False]
    expected = delta_f_lognormal(noise.mu.detach().double(), noise.sigma().detach().double(), mu_p=-20.0, sigma_p=1e-6)
    assert torch.allclose(decision.scores, -expected, rtol=1e-12)


def test_bmrs_n_settings():
    noise = make_noise([(-19.0, math.log(0.5)), (-12.0, 0.0), (0.0, -5.0)])
    mu, sigma = noise.mu.detach().double(), noise.sigma().detach().double()
    delta_f = delta_f_lognormal(mu, sigma, mu_p=-20.0, sigma_p=1e-6)
    # margin moves the threshold: dF >= margin
    margin = float(delta_f[1]) - 1e-9
    assert decide("bmrs_n", noise, margin=margin).prune.tolist() == (delta_f >= margin).tolist()
    assert decide("bmrs_n", noise, margin=1e6).prune.tolist() == [False, False, False]
    # an explicit mu_p and sigma_p are used as given
    other = delta_f_lognormal(mu, sigma, mu_p=-15.0, sigma_p=0.5)
    decision = decide("bmrs_n", noise, mu_p=-15.0, sigma_p=0.5)
    assert torch.allclose(decision.scores, -other, rtol=1e-12)
    assert decision.prune.tolist() == (other >= 0).tolist()


def test_bmrs_n_follows_the_layer_bounds():
    noise = LogNormalNoise(2, log_a=-10.0, log_b=-1.0)
    with torch.no_grad():
        noise.mu.copy_(torch.tensor([-9.5, -1.0]))
        noise.log_sigma.copy_(torch.tensor([math.log(0.5), -4.0]))
    expected = delta_f_lognormal(
        noise.mu.detach().double(), noise.sigma().detach().double(), mu_p=-10.0, sigma_p=1e-6, log_a=-10.0, log_b=-1.0
    )
    decision = decide("bmrs_n", noise)
    assert torch.allclose(decision.scores, -expected, rtol=1e-12)
    assert decision.prune.tolist() == [True, False]


def test_bmrs_u_prunes_inside_reduced_support():
    # 2^-23 .. 2^-8 is phi in [-15.9, -5.5]: a posterior well inside is better explained by it.
    noise = make_noise([(-10.0, math.log(0.5)), (0.0, -5.0), (-19.5, math.log(0.2))])
    assert decide("bmrs_u", noise).prune.tolist() == [True, False, False]
    assert decide("bmrs_u", noise, p1=4.0).prune.tolist() == [True, False, False]
    with pytest.raises(ValueError):
        decide("bmrs_u", noise, p1=23.0)


def test_snr_threshold():
    noise = make_noise(UNITS, PRUNED)
    snr = noise.snr().detach().double()
    alive = noise.mask
    threshold = float(snr[alive].median())
    decision = decide("snr", noise, threshold=threshold)
    assert torch.equal(decision.prune[alive], snr[alive] < threshold)
    assert torch.allclose(decision.scores[alive], snr[alive])
    assert decide("snr", noise, threshold=0.0).prune.tolist() == (~alive).tolist()
    assert decide("snr", noise, threshold=1e12).prune.all()
    # default threshold 1: unit 0 (sigma = e^-5 at theta ~ 1, SNR ~ 250) kept; unit 4 (sigma = e^0.5) pruned
    default = decide("snr", noise)
    assert not default.prune[0] and default.prune[4]


def test_etheta_threshold():
    noise = make_noise(UNITS, PRUNED)
    mean = noise.mean().detach().double()
    decision = decide("etheta", noise)
    expected = (mean < 0.1) | ~noise.mask
    assert torch.equal(decision.prune, expected)
    assert decision.prune[[1, 4, 6]].all() and not decision.prune[[0, 3, 7]].any()
    assert decide("etheta", noise, threshold=0.0).prune.tolist() == (~noise.mask).tolist()


def _linear_with_row_norms(norms: list[float]) -> nn.Linear:
    layer = nn.Linear(4, len(norms))
    with torch.no_grad():
        direction = torch.randn(len(norms), 4, generator=torch.Generator().manual_seed(3))
        layer.weight.copy_(direction / direction.norm(dim=1, keepdim=True) * torch.tensor(norms).unsqueeze(1))
    return layer


NORMS = [5.0, 1.0, 7.0, 3.0, 9.0, 2.0, 8.0, 4.0, 6.0, 10.0]


def test_l2_prunes_smallest_rows():
    source = _linear_with_row_norms(NORMS)
    noise = make_noise([(0.0, -5.0)] * 10)
    decision = decide("l2", noise, source=source, ratio=0.3)
    assert sorted(torch.nonzero(decision.prune).flatten().tolist()) == [1, 3, 5]
    assert torch.allclose(decision.scores, torch.tensor(NORMS, dtype=torch.float64), rtol=1e-6)
    # The ratio counts structures already gone: with the largest pruned, only two more go.
    noise = make_noise([(0.0, -5.0)] * 10, pruned=[9])
    decision = decide("l2", noise, source=source, ratio=0.3)
    assert sorted(torch.nonzero(decision.prune).flatten().tolist()) == [1, 5, 9]
    # A ratio already reached prunes nothing new; ratio 0 prunes nothing.
    noise = make_noise([(0.0, -5.0)] * 10, pruned=[0, 2, 4, 6])
    assert sorted(torch.nonzero(decide("l2", noise, source=source, ratio=0.3).prune).flatten().tolist()) == [0, 2, 4, 6]
    assert not decide("l2", make_noise([(0.0, -5.0)] * 10), source=source, ratio=0.0).prune.any()
    # Never the whole layer: the largest row survives a ratio near 1.
    decision = decide("l2", make_noise([(0.0, -5.0)] * 10), source=source, ratio=0.99)
    assert (~decision.prune).nonzero().flatten().tolist() == [9]


def test_l2_on_conv_filters():
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        for index, scale in enumerate([3.0, 0.5, 2.0, 1.0]):
            conv.weight[index].fill_(scale)
    decision = decide("l2", make_noise([(0.0, -5.0)] * 4), source=conv, ratio=0.5)
    assert decision.prune.tolist() == [False, True, False, True]
    assert torch.allclose(decision.scores, torch.tensor([3.0, 0.5, 2.0, 1.0], dtype=torch.float64) * math.sqrt(18))


def test_grad_uses_gradient_norm_and_requires_it():
    criterion = build_criterion("grad", ratio=0.25)
    assert criterion.needs_gradients
    noise = make_noise([(0.0, -5.0)] * 8, pruned=[7])
    grad_sq = torch.tensor([4.0, 0.25, 9.0, 1.0, 16.0, 0.01, 2.0, 0.0])
    decision = criterion.decide(make_view("layer", noise, grad_sq=grad_sq))
    assert sorted(torch.nonzero(decision.prune).flatten().tolist()) == [5, 7]
    assert torch.allclose(decision.scores[:7], grad_sq[:7].double().sqrt())
    with pytest.raises(ValueError, match="gradient"):
        criterion.decide(make_view("layer", noise))


def _noise_ranked_like(values: list[float]) -> LogNormalNoise:
    """Noise whose SNR increases with ``values`` (sigma = 1 / value at mu = 0)."""
    return make_noise([(0.0, -math.log(value)) for value in values])


def test_snr_ratio_ranks_by_snr_at_a_fraction():
    noise = _noise_ranked_like(NORMS)
    snr = noise.snr().detach().double()
    decision = decide("snr_ratio", noise, ratio=0.3)
    assert sorted(torch.nonzero(decision.prune).flatten().tolist()) == [1, 3, 5]
    assert torch.equal(decision.scores, decide("snr", noise).scores), "its scores are snr's"
    assert torch.equal(decision.scores, snr)
    # The fraction counts the whole layer: with the highest-SNR unit gone, two more go.
    noise = make_noise([(0.0, -math.log(value)) for value in NORMS], pruned=[9])
    assert sorted(torch.nonzero(decide("snr_ratio", noise, ratio=0.3).prune).flatten().tolist()) == [1, 5, 9]


def test_ranking_criteria_leave_out_only_the_ones_that_reuse_a_ranking():
    ranking = ranking_criteria()
    assert "snr_ratio" not in ranking and CRITERIA["snr_ratio"].same_ranking_as in ranking
    assert list(ranking) == [name for name in CRITERIA if name != "snr_ratio"], "registry order is kept"


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
@pytest.mark.parametrize("name", FRACTION_CRITERIA)
def test_ratio_out_of_range(name, ratio):
    with pytest.raises(ValueError):
        build_criterion(name, ratio=ratio)


@pytest.mark.parametrize("name", FRACTION_CRITERIA)
def test_layer_ratios_default_is_unset(name):
    assert criterion_settings(name)["layer_ratios"] is None


@pytest.mark.parametrize("name", FRACTION_CRITERIA)
def test_layer_ratios_override_ratio_per_layer(name):
    criterion = build_criterion(name, ratio=0.9, layer_ratios={"wide": 0.3, "narrow": 0.0})
    source = _linear_with_row_norms(NORMS)
    grad_sq = torch.tensor(NORMS, dtype=torch.float64) ** 2  # the same ranking through the gradient route
    wide = criterion.decide(make_view("wide", _noise_ranked_like(NORMS), source, grad_sq))  # and through SNR
    assert sorted(torch.nonzero(wide.prune).flatten().tolist()) == [1, 3, 5]
    narrow = criterion.decide(make_view("narrow", _noise_ranked_like(NORMS), source, grad_sq))
    assert not narrow.prune.any(), "ratio=0.9 must not apply to a layer that layer_ratios names"


@pytest.mark.parametrize("name", FRACTION_CRITERIA)
def test_layer_ratios_missing_layer_names_it_and_the_fix(name):
    criterion = build_criterion(name, layer_ratios={"known": 0.5})
    view = make_view("absent", make_noise([(0.0, -5.0)] * 4), grad_sq=torch.ones(4))
    with pytest.raises(ValueError, match=r"'absent'.*add 'absent' to layer_ratios"):
        criterion.decide(view)


@pytest.mark.parametrize("bad", [1.0, -0.2, 3])
@pytest.mark.parametrize("name", FRACTION_CRITERIA)
def test_layer_ratios_values_are_checked(name, bad):
    with pytest.raises(ValueError, match=r"layer_ratios\['b'\].*\[0, 1\)"):
        build_criterion(name, layer_ratios={"a": 0.5, "b": bad})


def test_layer_ratios_type_errors():
    with pytest.raises(TypeError, match="layer_ratios"):
        build_criterion("l2", layer_ratios=[0.5])
    with pytest.raises(TypeError, match=r"layer_ratios\['a'\]"):
        build_criterion("l2", layer_ratios={"a": "half"})


def test_layer_ratios_reach_every_noise_layer_of_a_model():
    from bmrs.models import ModelConfig, NoiseInit, build_network
    from bmrs.nn.noise import noise_modules
    from bmrs.train.pruning import prune_step

    model = build_network(ModelConfig("mlp", hidden_width=10, hidden_layers=2), (1, 4, 4), 3, noise=NoiseInit())
    names = list(noise_modules(model))
    wanted = {names[0]: 0.2, names[1]: 0.7}
    prune_step(model, build_criterion("l2", layer_ratios=wanted), {}, min_alive=1)
    alive = {name: int(noise.mask.sum()) for name, noise in noise_modules(model).items()}
    assert alive == {names[0]: 8, names[1]: 3}


@pytest.mark.parametrize(
    "name, settings, error, fragment",
    [
        ("bmrs_u", {"p1": "abc"}, TypeError, r"'bmrs_u': p1 must be a number with 0 <= p1 < p2.*got 'abc'"),
        ("bmrs_u", {"p1": -3}, ValueError, r"p1 must be a number with 0 <= p1 < p2 \(p2 = 23;.*got -3"),
        ("bmrs_u", {"p1": 23}, ValueError, r"p1 must be a number with 0 <= p1 < p2"),
        ("bmrs_u", {"p2": float("inf")}, ValueError, r"p2 must be a finite number > p1"),
        ("bmrs_u", {"p1": True}, TypeError, r"p1 must be"),
        ("bmrs_n", {"sigma_p": 0}, ValueError, r"sigma_p must be a finite number > 0"),
        ("bmrs_n", {"sigma_p": "tiny"}, TypeError, r"sigma_p must be"),
        ("bmrs_n", {"mu_p": [1]}, TypeError, r"mu_p must be a finite number .* or null"),
        ("bmrs_n", {"margin": float("nan")}, ValueError, r"margin must be a finite number"),
        ("snr", {"threshold": -1}, ValueError, r"threshold must be a finite number >= 0"),
        ("etheta", {"threshold": 2}, ValueError, r"threshold must be a number in \[0, 1\]"),
        ("l2", {"ratio": "half"}, TypeError, r"ratio must be a number in \[0, 1\)"),
        ("grad", {"ratio": 1}, ValueError, r"ratio must be a number in \[0, 1\)"),
    ],
)
def test_bad_settings_name_the_setting_and_what_it_may_be(name, settings, error, fragment):
    with pytest.raises(error, match=fragment):
        build_criterion(name, **settings)


def test_settings_spelled_as_strings_are_numbers():
    # YAML 1.1 reads 1e-6 (no dot) as a string.
    assert build_criterion("bmrs_n", sigma_p="1e-6").sigma_p == 1e-6
    assert build_criterion("bmrs_u", p1=4).p1 == 4.0
    assert build_criterion("l2", layer_ratios={0: 0.5}).ratio_for("0") == 0.5


def test_bmrs_u_reduced_support_must_fit_the_prior():
    from bmrs.criteria import check_criterion

    check_criterion(BMRSLogUniform(p2=28), log_a=-20.0, log_b=0.0)  # 2^-28 = e^-19.4: inside
    with pytest.raises(ValueError, match=r"'bmrs_u': p2 = 29 .*noise.log_a.*choose p2 <= 28.85"):
        check_criterion(BMRSLogUniform(p2=29), log_a=-20.0, log_b=0.0)
    with pytest.raises(ValueError, match=r"p1 = 1 .*noise.log_b.*choose p1 >= 1.443"):
        check_criterion(BMRSLogUniform(p1=1), log_a=-20.0, log_b=-1.0)
    check_criterion(BMRSLogNormal(), log_a=-20.0, log_b=0.0)  # no prior-dependent settings


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_is_one_value_in_every_form(name):
    from bmrs.criteria import changed_settings, criterion_from, criterion_name, settings_of

    built = build_criterion(name)
    assert criterion_from(name) == built == criterion_from({"name": name}) and criterion_from(built) is built
    assert criterion_name(built) == name and settings_of(built) == criterion_settings(name)
    assert changed_settings(built) == {}
    record = {"name": name, **settings_of(built)}
    assert criterion_from(record) == built  # what config.json and cached results hold reads back


def test_criterion_forms_that_are_not_a_criterion_say_what_one_is():
    from bmrs.criteria import changed_settings, complete_settings, criterion_from

    with pytest.raises(ValueError, match="for the unpruned model write null"):
        criterion_from("none")
    with pytest.raises(ValueError, match="needs its name"):
        criterion_from({"p1": 4})
    with pytest.raises(TypeError, match="a criterion is a name such as 'bmrs_n'"):
        criterion_from(4)
    assert changed_settings(BMRSLogUniform(p1=4)) == {"p1": 4.0}
    # Records that kept only the settings a user gave read as records that keep them all.
    assert complete_settings("bmrs_u", {"p1": 8.0}) == {"p1": 8.0, "p2": 23.0}
