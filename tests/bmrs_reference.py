"""Independent numerical references (scipy quad in log space, mpmath) for the BMRS closed forms.

Everything is an integral over ``phi = log theta`` of ``exp(const + sum of Gaussian log-densities)``.
``log_quad`` subtracts the integrand's maximum on the interval before integrating, so references
stay finite where the integral itself underflows, and it evaluates each Gaussian exponent relative
to that maximum as ``-(x - x0)(x + x0 - 2m) / (2 s^2)``, so huge exponents (``(mu - log a)^2 / sigma^2``
~ 1e7) do not cost their digits to cancellation.
"""
from __future__ import annotations

import math

from scipy import integrate

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def log_npdf(x: float, mean: float, sd: float) -> float:
    z = (x - mean) / sd
    return -0.5 * z * z - math.log(sd) - LOG_SQRT_2PI


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def log_quad(terms, const: float, lo: float, hi: float) -> float:
    """``log of the integral over [lo, hi] of exp(const + sum_k log N(x; m_k, s_k^2))`` for ``terms = [(m_k, s_k)]``."""
    precision = sum(1.0 / s**2 for _, s in terms)
    peak = sum(m / s**2 for m, s in terms) / precision
    width = precision**-0.5
    x0 = _clip(peak, lo, hi)
    if peak != x0:  # pressed against a bound: the integrand decays with slope |peak - x0| / width^2 there
        width = min(width, width * width / abs(peak - x0))
    offset = const + sum(log_npdf(x0, m, s) for m, s in terms)

    def relative(x: float) -> float:
        return math.exp(sum(-(x - x0) * ((x - m) + (x0 - m)) / (2.0 * s * s) for m, s in terms))

    steps = (0.0, 0.01, 0.1, 0.3, 1.0, 2.0, 4.0, 8.0, 16.0, 40.0, 100.0)
    points = sorted({_clip(x0 + s * k * width, lo, hi) for k in steps for s in (-1.0, 1.0)} - {lo, hi})
    value, error = integrate.quad(relative, lo, hi, points=points or None, epsabs=0.0, epsrel=1e-12, limit=2000)
    assert value > 0 and error <= 1e-10 * value, (value, error)
    return offset + math.log(value)


def log_z(mean: float, sd: float, lo: float, hi: float) -> float:
    """log mass of N(mean, sd^2) on [lo, hi], numerically."""
    return log_quad([(mean, sd)], 0.0, lo, hi)


def delta_f_lognormal_quad(mu, sigma, mu_p, sigma_p, log_a=-20.0, log_b=0.0, window=None):
    """Eq. 6 literally: log of the integral over phi of ``p~(phi) q(phi) / p(phi)`` (densities in phi),
    ``q = N(mu, sigma^2) / Z_q``, ``p~ = N(mu_p, sigma_p^2) / Z_p``, ``p = 1 / (log b - log a)``.

    ``window`` restricts the integral to ``mu~ +- window * sigma~``, for a reduced prior so narrow
    that the integrand is a spike."""
    log_zq = log_z(mu, sigma, log_a, log_b)
    log_zp = log_z(mu_p, sigma_p, log_a, log_b)
    const = -log_zq - log_zp + math.log(log_b - log_a)
    lo, hi = log_a, log_b
    if window is not None:
        var_t = 1.0 / (1.0 / sigma**2 + 1.0 / sigma_p**2)
        mu_t = var_t * (mu / sigma**2 + mu_p / sigma_p**2)
        lo = max(log_a, mu_t - window * math.sqrt(var_t))
        hi = min(log_b, mu_t + window * math.sqrt(var_t))
    return log_quad([(mu, sigma), (mu_p, sigma_p)], const, lo, hi)


def delta_f_loguniform_quad(mu, sigma, p1, p2=23.0, log_a=-20.0, log_b=0.0):
    """Eq. 6 with ``p~`` uniform in phi on ``[-p2 ln 2, -p1 ln 2]`` (zero outside, so integrate over it only)."""
    lo_r, hi_r = -p2 * math.log(2.0), -p1 * math.log(2.0)
    const = -math.log(hi_r - lo_r) - log_z(mu, sigma, log_a, log_b) + math.log(log_b - log_a)
    return log_quad([(mu, sigma)], const, lo_r, hi_r)


def delta_f_lognormal_mpmath(mu, sigma, mu_p, sigma_p, log_a=-20.0, log_b=0.0, dps=80):
    """Eq. 8 exactly as printed, with ``dps`` significant digits (the cancellation of
    ``mu_p^2 / v_p`` ~ 4e14 costs 15 of them)."""
    import mpmath

    with mpmath.workdps(dps):
        mu, sigma, mu_p, sigma_p = (mpmath.mpf(float(v)) for v in (mu, sigma, mu_p, sigma_p))
        la, lb = mpmath.mpf(log_a), mpmath.mpf(log_b)
        v, vp = sigma**2, sigma_p**2
        vt = 1 / (1 / v + 1 / vp)
        mt = vt * (mu / v + mu_p / vp)

        def z(m, s):
            lower, upper = (la - m) / s, (lb - m) / s
            if lower > 0:  # both in the upper tail: the mirrored interval has the same mass, no cancellation
                lower, upper = -upper, -lower
            return mpmath.ncdf(upper) - mpmath.ncdf(lower)

        value = (
            mpmath.log(z(mt, mpmath.sqrt(vt)) * (lb - la) / (z(mu, sigma) * z(mu_p, sigma_p)))
            + mpmath.log(vt / (2 * mpmath.pi * v * vp)) / 2
            - (mu**2 / v + mu_p**2 / vp - mt**2 / vt) / 2
        )
        return float(value)
