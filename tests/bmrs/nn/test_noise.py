"""``LogNormalNoise``: KL, moments and sampling against numerical integration; masking; shapes."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from bmrs_reference import log_npdf, log_quad, log_z
from bmrs.nn.noise import LogNormalNoise, noise_modules

LOG_A, LOG_B = -20.0, 0.0

# (mu, log sigma): the init unit, ordinary ones, one pressed against theta = 1 (mu > 0), one whose
# mass underflows in float64 (mu = 2, sigma = 0.05: beta = -40), one near log a, one below it.
UNITS = [
    (0.0, -5.0),
    (-3.0, 0.0),
    (0.7, math.log(0.3)),
    (2.0, math.log(0.05)),
    (-19.5, math.log(0.5)),
    (-10.0, math.log(3.0)),
    (-25.0, 0.0),
    (-1.0, -3.0),
]


def make_noise(units, dtype=torch.float64, **kwargs) -> LogNormalNoise:
    noise = LogNormalNoise(len(units), **kwargs).to(dtype)
    with torch.no_grad():
        noise.mu.copy_(torch.tensor([u[0] for u in units], dtype=torch.float64))
        noise.log_sigma.copy_(torch.tensor([u[1] for u in units], dtype=torch.float64))
    return noise


def reference_moments(mu: float, sigma: float) -> tuple[float, float, float]:
    """(KL(q || p), E[theta], Var[theta]) by quadrature in phi."""
    lz = log_z(mu, sigma, LOG_A, LOG_B)
    log_width = math.log(LOG_B - LOG_A)

    def q(x):
        return math.exp(log_npdf(x, mu, sigma) - lz)

    # exp(k phi) N(phi; mu, s^2) = exp(k mu + k^2 s^2 / 2) N(phi; mu + k s^2, s^2)
    log_m1 = mu + sigma**2 / 2 + log_quad([(mu + sigma**2, sigma)], 0.0, LOG_A, LOG_B) - lz
    m1 = math.exp(log_m1)
    points = sorted({min(max(mu + k * sigma, LOG_A), LOG_B) for k in range(-8, 9)} - {LOG_A, LOG_B}) or None
    options = dict(points=points, epsabs=0.0, epsrel=1e-12, limit=2000)
    if abs(mu - min(max(mu, LOG_A), LOG_B)) > 3 * sigma:  # mass pressed against a bound: integrate the thin layer
        edge = LOG_B if mu > LOG_B else LOG_A
        scale = sigma**2 / abs(mu - edge)
        lo, hi = (edge - 60 * scale, edge) if edge == LOG_B else (edge, edge + 60 * scale)
        options["points"] = None
    else:
        lo, hi = LOG_A, LOG_B

    kl = integrate.quad(lambda x: q(x) * (log_npdf(x, mu, sigma) - lz + log_width), lo, hi, **options)[0]
    # Central second moment directly, so that Var is not a difference of two nearly equal numbers.
    var = integrate.quad(lambda x: q(x) * (math.exp(x) - m1) ** 2, lo, hi, **options)[0]
    return kl, m1, var


@pytest.fixture(scope="module")
def noise64() -> LogNormalNoise:
    return make_noise(UNITS).requires_grad_(False)


@pytest.mark.parametrize("index", range(len(UNITS)))
def test_kl_mean_var_match_quadrature(noise64, index):
    mu, sigma = float(noise64.mu.detach()[index]), float(noise64.sigma().detach()[index])
    kl, m1, var = reference_moments(mu, sigma)
    assert float(noise64.kl()[index]) == pytest.approx(kl, rel=1e-8, abs=1e-10)
    assert float(noise64.mean()[index]) == pytest.approx(m1, rel=1e-8)
    assert float(noise64.var()[index]) == pytest.approx(var, rel=1e-8)


def test_init_kl_closed_value():
    """mu = 0, sigma = e^-5: Z = 1/2 and the truncation terms vanish, so KL = log 20 - log(sqrt(2 pi e) e^-5 / 2)."""
    noise = LogNormalNoise(3).double()
    expected = math.log(20.0) - (0.5 * math.log(2 * math.pi * math.e) - 5.0 + math.log(0.5))
    assert torch.allclose(noise.kl(), torch.full((3,), expected, dtype=torch.float64), rtol=1e-12)


def test_snr_is_mean_over_std(noise64):
    expected = noise64.mean() / noise64.var().sqrt()
    assert torch.allclose(noise64.snr(), expected, rtol=1e-10)


def test_statistics_all_finite_float32():
    noise = make_noise(UNITS, dtype=torch.float32)
    for stat in (noise.kl().detach(), noise.mean().detach(), noise.var().detach(), noise.snr().detach()):
        assert stat.dtype == torch.float32 and torch.isfinite(stat).all()
    assert (noise.var() >= 0).all() and (noise.mean() > 0).all()


def test_statistics_finite_over_the_clamp_range():
    """float64 statistics stay finite for every (mu, log sigma) a trained layer can reach, and so do draws."""
    mu, log_sigma = torch.meshgrid(torch.linspace(-25.0, 5.0, 31), torch.linspace(-20.0, 5.0, 11), indexing="ij")
    noise = LogNormalNoise(mu.numel()).double()
    with torch.no_grad():
        noise.mu.copy_(mu.flatten())
        noise.log_sigma.copy_(log_sigma.flatten())
        for stat in (noise.kl(), noise.mean(), noise.var(), noise.snr(), noise.sample(4)):
            assert torch.isfinite(stat).all()
        assert (noise.var() >= 0).all()
        mean = noise.mean()
        bad = (mean <= 0) | (mean > 1)
        # e.g. mu = 4, log sigma = -17.5 gives E[theta] = e^2 (see test_truncnorm's clamp-floor moments)
        offending = list(zip(mu.flatten()[bad].tolist(), log_sigma.flatten()[bad].tolist(), mean[bad].tolist()))
        assert offending == [], "(mu, log sigma, E[theta]) outside (0, 1]: " + repr(offending)


def _check_sampled_moments(units, n=200_000, seed=0):
    noise = make_noise(units, dtype=torch.float32)
    torch.manual_seed(seed)
    with torch.no_grad():
        draws = noise.sample(n).double()
    assert draws.shape == (n, len(units))
    assert (draws >= math.exp(LOG_A) * (1 - 1e-6)).all() and (draws <= 1.0).all()
    mean, var = noise.mean().detach().double(), noise.var().detach().double()
    sample_mean = draws.mean(0)
    se_mean = draws.std(0) / math.sqrt(n)
    centred_sq = (draws - sample_mean) ** 2
    se_var = centred_sq.std(0) / math.sqrt(n)
    for i, unit in enumerate(units):
        assert abs(float(sample_mean[i] - mean[i])) <= 5 * float(se_mean[i]) + 1e-7 * float(mean[i]), (unit, "mean")
        assert abs(float(draws[:, i].var() - var[i])) <= 5 * float(se_var[i]) + 1e-6 * float(var[i]), (unit, "var")


def test_sampled_moments_match():
    _check_sampled_moments([(0.5, math.log(0.5)), (0.2, math.log(0.3)), (-19.5, math.log(0.5)), (-2.0, 0.0), (0.0, -5.0), (-25.0, 0.0)])


def test_sampled_moments_match_deep_in_the_tail():
    """Posteriors whose kept interval lies > 8 standard deviations into a tail: mu = 1, sigma = 0.1
    (theta pressed against 1, beta = -10), mu = 3, sigma = 0.2 (beta = -15), mu = -22, sigma = 0.2
    (alpha = +10). E[theta] is ~0.990, ~0.987 and ~e^-20; the draws must have that mean and spread."""
    _check_sampled_moments([(1.0, math.log(0.1)), (3.0, math.log(0.2)), (-22.0, math.log(0.2))])


def test_gradients_reach_parameters():
    noise = make_noise([(-1.0, -1.0), (0.3, -2.0), (-19.0, math.log(0.6))], dtype=torch.float32)
    noise.train()
    torch.manual_seed(0)
    x = torch.randn(16, 3)
    (noise(x) ** 2).sum().backward()
    for grad in (noise.mu.grad, noise.log_sigma.grad):
        assert torch.isfinite(grad).all() and (grad != 0).all()
    noise.zero_grad()
    noise.kl().sum().backward()
    for grad in (noise.mu.grad, noise.log_sigma.grad):
        assert torch.isfinite(grad).all() and (grad != 0).all()


def test_pruned_structures_are_exactly_zero():
    noise = make_noise([(-1.0, -1.0), (0.0, -5.0), (-3.0, 0.0), (-19.0, 0.0)], dtype=torch.float32)
    assert noise.prune_(torch.tensor([False, True, False, True])) == 2
    assert noise.prune_(torch.tensor([False, True, False, False])) == 0  # already gone
    assert noise.prune_(torch.zeros(4, dtype=torch.bool)) == 0
    assert noise.mask.tolist() == [True, False, True, False]  # nothing comes back
    x = torch.randn(8, 4, 3, 3, requires_grad=True)
    for train in (True, False):
        noise.train(train)
        noise.zero_grad()
        x.grad = None
        out = noise(x)
        assert (out[:, [1, 3]] == 0).all() and (out[:, [0, 2]] != 0).all()
        ((out**2).sum() + noise.kl().sum()).backward()
        assert (noise.mu.grad[[1, 3]] == 0).all() and (noise.log_sigma.grad[[1, 3]] == 0).all()
        assert (x.grad[:, [1, 3]] == 0).all()
    for stat in (noise.mean(), noise.var(), noise.snr(), noise.kl()):
        assert (stat[[1, 3]] == 0).all() and (stat[[0, 2]] > 0).all()
    with torch.no_grad():
        assert (noise.sample(100)[:, [1, 3]] == 0).all()


def test_conv_map_shares_one_draw_per_example_and_channel():
    noise = make_noise([(-1.0, 0.0), (-2.0, -0.5), (0.0, -1.0)], dtype=torch.float32).train()
    torch.manual_seed(0)
    x = torch.rand(6, 3, 5, 7) + 0.5
    ratio = noise(x) / x
    per_map = ratio.flatten(2)
    assert torch.allclose(per_map, per_map[..., :1].expand_as(per_map), rtol=1e-6, atol=0)
    first = per_map[..., 0]  # (batch, channel)
    for c in range(3):
        assert len(set(first[:, c].tolist())) == 6  # a fresh draw per example
    # Transformer-style (batch, tokens, channels) with dim=-1: shared over tokens.
    seq = make_noise([(-1.0, 0.0)] * 4, dtype=torch.float32, dim=-1).train()
    x = torch.rand(5, 9, 4) + 0.5
    ratio = seq(x) / x
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-6, atol=0)
    assert len(set(ratio[:, 0, 0].tolist())) == 5


def test_eval_uses_expected_theta():
    noise = make_noise([(-1.0, 0.0), (-2.0, -0.5), (0.0, -1.0)], dtype=torch.float32).eval()
    x = torch.randn(4, 3, 2, 2)
    out = noise(x)
    assert torch.equal(out, noise(x))  # deterministic
    assert torch.allclose(out, x * noise.mean().detach().view(1, 3, 1, 1), rtol=1e-6)


def test_bad_shapes_and_settings_raise():
    noise = LogNormalNoise(4)
    for bad in (torch.randn(2, 5), torch.randn(4), torch.randn(2, 3, 5)):
        with pytest.raises(ValueError):
            noise(bad)
    with pytest.raises(ValueError):
        LogNormalNoise(4, dim=-1)(torch.randn(2, 4, 3))
    for kwargs in (dict(num_structures=0), dict(num_structures=3, dim=0), dict(num_structures=3, log_b=1.0),
                   dict(num_structures=3, log_a=-5.0, log_b=-5.0)):  # fmt: skip
        with pytest.raises(ValueError):
            LogNormalNoise(**kwargs)
    with pytest.raises(ValueError):
        noise.prune_(torch.tensor([1, 0, 0, 0]))
    with pytest.raises(ValueError):
        noise.prune_(torch.zeros(3, dtype=torch.bool))


def test_noise_modules_finds_every_layer():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), LogNormalNoise(4), torch.nn.Sequential(LogNormalNoise(2)))
    assert sorted(noise_modules(model)) == ["1", "2.0"]


def test_a_held_mean_evaluates_the_same_without_a_gradient_and_is_released():
    noise = LogNormalNoise(5, init_mu=-1.0, init_log_sigma=-0.5).eval()
    x = torch.randn(4, 5, requires_grad=True)
    expected = noise(x)
    with noise.hold_mean():
        held = noise(x)
        held.sum().backward()
        assert x.grad is not None and noise.mu.grad is None and noise.log_sigma.grad is None  # nothing flows to frozen posteriors
    assert torch.equal(held, expected.detach())
    with torch.no_grad():
        noise.mu.fill_(-3.0)
    assert not torch.equal(noise(x), expected)  # released: the mean follows the posterior again
