"""The sampler's hand-written backward pass against finite differences, in every regime."""
from __future__ import annotations

import math

import pytest
import torch

from bmrs.math.sampling import TruncatedNormalDraw

LOG_A, LOG_B = -20.0, 0.0
CASES = {
    "straddling": (-5.0, 1.0),
    "near_upper_bound": (-0.1, 0.3),
    "mirrored_near_lower_bound": (-19.5, 0.8),
    "deep_below_mean": (1.0, 0.1),  # beta = -10: pressed against theta = 1
    "deep_above_mean": (-22.0, 0.2),  # alpha = +10: pressed against theta = a
    "paper_init": (0.0, math.exp(-5.0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_finite_differences(name):
    mu0, sigma0 = CASES[name]
    mu = torch.tensor([mu0], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([sigma0], dtype=torch.float64, requires_grad=True)
    uniform = torch.tensor([[0.03], [0.31], [0.5], [0.77], [0.98]], dtype=torch.float64)

    def draw(m, s):
        return TruncatedNormalDraw.apply(m, s, uniform, LOG_A, LOG_B)

    assert torch.autograd.gradcheck(draw, (mu, sigma), eps=1e-7 * max(sigma0, 1e-3), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_draws_are_the_truncated_quantiles_of_u(name):
    """phi is the truncated normal's quantile at u, strictly increasing in u; where the whole
    interval lies above the mean (alpha > 0) the sampler works in the mirrored tail for precision,
    and phi is the quantile at 1 - u instead (as uniform a draw), strictly decreasing in u."""
    from scipy.stats import truncnorm

    mu0, sigma0 = CASES[name]
    mu = torch.tensor([mu0], dtype=torch.float64)
    sigma = torch.tensor([sigma0], dtype=torch.float64)
    uniform = torch.linspace(0.001, 0.999, 200, dtype=torch.float64).unsqueeze(1)
    phi = TruncatedNormalDraw.apply(mu, sigma, uniform, LOG_A, LOG_B).flatten()
    alpha, beta = (LOG_A - mu0) / sigma0, (LOG_B - mu0) / sigma0
    mirrored = alpha > 0
    steps = phi[1:] - phi[:-1]
    assert bool((steps < 0).all()) if mirrored else bool((steps > 0).all())
    assert LOG_A <= float(phi.min()) and float(phi.max()) <= LOG_B
    quantile_of = (1.0 - uniform.flatten()) if mirrored else uniform.flatten()
    expected = torch.from_numpy(truncnorm.ppf(quantile_of.numpy(), alpha, beta, loc=mu0, scale=sigma0))
    assert torch.allclose(phi, expected, rtol=1e-6, atol=1e-9)


def test_vectorised_inverse_cdf_matches_ndtri():
    from bmrs.math.sampling import inverse_normal_cdf_lower_half

    p = torch.cat([torch.logspace(-300, -1, 4000, dtype=torch.float64), torch.linspace(0.01, 0.5, 4000, dtype=torch.float64)])
    exact = torch.special.ndtri(p)
    relative = (inverse_normal_cdf_lower_half(p) - exact).abs() / exact.abs().clamp_min(1e-3)
    assert float(relative.max()) < 1.2e-9
