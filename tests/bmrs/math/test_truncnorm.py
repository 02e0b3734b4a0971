"""Truncated-normal primitives in log space, and the reparameterised sampler, against mpmath."""
from __future__ import annotations

import math

import pytest
import torch

from bmrs.math import truncnorm
from bmrs.math.sampling import sample_phi

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
    with mpmath.workdps(400):  # log(1 - 1e-304) needs ~300 digits
        expected = [float(mpmath.log(-mpmath.expm1(mpmath.mpf(v)))) for v in x.tolist()]
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


def _quantile_errors(mu: float, sigma: float, dtype: torch.dtype, tol: float) -> list[tuple]:
    """(mu, sigma, u, drawn phi, exact quantile) wherever sample_phi is off the exact quantile by > tol."""
    mu_t, sigma_t = torch.tensor([mu], dtype=dtype), torch.tensor([sigma], dtype=dtype)
    u = torch.tensor(US, dtype=dtype).unsqueeze(1)
    got = sample_phi(mu_t, sigma_t, u, LOG_A, LOG_B)[:, 0].tolist()
    m, s = float(mu_t), float(sigma_t)
    errors = []
    for value, uu in zip(got, u[:, 0].tolist()):
        # phi is the u-quantile, or the (1 - u)-quantile where the sampler works in the mirrored tail:
        # either is a valid reparameterisation of the same distribution.
        error = min(abs(value - mp_quantile(m, s, uu)), abs(value - mp_quantile(m, s, 1.0 - uu)))
        if not error <= tol:
            errors.append((mu, round(sigma, 5), uu, round(value, 6), round(mp_quantile(m, s, uu), 6)))
    return errors


ORDINARY = [(0.0, math.exp(-5.0)), (-5.0, 1.0), (-19.5, 1.0), (0.5, 0.5), (0.3, 0.05), (-25.0, 1.0), (-10.0, 3.0)]
# Kept interval more than ~8.3 standard deviations into a tail: beta = -10, -15, -14.8; alpha = +10.
DEEP_TAIL = [(1.0, 0.1), (3.0, 0.2), (0.1, math.exp(-5.0)), (-22.0, 0.2)]


@pytest.mark.parametrize("mu, sigma", ORDINARY)
def test_sampler_is_the_exact_quantile(mu, sigma):
    assert _quantile_errors(mu, sigma, torch.float64, 1e-8) == []
    assert _quantile_errors(mu, sigma, torch.float32, 1e-5) == []


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sampler_is_the_exact_quantile_deep_in_a_tail(dtype):
    """E.g. mu = 1, sigma = 0.1: every draw should lie in [-0.03, 0] (theta ~ 0.99), not at one fixed
    phi = mu - 12.95 sigma (float32) or mu - 37.5 sigma (float64) for every u: torch.special.ndtr
    underflows to 0 below about -8.3 even in float64, so Z = 0 and every probability is floored."""
    tol = 1e-4 if dtype == torch.float32 else 1e-8
    errors = [e for mu, sigma in DEEP_TAIL for e in _quantile_errors(mu, sigma, dtype, tol)]
    assert errors == [], "(mu, sigma, u, phi drawn, exact quantile): " + repr(errors)


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
        phi = sample_phi(mu, log_sigma.exp(), u, LOG_A, LOG_B)
        assert torch.isfinite(phi).all() and (phi >= LOG_A).all() and (phi <= LOG_B).all()
        phi.sum().backward()
        assert torch.isfinite(mu.grad).all() and torch.isfinite(log_sigma.grad).all()
        if value > 0.5:
            # the top quantile of N(mu, e^-2) near log a is within ~5.3 sigma of mu, far below theta = 1
            assert (phi < mu.detach() + 6 * math.exp(-1.0) + 1e-4).all()


def mp_kl(mu: float, sigma: float) -> float:
    """KL(q || p) = log(log b - log a) - H, H the truncated-normal entropy, at 80 digits."""
    with mpmath.workdps(80):
        m, s = mpmath.mpf(mu), mpmath.mpf(sigma)
        a, b = (LOG_A - m) / s, (LOG_B - m) / s
        z = mpmath.ncdf(-a) - mpmath.ncdf(-b) if a > 0 else mpmath.ncdf(b) - mpmath.ncdf(a)
        entropy = mpmath.log(mpmath.sqrt(2 * mpmath.pi * mpmath.e) * s * z) + (
            a * mpmath.npdf(a) - b * mpmath.npdf(b)
        ) / (2 * z)
        return float(mpmath.log(LOG_B - LOG_A) - entropy)


