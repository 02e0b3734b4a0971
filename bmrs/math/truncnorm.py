"""Truncated-normal quantities in log space, finite and accurate far into the tails.

Every BMRS quantity is a statement about a normal distribution in ``phi = log theta`` truncated to
``[log a, log b]``. Two things go wrong with the textbook formulas:

* masses such as ``Phi(beta) - Phi(alpha)`` underflow (torch's ``ndtr`` returns 0 below about -8.3,
  even in float64), so everything is built from ``log_ndtr``;
* when the kept interval lies many standard deviations to one side of ``mu`` (a unit pressed
  against ``theta = a`` or ``theta = b`` with a small sigma), log-masses are about ``-alpha^2 / 2``
  (up to 1e19 at the clamp floor ``sigma = e^-20``) and the entropy, the moments and ``dF`` each
  subtract two such numbers. There the mass is written as ``pdf(lo) * S(lo, hi)`` with the Mills
  ratio ``R(x) = Phi(-x) / pdf(x)``, and the ``-lo^2 / 2`` parts cancel analytically.

Standardised bounds are called ``lo < hi``. "Upper tail" means ``lo >= 0``: the interval lies above
the mean. An interval with ``hi <= 0`` is mirrored to ``(-hi, -lo)``, which has the same mass.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_SQRT_HALF_PI = 0.5 * math.log(0.5 * math.pi)
_LOG_2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
_MILLS_SERIES_FROM = 30.0


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate near both ends (Maechler, 2012)."""
    return torch.where(x > -_LOG_2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _negative(x: Tensor) -> Tensor:
    # log1mexp needs a strictly negative argument; rounding can give 0 where the exact value is < 0.
    return torch.clamp(x, max=-torch.finfo(x.dtype).tiny)


def log_normal_pdf(x: Tensor) -> Tensor:
    return -0.5 * x * x - LOG_SQRT_2PI


def log_mills(x: Tensor) -> Tensor:
    """``log R(x)``, ``R(x) = Phi(-x) / pdf(x)``, for ``x >= -25`` (``erfcx`` overflows below)."""
    return _LOG_SQRT_HALF_PI + torch.log(torch.special.erfcx(x * _SQRT_HALF))


def one_minus_x_mills(x: Tensor) -> Tensor:
    """``1 - x R(x)`` for ``x >= 0``; tends to ``1/x^2``, so large ``x`` uses the asymptotic series."""
    small = torch.clamp(x, max=_MILLS_SERIES_FROM)
    direct = 1.0 - small * torch.exp(log_mills(small))
    y = 1.0 / torch.clamp(x, min=_MILLS_SERIES_FROM) ** 2
    series = y * (1.0 - 3.0 * y * (1.0 - 5.0 * y * (1.0 - 7.0 * y * (1.0 - 9.0 * y))))
    return torch.where(x > _MILLS_SERIES_FROM, series, direct)


def log_scaled_upper_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """``log S(lo, hi) = log((Phi(-lo) - Phi(-hi)) / pdf(lo))`` for ``0 <= lo < hi``.

    ``S = R(lo) - exp(-(hi - lo)(hi + lo) / 2) R(hi)``: every term is of moderate size however far
    ``lo`` is into the tail (``S`` tends to ``1 / lo``)."""
    log_r_lo = log_mills(lo)
    return log_r_lo + log1mexp(_negative(-0.5 * (hi - lo) * (hi + lo) + log_mills(hi) - log_r_lo))


def log_normal_mass(lower: Tensor, upper: Tensor) -> Tensor:
    """``log(Phi(upper) - Phi(lower))`` for standardised bounds ``lower < upper``."""
    mirror = lower > 0
    lo = torch.where(mirror, -upper, lower)
    hi = torch.where(mirror, -lower, upper)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + log1mexp(_negative(torch.special.log_ndtr(lo) - log_hi))


def standardise(mu: Tensor, sigma: Tensor, log_a: float, log_b: float) -> tuple[Tensor, Tensor]:
    return (log_a - mu) / sigma, (log_b - mu) / sigma


def log_partition(mu: Tensor, sigma: Tensor, log_a: float, log_b: float) -> Tensor:
    """``log Z`` of ``N(mu, sigma^2)`` truncated to ``[log_a, log_b]``."""
    alpha, beta = standardise(mu, sigma, log_a, log_b)
    return log_normal_mass(alpha, beta)


def _one_sided(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(lo, hi, is_tail): the interval mirrored into the upper tail where it lies below the mean.

    Where the interval straddles the mean, ``lo, hi`` are harmless placeholders (1, 2) so that the
    tail formulas stay finite there: their values are discarded, but NaN would still poison gradients.
    """
    flip = beta <= 0
    lo = torch.where(flip, -beta, alpha)
    hi = torch.where(flip, -alpha, beta)
    tail = lo >= 0
    return torch.where(tail, lo, 1.0), torch.where(tail, hi, 2.0), tail


def entropy(mu: Tensor, sigma: Tensor, log_a: float, log_b: float) -> Tensor:
    """Differential entropy of the truncated normal in ``phi``."""
    alpha, beta = standardise(mu, sigma, log_a, log_b)
    lo, hi, tail = _one_sided(alpha, beta)
    # One-sided: z = lo + t with density exp(-lo t - t^2/2) / S on [0, W]; integrating by parts gives
    # lo E[t] = lo (1 - lo R(lo) - E_W (1 - lo R(hi))) / S and E[t^2] = 1 - W E_W / S - lo E[t].
    log_s = log_scaled_upper_mass(lo, hi)
    s = torch.exp(log_s)
    width = hi - lo
    e_w = torch.exp(-0.5 * width * (hi + lo))
    lo_mean_t = lo * (one_minus_x_mills(lo) - e_w * (1.0 - lo * torch.exp(log_mills(hi)))) / s
    tail_h = log_s + 0.5 + 0.5 * lo_mean_t - 0.5 * width * e_w / s
    # Straddling the mean: the textbook formula has nothing to cancel.
    a = torch.where(tail, -1.0, alpha)
    b = torch.where(tail, 1.0, beta)
    log_z = log_normal_mass(a, b)
    a_term = a * torch.exp(log_normal_pdf(a) - log_z)
    b_term = b * torch.exp(log_normal_pdf(b) - log_z)
    straddle_h = LOG_SQRT_2PI + 0.5 + log_z + 0.5 * (a_term - b_term)
    return torch.where(tail, tail_h, straddle_h) + torch.log(sigma)


def kl_to_log_uniform(mu: Tensor, sigma: Tensor, log_a: float, log_b: float) -> Tensor:
    """``KL(q || p)`` for the truncated log-normal ``q`` and the log-uniform prior on ``[a, b]``.

    KL is invariant to the change of variables ``theta -> log theta``, so it is computed in ``phi``
    where the prior is uniform with density ``1 / (log b - log a)``.
    """
    return math.log(log_b - log_a) - entropy(mu, sigma, log_a, log_b)


def log_moment(mu: Tensor, sigma: Tensor, order: int, log_a: float, log_b: float) -> Tensor:
    """``log E[theta^order]`` for ``theta = exp(phi)``, ``phi`` truncated normal.

    ``E[theta^k] = exp(k mu + k^2 sigma^2 / 2) Z(alpha - k sigma, beta - k sigma) / Z(alpha, beta)``.
    Deep in a tail the exponent and the mass ratio cancel to ``k log a`` (or ``k log b``) plus a
    ratio of scaled masses, which is how it is computed there.
    """
    alpha, beta = standardise(mu, sigma, log_a, log_b)
    shift = order * sigma
    below = beta <= 0  # the interval lies below the mean: theta pressed against b
    above = ~below & (alpha - shift >= 0)  # above the mean even after the shift: pressed against a
    lo = torch.where(below, -beta, torch.where(above, alpha - shift, 1.0))
    hi = torch.where(below, -alpha, torch.where(above, beta - shift, 2.0))
    step = torch.where(below, shift, torch.where(above, shift, 0.0))
    anchor = torch.where(below, order * log_b, order * log_a)
    # lo_shifted = lo + shift (mirrored, below) or lo (already shifted, above); the reference is the other.
    lo_num, hi_num = torch.where(below, lo + step, lo), torch.where(below, hi + step, hi)
    lo_den, hi_den = torch.where(below, lo, lo + step), torch.where(below, hi, hi + step)
    tail = anchor + log_scaled_upper_mass(lo_num, hi_num) - log_scaled_upper_mass(lo_den, hi_den)
    a = torch.where(below | above, -1.0, alpha)
    b = torch.where(below | above, 1.0, beta)
    s = torch.where(below | above, 0.0, shift)
    middle = order * mu + 0.5 * shift * shift + log_normal_mass(a - s, b - s) - log_normal_mass(a, b)
    return torch.where(below | above, tail, middle)
