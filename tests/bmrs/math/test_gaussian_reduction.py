"""dF of the Gaussian spike (BMR on individual weights) against quadrature, in float64 and float32."""
from __future__ import annotations

import itertools
import math

import mpmath
import pytest
import torch
from scipy import integrate

from bmrs.math.gaussian_reduction import delta_f_gaussian_spike, kl_to_centered_gaussian, reduced_gaussian_posterior


def log_normal(w: float, mean: float, std: float) -> float:
    return -0.5 * ((w - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def centred_integrand(m: float, s: float, g: float, e: float):
    """``(peak, width, log_top, bump)``: the integrand ``N(w; m, s^2) N(w; 0, e^2) / N(w; 0, g^2)`` is
    ``exp(log_top) * bump(t)`` at ``w = peak + t * width``.

    The densities are evaluated as written, with 30 digits (mpmath): in float64 their exponents, up
    to ``(m/s)^2 ~ 1e19``, cancel to order one near the peak and would leave noise. The peak (from
    the exponent's two quadratic coefficients: elementary algebra, and only a choice of origin) and
    the unit ``min(s, e)``, within a factor of about 2 of the integrand's width, let quad see a bump
    of order-one width at 0."""
    with mpmath.workdps(30):
        m, s, g, e = (mpmath.mpf(value) for value in (m, s, g, e))
        normaliser = -mpmath.log(s) - mpmath.log(e) + mpmath.log(g) - mpmath.log(2 * mpmath.pi) / 2

        def quadratic(w):  # the integrand's exponent less normaliser
            return -(((w - m) / s) ** 2 + (w / e) ** 2 - (w / g) ** 2) / 2

        peak = (m / s**2) / (1 / s**2 + 1 / e**2 - 1 / g**2)
        width = min(s, e)
        top = quadratic(peak)
        log_top = top + normaliser

    def bump(t: float) -> float:
        with mpmath.workdps(30):
            return math.exp(float(quadratic(peak + t * width) - top))

    return float(peak), float(width), float(log_top), bump


def integral(function) -> float:
    # The bump's width in t is at most about 2: beyond |t| = 40 lies less than exp(-200) of it.
    value, error = integrate.quad(function, -40.0, 40.0, epsabs=1e-300, epsrel=1e-12, points=[0.0], limit=200)
    assert error < 1e-10 * max(abs(value), 1e-3)
    return value


def quadrature_delta_f(m: float, s: float, g: float, e: float) -> float:
    """``log integral N(w; m, s^2) N(w; 0, e^2) / N(w; 0, g^2) dw`` by ``scipy.integrate.quad``."""
    if e == 0.0:  # the Dirac spike: E_q[delta(w)] / p(0), the Savage-Dickey ratio
        return log_normal(0.0, m, s) - log_normal(0.0, 0.0, g)
    _, width, log_top, bump = centred_integrand(m, s, g, e)
    return log_top + math.log(width) + math.log(integral(bump))


MEANS = (0.0, 1e-4, -0.03, 4.0, -300.0)
STDS = (1e-7, 1e-3, 0.05, 1.0, 20.0)
PRIORS = (0.1, 1.0, 50.0)
SPIKES = (0.0, 1e-12, "1e-8 g", "0.5 g")  # absolute, or relative to the prior


def grid():
    for m, s, g, spike in itertools.product(MEANS, STDS, PRIORS, SPIKES):
        e = float(spike.split()[0]) * g if isinstance(spike, str) else spike
        if e < g:
            yield m, s, g, e
    # A "spike" wider than the prior, where the reduced precision is still positive.
    yield from ((m, 0.5, 1.0, 2.0) for m in (0.0, 0.7, -3.0))


GRID = list(grid())


def test_delta_f_matches_quadrature_in_float64() -> None:
    m, s, g, e = (torch.tensor(column, dtype=torch.float64) for column in zip(*GRID))
    computed = delta_f_gaussian_spike(m, s, prior_std=g, spike_std=e)
    for point, value in zip(GRID, computed.tolist()):
        reference = quadrature_delta_f(*point)
        assert abs(value - reference) <= 1e-8 * max(1.0, abs(reference)), (point, value, reference)


def test_reduced_posterior_matches_quadrature_moments() -> None:
    """The reduced posterior's mean and variance are the normalised integrand's first two moments."""
    for m, s, g, e in [(0.3, 0.2, 1.0, 0.1), (-2.0, 0.05, 0.1, 1e-3), (4.0, 1.0, 50.0, 0.5), (0.7, 0.5, 1.0, 2.0), (1e3, 1e-4, 1.0, 1e-6)]:
        peak, width, _, bump = centred_integrand(m, s, g, e)
        mass = integral(bump)
        offset = integral(lambda t: t * bump(t)) / mass  # E[t]: the algebraic peak is the mean to rounding
        spread = integral(lambda t: (t - offset) ** 2 * bump(t)) / mass
        mean, var = reduced_gaussian_posterior(torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64), prior_std=g, spike_std=e)
        assert float(mean) == pytest.approx(peak + width * offset, rel=1e-8, abs=1e-8 * width)
        assert float(var) == pytest.approx(width**2 * spread, rel=1e-8)


def test_dirac_spike_is_the_savage_dickey_limit() -> None:
    m = torch.tensor([0.0, 0.02, -1.5, 1e3], dtype=torch.float64)
    s = torch.tensor([0.01, 0.3, 1e-3, 2.0], dtype=torch.float64)
    exact = delta_f_gaussian_spike(m, s, prior_std=0.1, spike_std=0.0)
    assert torch.allclose(exact, math.log(0.1) - torch.log(s) - 0.5 * (m / s) ** 2, rtol=1e-14, atol=0)
    for e in (1e-9, 1e-12, 1e-30):  # converges to it once e << s, nothing blows up on the way
        near = delta_f_gaussian_spike(m, s, prior_std=0.1, spike_std=e)
        assert torch.allclose(near, exact, rtol=1e-10, atol=0)
    mean, var = reduced_gaussian_posterior(m, s, prior_std=0.1, spike_std=0.0)
    assert torch.equal(mean, torch.zeros_like(m)) and torch.equal(var, torch.zeros_like(m))


def test_outside_validity_delta_f_is_infinite_and_reduced_posterior_nan() -> None:
    m, s = torch.tensor([0.3, 0.3]), torch.tensor([0.5, 3.0])
    # e = 2 > g = 1: D = e^2 + (1 - e^2/g^2) s^2 is 3.25 for s = 0.5 and -23 for s = 3.
    delta_f = delta_f_gaussian_spike(m, s, prior_std=1.0, spike_std=2.0)
    assert torch.isfinite(delta_f[0]) and delta_f[1] == math.inf
    mean, var = reduced_gaussian_posterior(m, s, prior_std=1.0, spike_std=2.0)
    assert torch.isfinite(mean[0]) and torch.isfinite(var[0]) and mean[1].isnan() and var[1].isnan()


EXTREMES = [  # (m, s, g, e): tiny and huge scales that a naive s^2, e^2 or m^2/s^2 would lose in float32
    (0.0, 1e-30, 0.1, 1e-35),
    (1e-31, 1e-30, 0.1, 1e-9),
    (5.0, 1e-25, 1.0, 1e-8),
    (1e4, 1e-3, 1.0, 1e-20),
    (-2e-10, 1e-20, 1e-19, 1e-22),
    (0.01, 1e3, 1e4, 1e-8),
    (1e15, 1.0, 1.0, 1e-8),
]


@pytest.mark.parametrize("points", [GRID, EXTREMES], ids=["grid", "extremes"])
def test_float32_is_finite_and_close_to_float64(points) -> None:
    columns = list(zip(*points))
    m32, s32, g32, e32 = (torch.tensor(column, dtype=torch.float32) for column in columns)
    # The reference takes the float32-rounded inputs, so only the arithmetic differs.
    m64, s64, g64, e64 = (column.double() for column in (m32, s32, g32, e32))
    low = delta_f_gaussian_spike(m32, s32, prior_std=g32, spike_std=e32)
    high = delta_f_gaussian_spike(m64, s64, prior_std=g64, spike_std=e64)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    # Relative to the size of the two terms dF is the difference of, as float32 can do no better.
    scale = 1 + (2 * torch.log(g64 / torch.maximum(s64, e64))).abs() + (m64 / torch.maximum(s64, e64)) ** 2
    assert ((low.double() - high).abs() <= 1e-6 * scale).all(), (low, high)
    mean, var = reduced_gaussian_posterior(m32, s32, prior_std=g32, spike_std=e32)
    mean64, var64 = reduced_gaussian_posterior(m64, s64, prior_std=g64, spike_std=e64)
    assert torch.isfinite(mean).all() and torch.isfinite(var).all()
    assert torch.allclose(mean.double(), mean64, rtol=1e-5, atol=1e-37) and torch.allclose(var.double(), var64, rtol=1e-5, atol=1e-40)


def test_sign_prunes_an_uncertain_zero_and_keeps_a_confident_weight() -> None:
    prior, spike = 0.1, 1e-8 * 0.1
    uncertain_zero = delta_f_gaussian_spike(torch.tensor(0.0), torch.tensor(0.02), prior_std=prior, spike_std=spike)
    confident = delta_f_gaussian_spike(torch.tensor(0.05), torch.tensor(0.002), prior_std=prior, spike_std=spike)
    assert uncertain_zero > 0 and float(uncertain_zero) == pytest.approx(math.log(5.0), rel=1e-6)
    assert confident < 0  # |m| / s = 25: pinning it at zero costs 312 nats


def test_kl_matches_the_textbook_form_and_monte_carlo() -> None:
    m = torch.tensor([0.0, 0.3, -0.05, 2.0], dtype=torch.float64)
    log_s = torch.log(torch.tensor([0.1, 0.02, 0.5, 1e-4], dtype=torch.float64))
    g = 0.1
    s = log_s.exp()
    textbook = math.log(g) - log_s + (s**2 + m**2) / (2 * g**2) - 0.5
    kl = kl_to_centered_gaussian(m, log_s, g)
    assert torch.allclose(kl, textbook, rtol=1e-12, atol=1e-15)
    assert kl[0] == 0  # posterior equal to the prior: exactly zero, no cancellation residue
    draws = m + s * torch.randn(400_000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_q = torch.distributions.Normal(m, s).log_prob(draws)
    log_p = torch.distributions.Normal(torch.zeros_like(m), torch.full_like(m, g)).log_prob(draws)
    estimate, spread = (log_q - log_p).mean(0), (log_q - log_p).std(0) / math.sqrt(draws.shape[0])
    assert ((estimate - kl).abs() <= 5 * spread + 1e-12).all()