# (mu, log sigma) inside LogNormalNoise's clamp range [-20, 5] with the mean outside [log a, log b]
# by many sigmas: |beta| or alpha ~ 1e4 .. 1e9, where the entropy's log Z (~ -beta^2 / 2) and
# beta pdf(beta) / (2 Z) (~ beta^2 / 2) cancel.
OUTSIDE = [(0.5, -10.0), (1.0, -10.0), (5.0, -10.0), (0.5, -20.0), (-22.0, -10.0), (-24.0, -20.0), (-25.0, -10.0)]


@pytest.mark.parametrize("mu, log_sigma", [(0.0, -5.0), (0.5, -5.0), (-25.0, -5.0), (-10.0, 5.0), (2.0, -3.0)])
def test_kl_against_mpmath(mu, log_sigma):
    got = truncnorm.kl_to_log_uniform(torch.tensor(mu, dtype=torch.float64), torch.tensor(math.exp(log_sigma), dtype=torch.float64), LOG_A, LOG_B)
    assert float(got) == pytest.approx(mp_kl(mu, math.exp(log_sigma)), rel=1e-6)


def test_kl_against_mpmath_far_outside_support():
    """E.g. mu = 1, sigma = e^-10: KL is 21.9957 (nearly a point mass at theta = 1); got 15.27.
    mu = 5, sigma = e^-10: got -158 (a KL below zero); mu = -24, sigma = e^-20: got -1.5e120."""
    mu = torch.tensor([u[0] for u in OUTSIDE], dtype=torch.float64)
    sigma = torch.tensor([u[1] for u in OUTSIDE], dtype=torch.float64).exp()
    got = truncnorm.kl_to_log_uniform(mu, sigma, LOG_A, LOG_B).tolist()
    expected = [mp_kl(m, s) for m, s in zip(mu.tolist(), sigma.tolist())]
    bad = [(*unit, g, e) for unit, g, e in zip(OUTSIDE, got, expected) if not (g >= 0 and abs(g - e) <= 1e-6 * abs(e))]
    assert bad == [], "(mu, log sigma, KL got, KL exact): " + repr(bad)


def mp_log_moment(mu: float, sigma: float, order: int) -> float:
    with mpmath.workdps(80):
        m, s = mpmath.mpf(mu), mpmath.mpf(sigma)
        a, b = (LOG_A - m) / s, (LOG_B - m) / s

        def mass(lo, hi):
            return mpmath.ncdf(-lo) - mpmath.ncdf(-hi) if lo > 0 else mpmath.ncdf(hi) - mpmath.ncdf(lo)

        k = order * s
        return float(order * m + k * k / 2 + mpmath.log(mass(a - k, b - k)) - mpmath.log(mass(a, b)))


def _log_moment_errors(units) -> list[tuple]:
    bad = []
    for mu, log_sigma in units:
        sigma = math.exp(log_sigma)
        for order in (1, 2):
            got = float(truncnorm.log_moment(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64), order, LOG_A, LOG_B))
            expected = mp_log_moment(mu, sigma, order)
            # theta <= 1, so log E[theta^k] <= 0
            if not (got <= 1e-6 and abs(got - expected) <= 1e-5):
                bad.append((mu, log_sigma, order, got, expected))
    return bad


def test_log_moments_against_mpmath():
    far = [unit for unit in OUTSIDE if unit != (-24.0, -20.0)]  # that one is below, at the clamp floor
    assert _log_moment_errors([(0.0, -5.0), (-19.5, 0.0), (2.0, -3.0), (-25.0, -5.0), *far]) == []


def test_log_moments_against_mpmath_at_the_clamp_floor():
    """log E[theta^k] with log sigma near its clamp floor -20 and the mean outside [log a, log b]:
    log Z(alpha - k sigma, beta - k sigma) - log Z(alpha, beta) is a difference of two numbers near
    -alpha^2 / 2 ~ -3e18 (ulp 512). mu = -25, sigma = e^-20 gives E[theta] = 1.0 instead of e^-20;
    mu = 4, sigma = e^-17.5 gives E[theta] = e^2 = 7.39 > 1."""
    bad = _log_moment_errors([(-25.0, -20.0), (-24.0, -20.0), (4.0, -17.5), (1.0, -17.5)])
    assert bad == [], "(mu, log sigma, order, log moment got, exact): " + repr(bad)
