"""Bayesian model reduction for the multiplicative-noise posterior (paper section 4.2).

``dF = log E_{p~}[q(theta) / p(theta)]`` is the change in log evidence when the log-uniform prior
``p`` on ``[a, b]`` is replaced by a reduced prior ``p~``; a structure is pruned when ``dF >= 0``.
All functions are elementwise over tensors of ``mu`` and ``sigma`` (the parameters of
``log theta``), work in float32 and float64, and stay finite wherever the exact value is finite.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from bmrs.math.truncnorm import LOG_SQRT_2PI, log_normal_mass, log_normal_pdf, log_partition, log_scaled_upper_mass

PAPER_LOG_A = -20.0
PAPER_LOG_B = 0.0


def _check_bounds(log_a: float, log_b: float) -> None:
    if not log_a < log_b:
        raise ValueError(f"truncation bounds need log_a < log_b, got log_a={log_a}, log_b={log_b}")


def _as_tensor(value: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _log_density_at_lower_bound(mu: Tensor, var: Tensor, log_a: float, log_b: float) -> Tensor:
    """log of the truncated normal's density at ``phi = log_a``.

    With the mean below the bound (``alpha >= 0``) it is ``-log sigma - log S(alpha, beta)``, which stays
    moderate where ``-alpha^2/2 - log Z`` would subtract two numbers near ``alpha^2 / 2``."""
    sigma = torch.sqrt(var)
    alpha, beta = (log_a - mu) / sigma, (log_b - mu) / sigma
    upper = alpha >= 0
    tail = -torch.log(sigma) - log_scaled_upper_mass(torch.where(upper, alpha, 0.0), torch.where(upper, beta, 1.0))
    direct = log_normal_pdf(alpha) - torch.log(sigma) - log_normal_mass(alpha, beta)
    return torch.where(upper, tail, direct)


def _delta_f_at_lower_bound(
    mu: Tensor, var: Tensor, mu_p: Tensor, var_p: Tensor, log_a: float, log_b: float
) -> Tensor:
    """``dF`` when the product ``q p~`` is concentrated at ``log_a``: anchored there.

    ``q(phi) p~(phi) = q(a) p~(a) exp(-A s^2 - B s)`` with ``s = phi - log a``, ``A = 1 / (2 v~)`` and
    ``B = (log a - mu)/v + (log a - mu_p)/v_p``; its integral over ``[0, log b - log a]`` is
    ``sigma~ S(sigma~ B, sigma~ B + W / sigma~)``."""
    var_reduced = var * var_p / (var + var_p)
    sigma_reduced = torch.sqrt(var_reduced)
    alpha_reduced = sigma_reduced * ((log_a - mu) / var + (log_a - mu_p) / var_p)
    beta_reduced = alpha_reduced + (log_b - log_a) / sigma_reduced
    upper = alpha_reduced >= 0
    log_integral = torch.log(sigma_reduced) + log_scaled_upper_mass(
        torch.where(upper, alpha_reduced, 0.0), torch.where(upper, beta_reduced, 1.0)
    )
    return (
        math.log(log_b - log_a)
        + _log_density_at_lower_bound(mu, var, log_a, log_b)
        + _log_density_at_lower_bound(mu_p, var_p, log_a, log_b)
        + log_integral
    )


def delta_f_lognormal(
    mu: Tensor,
    sigma: Tensor,
    *,
    mu_p: Tensor | float,
    sigma_p: Tensor | float,
    log_a: float = PAPER_LOG_A,
    log_b: float = PAPER_LOG_B,
) -> Tensor:
    """BMRS_N: ``dF`` for a truncated log-normal reduced prior ``(mu_p, sigma_p^2)`` (paper eq. 8).

    ``exp(dF) = (log b - log a) N(mu; mu_p, v + v_p) Z~ / (Z_q Z_p)``: eq. 8 after the identities
    ``mu^2/v + mu_p^2/v_p - mu~^2/v~ = (mu - mu_p)^2 / (v + v_p)`` and ``v~/(v v_p) = 1/(v + v_p)``,
    which remove the subtraction of two numbers near 4e14 at the paper's ``sigma_p = 1e-6``.
    The reduced posterior's bounds are measured as ``sigma~ B`` (never as ``log a - mu~``). Where the
    reduced posterior sits against a bound (``alpha~ >= 0`` or ``beta~ <= 0``), ``log Z~`` and
    ``log Z_q`` are both near ``-alpha^2 / 2`` (up to 1e19) and cancel; there ``dF`` is anchored at
    that bound instead (``_delta_f_at_lower_bound``, mirrored for the upper one).
    """
    _check_bounds(log_a, log_b)
    mu_p = _as_tensor(mu_p, mu)
    sigma_p = _as_tensor(sigma_p, mu)
    if bool((sigma_p <= 0).any()) or bool((sigma <= 0).any()):
        raise ValueError("sigma and sigma_p must be positive standard deviations of log theta")
    var_q = sigma * sigma
    var_p = sigma_p * sigma_p
    var_sum = var_q + var_p
    sigma_reduced = torch.sqrt(var_q * var_p / var_sum)
    alpha_reduced = sigma_reduced * ((log_a - mu) / var_q + (log_a - mu_p) / var_p)
    beta_reduced = sigma_reduced * ((log_b - mu) / var_q + (log_b - mu_p) / var_p)
    at_lower = alpha_reduced >= 0
    at_upper = beta_reduced <= 0
    interior = (
        log_normal_mass(torch.where(at_lower | at_upper, -1.0, alpha_reduced), torch.where(at_lower | at_upper, 1.0, beta_reduced))
        - log_partition(mu, sigma, log_a, log_b)
        - log_partition(mu_p, sigma_p, log_a, log_b)
        + math.log(log_b - log_a)
        - LOG_SQRT_2PI
        - 0.5 * torch.log(var_sum)
        - 0.5 * (mu - mu_p) ** 2 / var_sum
    )
    lower = _delta_f_at_lower_bound(mu, var_q, mu_p, var_p, log_a, log_b)
    upper = _delta_f_at_lower_bound(-mu, var_q, -mu_p, var_p, -log_b, -log_a)  # mirrored: phi -> -phi
    return torch.where(at_lower, lower, torch.where(at_upper, upper, interior))


def delta_f_loguniform(
    mu: Tensor,
    sigma: Tensor,
    *,
    p1: float,
    p2: float = 23,
    log_a: float = PAPER_LOG_A,
    log_b: float = PAPER_LOG_B,
) -> Tensor:
    """BMRS_U-p1: ``dF`` for a log-uniform reduced prior on ``[2^-p2, 2^-p1]`` (paper eq. 10).

    ``dF = log((log b - log a) / (log b' - log a')) + log q(a' <= theta <= b')``; the interval mass
    is a truncated-normal mass in ``log theta`` and is taken as a log-difference of CDFs.
    """
    _check_bounds(log_a, log_b)
    if not 0 <= p1 < p2:
        raise ValueError(f"BMRS_U needs 0 <= p1 < p2, got p1={p1}, p2={p2}")
    log_a_reduced = -p2 * math.log(2.0)
    log_b_reduced = -p1 * math.log(2.0)
    if log_a_reduced < log_a or log_b_reduced > log_b:
        raise ValueError(
            f"the reduced support [2^-{p2}, 2^-{p1}] must lie inside the prior's [e^{log_a}, e^{log_b}]; "
            "choose p1, p2 accordingly"
        )
    if bool((sigma <= 0).any()):
        raise ValueError("sigma must be a positive standard deviation of log theta")
    log_mass = log_normal_mass((log_a_reduced - mu) / sigma, (log_b_reduced - mu) / sigma)
    return (
        math.log((log_b - log_a) / (log_b_reduced - log_a_reduced))
        + log_mass
        - log_partition(mu, sigma, log_a, log_b)
    )
