"""Truncated-normal primitives in log space, and the reparameterised sampler, against mpmath."""
from __future__ import annotations

import math

import pytest
import torch

from bmrs import truncnorm

mpmath = pytest.importorskip("mpmath", reason="high-precision references need mpmath")

LOG_A, LOG_B = -20.0, 0.0


def mp_log_mass(lower: float, upper: float) -> float:
    with mpmath.workdps(60):
        lo, hi = mpmath.mpf(lower), mpmath.mpf(upper)
        if lo > 0:
            lo, hi = -hi, -lo
        return float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo)))


INTERVALS = [
    (-3.0, 3.0), (-0.1, 0.1), (1e-3, 2e-3), (-40.0, -38.0), (38.0, 40.0), (-1000.0, -999.0), (999.0, 1000.0),
    (5.0, 1e4), (-1e4, -5.0), (-2968.0, 0.0), (0.0, 2e7), (100.0, 100.5), (-8.5, -8.0), (-1e4, 1e4),
]  # fmt: skip


@pytest.mark.parametrize("lower, upper", INTERVALS)
def test_log_normal_mass_against_mpmath(lower, upper):
    got = truncnorm.log_normal_mass(torch.tensor(lower, dtype=torch.float64), torch.tensor(upper, dtype=torch.float64))
    expected = mp_log_mass(lower, upper)
    assert float(got) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    got32 = truncnorm.log_normal_mass(torch.tensor(lower), torch.tensor(upper))
    assert got32.dtype == torch.float32 and math.isfinite(float(got32))
    assert float(got32) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_log1mexp():
    x = torch.tensor([-1e-12, -1e-5, -0.5, -math.log(2.0), -1.0, -10.0, -50.0, -700.0], dtype=torch.float64)
    expected = [float(mpmath.log(1 - mpmath.exp(mpmath.mpf(v)))) for v in x.tolist()]
    got = truncnorm.log1mexp(x)
    for g, e in zip(got.tolist(), expected):
        assert g == pytest.approx(e, rel=1e-12, abs=1e-300)


def mp_quantile(mu: float, sigma: float, u: float) -> float:
    """The u-quantile of N(mu, sigma^2) truncated to [LOG_A, LOG_B], by bisection at 40 digits."""
    with mpmath.workdps(40):
        mu, sigma, u = mpmath.mpf(mu), mpmath.mpf(sigma), mpmath.mpf(u)
        a, b = (LOG_A - mu) / sigma, (LOG_B - mu) / sigma
        if a > 0:  # upper tail: 1 - Phi(z) = Phi(-z) without cancellation

            def cdf(z):
                return (mpmath.ncdf(-a) - mpmath.ncdf(-z)) / (mpmath.ncdf(-a) - mpmath.ncdf(-b))
        else:

            def cdf(z):
                return (mpmath.ncdf(z) - mpmath.ncdf(a)) / (mpmath.ncdf(b) - mpmath.ncdf(a))

        lo, hi = a, b
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cdf(mid) < u else (lo, mid)
        return float(mu + sigma * (lo + hi) / 2)


US = [0.05, 0.5, 0.95]


def _check_quantiles(mu: float, sigma: float, dtype: torch.dtype, tol: float) -> None:
    mu_t, sigma_t = torch.tensor([mu], dtype=dtype), torch.tensor([sigma], dtype=dtype)
    u = torch.tensor(US, dtype=dtype).unsqueeze(1)
    got = truncnorm.sample_phi(mu_t, sigma_t, u, LOG_A, LOG_B)[:, 0].tolist()
    m, s = float(mu_t), float(sigma_t)
    for value, uu in zip(got, u[:, 0].tolist()):
        # phi is the u-quantile, or the (1 - u)-quantile where the sampler works in the mirrored tail:
        # either is a valid reparameterisation of the same distribution.
        error = min(abs(value - mp_quantile(m, s, uu)), abs(value - mp_quantile(m, s, 1.0 - uu)))
        assert error <= tol, (mu, sigma, uu, value, mp_quantile(m, s, uu))


ORDINARY = [(0.0, math.exp(-5.0)), (-5.0, 1.0), (-19.5, 1.0), (0.5, 0.5), (0.3, 0.05), (-25.0, 1.0), (-10.0, 3.0)]
# Kept interval more than ~8.3 standard deviations into a tail: beta = -10, -15, -14.8; alpha = +10.
DEEP_TAIL = [(1.0, 0.1), (3.0, 0.2), (0.1, math.exp(-5.0)), (-22.0, 0.2)]


@pytest.mark.parametrize("mu, sigma", ORDINARY)
def test_sampler_is_the_exact_quantile(mu, sigma):
    _check_quantiles(mu, sigma, torch.float64, 1e-8)
    _check_quantiles(mu, sigma, torch.float32, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mu, sigma", DEEP_TAIL)
def test_sampler_is_the_exact_quantile_deep_in_a_tail(mu, sigma, dtype):
    """E.g. mu = 1, sigma = 0.1: every draw should lie in [-0.03, 0] (theta ~ 0.99), not at one fixed
    phi = mu - 12.95 sigma (float32) or mu - 37.5 sigma (float64) for every u."""
    _check_quantiles(mu, sigma, dtype, 1e-4 if dtype == torch.float32 else 1e-8)


def test_sampler_extreme_uniforms_stay_finite_with_finite_gradients():
    """u = 0 and u = 1 - 2^-24 (the largest value float32 torch.rand returns) for units near log a.

    With u = 1 - 2^-24, Phi(alpha) + u Z rounds to 1.0 in float32 for some units (e.g. mu = -19.8668,
    sigma = e^-1), ndtri(1) = inf, and the draw is clamped to log b: theta = 1 for a unit whose
    posterior sits at theta ~ e^-19, and 0 * inf = NaN in the gradient of sigma."""
    mu = torch.linspace(-20.5, -15.0, 111).requires_grad_(True)
    log_sigma = torch.full((111,), -1.0).requires_grad_(True)
    for value in (0.0, 1.0 - 2.0**-24):
        mu.grad, log_sigma.grad = None, None
        u = torch.full((1, 111), value)
        phi = truncnorm.sample_phi(mu, log_sigma.exp(), u, LOG_A, LOG_B)
        assert torch.isfinite(phi).all() and (phi >= LOG_A).all() and (phi <= LOG_B).all()
        phi.sum().backward()
        assert torch.isfinite(mu.grad).all() and torch.isfinite(log_sigma.grad).all()
        if value > 0.5:
            # the top quantile of N(mu, e^-2) near log a is within ~5.3 sigma of mu, far below theta = 1
            assert (phi < mu.detach() + 6 * math.exp(-1.0) + 1e-4).all()
