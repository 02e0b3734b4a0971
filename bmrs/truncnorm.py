"""Truncated-normal quantities in log space.

Every BMRS quantity is a statement about a normal distribution in ``phi = log theta`` truncated to
``[log a, log b]``. Masses such as ``Phi(beta) - Phi(alpha)`` underflow to zero (or cancel to garbage)
long before the exact value stops being a perfectly ordinary number, so everything here is computed
as a logarithm from ``log_ndtr`` and never as a difference of CDFs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate near both ends (Maechler, 2012)."""
    return torch.where(x > -_LOG_2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_normal_mass(lower: Tensor, upper: Tensor) -> Tensor:
    """``log(Phi(upper) - Phi(lower))`` for standardised bounds ``lower < upper``.

    When both bounds sit in the upper tail, the CDFs are both ~1 and their difference cancels; the
    mirrored interval ``[-upper, -lower]`` has the same mass and lives in the accurate lower tail.
    """
    mirror = lower > 0
    lo = torch.where(mirror, -upper, lower)
    hi = torch.where(mirror, -lower, upper)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    # Clamp keeps log1mexp's argument strictly negative where rounding made the two equal.
    gap = torch.clamp(log_lo - log_hi, max=-torch.finfo(log_hi.dtype).tiny)
    return log_hi + log1mexp(gap)


def log_normal_pdf(x: Tensor) -> Tensor:
    return -0.5 * x * x - LOG_SQRT_2PI


def standardise(mu: Tensor, sigma: Tensor, log_a: float, log_b: float) -> tuple[Tensor, Tensor]:
    return (log_a - mu) / sigma, (log_b - mu) / sigma


def log_partition(mu: Tensor, sigma: Tensor, log_a: float, log_b: float) -> Tensor:
    """``log Z`` of ``N(mu, sigma^2)`` truncated to ``[log_a, log_b]``."""
    alpha, beta = standardise(mu, sigma, log_a, log_b)
    return log_normal_mass(alpha, beta)


def entropy(mu: Tensor, sigma: Tensor, log_a: float, log_b: float) -> Tensor:
    """Differential entropy of the truncated normal in ``phi``."""
    alpha, beta = standardise(mu, sigma, log_a, log_b)
    log_z = log_normal_mass(alpha, beta)
    # alpha*pdf(alpha)/Z written through exp(log pdf - log Z): pdf and Z may both underflow.
    a_term = alpha * torch.exp(log_normal_pdf(alpha) - log_z)
    b_term = beta * torch.exp(log_normal_pdf(beta) - log_z)
    return LOG_SQRT_2PI + 0.5 + torch.log(sigma) + log_z + 0.5 * (a_term - b_term)


def kl_to_log_uniform(mu: Tensor, sigma: Tensor, log_a: float, log_b: float) -> Tensor:
    """``KL(q || p)`` for the truncated log-normal ``q`` and the log-uniform prior on ``[a, b]``.

    KL is invariant to the change of variables ``theta -> log theta``, so it is computed in ``phi``
    where the prior is uniform with density ``1 / (log b - log a)``.
    """
    return math.log(log_b - log_a) - entropy(mu, sigma, log_a, log_b)


def log_moment(mu: Tensor, sigma: Tensor, order: int, log_a: float, log_b: float) -> Tensor:
    """``log E[theta^order]`` for ``theta = exp(phi)``, ``phi`` truncated normal."""
    alpha, beta = standardise(mu, sigma, log_a, log_b)
    k_sigma = order * sigma
    return (
        order * mu
        + 0.5 * k_sigma * k_sigma
        + log_normal_mass(alpha - k_sigma, beta - k_sigma)
        - log_normal_mass(alpha, beta)
    )


def sample_phi(mu: Tensor, sigma: Tensor, uniform: Tensor, log_a: float, log_b: float) -> Tensor:
    """Reparameterised draw ``phi = mu + sigma * Phi^-1(Phi(alpha) + u Z)``.

    ``uniform`` broadcasts against ``mu``. Sampling works in whichever tail keeps ``Phi(alpha)`` and
    ``Z`` representable (the mirror of ``log_normal_mass``). Two guards keep every draw finite:
    the probability is floored at the smallest normal float (a ``u = 0`` draw with ``Phi(alpha) = 0``
    would give ``-inf``), and the result is clamped to the support, which is also the exact limit
    where the truncation mass underflows and the posterior is a point mass at the nearest bound.
    """
    # The per-structure CDFs are computed in float64: torch's float32 ndtr underflows already at -6,
    # and they are only C numbers, while the per-example work below stays in the model's dtype.
    alpha, beta = standardise(mu.double(), sigma.double(), log_a, log_b)
    mirror = alpha > 0
    lo = torch.where(mirror, -beta, alpha)
    hi = torch.where(mirror, -alpha, beta)
    cdf_lo64 = torch.special.ndtr(lo)
    cdf_lo = cdf_lo64.to(mu.dtype)
    mass = (torch.special.ndtr(hi) - cdf_lo64).to(mu.dtype)
    direction = 1.0 - 2.0 * mirror.to(mu.dtype)
    probability = torch.clamp(cdf_lo + uniform * mass, min=torch.finfo(mu.dtype).tiny)
    phi = mu + (sigma * direction) * torch.special.ndtri(probability)
    return torch.clamp(phi, log_a, log_b)
