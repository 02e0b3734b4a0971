"""``dF`` closed forms (paper eq. 8 and 10) against numerical integration of eq. 6 in ``phi = log theta``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bmrs_reference import delta_f_lognormal_mpmath, delta_f_lognormal_quad, delta_f_loguniform_quad
from bmrs.math.reduction import delta_f_lognormal, delta_f_loguniform

try:
    import mpmath  # noqa: F401

    HAVE_MPMATH = True
except ImportError:  # pragma: no cover - the windowed quad stands in
    HAVE_MPMATH = False

ABS_TOL = 1e-8


def _t64(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def _draws(seed: int, count: int = 30) -> list[tuple[float, ...]]:
    rng = np.random.default_rng(seed)
    log_uniform = lambda lo, hi: float(np.exp(rng.uniform(math.log(lo), math.log(hi))))  # noqa: E731
    return [
        (float(rng.uniform(-18.0, 1.0)), log_uniform(0.05, 3.0), float(rng.uniform(-20.0, -5.0)), log_uniform(0.05, 2.0))
        for _ in range(count)
    ]


@pytest.mark.parametrize("mu, sigma, mu_p, sigma_p", _draws(1234))
def test_lognormal_matches_quadrature(mu, sigma, mu_p, sigma_p):
    expected = delta_f_lognormal_quad(mu, sigma, mu_p, sigma_p)
    got = delta_f_lognormal(_t64(mu), _t64(sigma), mu_p=mu_p, sigma_p=sigma_p)
    assert got.dtype == torch.float64
    assert abs(float(got) - expected) <= ABS_TOL, (float(got), expected)


def _uniform_draws(seed: int) -> list[tuple[float, float, int]]:
    rng = np.random.default_rng(seed)
    return [
        (float(rng.uniform(-18.0, 1.0)), float(np.exp(rng.uniform(math.log(0.05), math.log(3.0)))), p1)
        for p1 in list(range(1, 13)) + [int(p) for p in rng.integers(1, 13, size=18)]
    ]


@pytest.mark.parametrize("mu, sigma, p1", _uniform_draws(99))
def test_loguniform_matches_quadrature(mu, sigma, p1):
    expected = delta_f_loguniform_quad(mu, sigma, p1)
    got = delta_f_loguniform(_t64(mu), _t64(sigma), p1=p1)
    assert got.dtype == torch.float64
    assert abs(float(got) - expected) <= ABS_TOL, (float(got), expected)


def test_vectorised_equals_elementwise():
    draws = _draws(7, count=12)
    mu, sigma, mu_p, sigma_p = (torch.tensor(column, dtype=torch.float64) for column in zip(*draws))
    batched = delta_f_lognormal(mu.reshape(3, 4), sigma.reshape(3, 4), mu_p=mu_p.reshape(3, 4), sigma_p=sigma_p.reshape(3, 4))
    assert batched.shape == (3, 4)
    for index, (m, s, mp, sp) in enumerate(draws):
        single = delta_f_lognormal(_t64(m), _t64(s), mu_p=mp, sigma_p=sp)
        assert float(batched.flatten()[index]) == pytest.approx(float(single), abs=1e-12)


# Posteriors whose mean lies outside [log a, log b]: Z_q = Phi(beta) - Phi(alpha) underflows to 0 in
# float64 for several of them (e.g. Phi(-50) ~ 1e-545), so the naive formula gives inf or nan.
OUTSIDE_N = [
    (0.5, 0.01, -20.0, 1.0),
    (0.5, 0.01, -10.0, 0.5),
    (3.0, 0.05, -20.0, 0.05),
    (-25.0, 1.0, -20.0, 1.0),
    (-25.0, 0.1, -15.0, 0.5),
    (-22.0, 0.2, -19.5, 0.3),
]
OUTSIDE_U = [(0.5, 0.01, 4), (0.5, 0.01, 8), (3.0, 0.05, 1), (-25.0, 0.1, 8), (-25.0, 1.0, 8), (-21.0, 0.02, 12)]


@pytest.mark.parametrize("mu, sigma, mu_p, sigma_p", OUTSIDE_N)
def test_lognormal_outside_support_finite_and_exact(mu, sigma, mu_p, sigma_p):
    expected = delta_f_lognormal_quad(mu, sigma, mu_p, sigma_p)
    got = float(delta_f_lognormal(_t64(mu), _t64(sigma), mu_p=mu_p, sigma_p=sigma_p))
    assert math.isfinite(got)
    assert abs(got - expected) <= ABS_TOL + 1e-14 * abs(expected), (got, expected)


@pytest.mark.parametrize("mu, sigma, p1", OUTSIDE_U)
def test_loguniform_outside_support_finite_and_exact(mu, sigma, p1):
    expected = delta_f_loguniform_quad(mu, sigma, p1)
    got = float(delta_f_loguniform(_t64(mu), _t64(sigma), p1=p1))
    assert math.isfinite(got)
    assert abs(got - expected) <= ABS_TOL + 1e-14 * abs(expected), (got, expected)


# The paper's setting: reduced prior at log a = -20 with sigma_p = 1e-6 (v_p = 1e-12).
PAPER_MU = np.linspace(-20.0, 0.5, 42)
PAPER_SIGMA = np.array([math.exp(-5.0), 0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 3.0])


def _paper_grid(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    mu, sigma = np.meshgrid(PAPER_MU, PAPER_SIGMA, indexing="ij")
    return torch.tensor(mu, dtype=dtype), torch.tensor(sigma, dtype=dtype)


def test_paper_setting_float64_finite():
    mu, sigma = _paper_grid(torch.float64)
    got = delta_f_lognormal(mu, sigma, mu_p=-20.0, sigma_p=1e-6)
    assert torch.isfinite(got).all()


def test_paper_setting_float32_close_to_float64():
    mu32, sigma32 = _paper_grid(torch.float32)
    got32 = delta_f_lognormal(mu32, sigma32, mu_p=-20.0, sigma_p=1e-6)
    assert got32.dtype == torch.float32
    assert torch.isfinite(got32).all()
    # Same (float32-rounded) inputs in float64, so only the arithmetic differs.
    ref = delta_f_lognormal(mu32.double(), sigma32.double(), mu_p=-20.0, sigma_p=1e-6)
    tolerance = torch.clamp(1e-4 * ref.abs(), min=1e-3)
    bad = (got32.double() - ref).abs() > tolerance
    assert not bad.any(), list(zip(mu32[bad].tolist(), sigma32[bad].tolist(), got32[bad].tolist(), ref[bad].tolist()))


def test_paper_setting_float32_sign_agrees():
    """Pruning decisions (dF >= 0) are what float32 must get right; none of the grid sits on the boundary."""
    mu32, sigma32 = _paper_grid(torch.float32)
    got32 = delta_f_lognormal(mu32, sigma32, mu_p=-20.0, sigma_p=1e-6)
    ref = delta_f_lognormal(mu32.double(), sigma32.double(), mu_p=-20.0, sigma_p=1e-6)
    clear = ref.abs() > 1e-2
    assert torch.equal((got32 >= 0)[clear], (ref >= 0)[clear])


@pytest.mark.parametrize("sigma", PAPER_SIGMA.tolist())
def test_paper_setting_float64_against_high_precision(sigma):
    mus = PAPER_MU if HAVE_MPMATH else PAPER_MU[::4]
    got = delta_f_lognormal(torch.tensor(mus), torch.full((len(mus),), sigma, dtype=torch.float64), mu_p=-20.0, sigma_p=1e-6)
    for mu, value in zip(mus.tolist(), got.tolist()):
        if HAVE_MPMATH:
            expected = delta_f_lognormal_mpmath(mu, sigma, -20.0, 1e-6)
        else:
            expected = delta_f_lognormal_quad(mu, sigma, -20.0, 1e-6, window=50.0)
        # dF reaches ~3e6 here (sigma = e^-5): a float64 ulp there is ~5e-10.
        assert abs(value - expected) <= ABS_TOL + 1e-13 * abs(expected), (mu, sigma, value, expected)


def test_paper_setting_windowed_quadrature_agrees():
    """The windowed quadrature stand-in agrees with the closed form too, on a few points."""
    for mu, sigma in [(-19.0, 0.5), (-10.0, 1.0), (0.0, math.exp(-5.0)), (0.5, 0.2), (-20.0, 3.0)]:
        expected = delta_f_lognormal_quad(mu, sigma, -20.0, 1e-6, window=50.0)
        got = float(delta_f_lognormal(_t64(mu), _t64(sigma), mu_p=-20.0, sigma_p=1e-6))
        assert abs(got - expected) <= 1e-7 + 1e-12 * abs(expected), (mu, sigma, got, expected)


def test_paper_setting_signs():
    """A posterior sitting at theta ~ e^-19 is better explained by the reduced prior; one at theta = 1 is not."""
    near_zero = delta_f_lognormal(_t64(-19.0), _t64(0.5), mu_p=-20.0, sigma_p=1e-6)
    at_one = delta_f_lognormal(_t64(0.0), _t64(math.exp(-5.0)), mu_p=-20.0, sigma_p=1e-6)
    assert float(near_zero) > 0 > float(at_one)


def test_loguniform_bounded_by_log_support_ratio():
    """dF <= log((log b - log a)/(log b' - log a')), with equality approached for a posterior inside [a', b']."""
    bound = math.log(20.0 / ((23 - 8) * math.log(2.0)))
    mu = torch.linspace(-19.5, 0.5, 50, dtype=torch.float64)
    got = delta_f_loguniform(mu, torch.full_like(mu, 0.3), p1=8)
    assert (got <= bound + 1e-12).all()
    inside = delta_f_loguniform(_t64(-10.0), _t64(0.05), p1=8)
    assert float(inside) == pytest.approx(bound, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(p1=23, p2=23),
        dict(p1=10, p2=5),
        dict(p1=-1, p2=23),
        dict(p1=4, p2=30),  # 2^-30 = e^-20.8 < a = e^-20
        dict(p1=4, p2=23, log_a=-10.0),  # 2^-23 = e^-15.9 < a
        dict(p1=4, p2=23, log_b=-5.0),  # 2^-4 = e^-2.77 > b
        dict(p1=4, p2=23, log_a=0.0, log_b=0.0),
    ],
)
def test_loguniform_rejects_bad_support(kwargs):
    with pytest.raises(ValueError):
        delta_f_loguniform(_t64(-5.0), _t64(1.0), **kwargs)


def test_rejects_bad_scales_and_bounds():
    with pytest.raises(ValueError):
        delta_f_lognormal(_t64(-5.0), _t64(0.0), mu_p=-20.0, sigma_p=1e-6)
    with pytest.raises(ValueError):
        delta_f_lognormal(_t64(-5.0), _t64(1.0), mu_p=-20.0, sigma_p=-1.0)
    with pytest.raises(ValueError):
        delta_f_lognormal(_t64(-5.0), _t64(1.0), mu_p=-20.0, sigma_p=1.0, log_a=0.0, log_b=-20.0)
    with pytest.raises(ValueError):
        delta_f_loguniform(_t64(-5.0), _t64(-1.0), p1=8)


def test_paper_setting_over_the_clamp_range():
    """Every (mu, sigma) a noise layer can reach (log sigma is clamped to [-20, 5]), including means
    outside [log a, log b]. E.g. mu = -25, sigma = e^-20 (a point mass at theta = a): dF = +16.59,
    the unit is pruned; a cancellation between log Z~ and log Z_q (both ~ -alpha^2/2 ~ -3e18) gives -420."""
    bad = []
    for mu in (-25.0, -22.0, -20.5, 0.5, 4.0):
        for log_sigma in (-20.0, -17.5, -15.0, -10.0, -5.0):
            sigma = math.exp(log_sigma)
            expected = delta_f_lognormal_mpmath(mu, sigma, -20.0, 1e-6, dps=120)
            got = float(delta_f_lognormal(_t64(mu), _t64(sigma), mu_p=-20.0, sigma_p=1e-6))
            ok = math.isfinite(got) and (got >= 0) == (expected >= 0) and abs(got - expected) <= 1e-5 + 1e-10 * abs(expected)
            if not ok:
                bad.append((mu, log_sigma, got, expected))
    assert bad == [], "(mu, log sigma, dF got, dF exact): " + repr(bad)
