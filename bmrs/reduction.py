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

from bmrs.truncnorm import LOG_SQRT_2PI, log_normal_mass, log_partition

PAPER_LOG_A = -20.0
PAPER_LOG_B = 0.0


def _check_bounds(log_a: float, log_b: float) -> None:
    if not log_a < log_b:
        raise ValueError(f"truncation bounds need log_a < log_b, got log_a={log_a}, log_b={log_b}")


def _as_tensor(value: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


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

    Eq. 8 as printed subtracts numbers near ``mu_p^2 / sigma_p^2`` (about 4e14 at the paper's
    ``mu_p = -20, sigma_p = 1e-6``). The identities ``mu^2/v + mu_p^2/v_p - mu~^2/v~ =
    (mu - mu_p)^2 / (v + v_p)`` and ``v~ / (v v_p) = 1 / (v + v_p)`` remove that cancellation, and
    the reduced posterior's bounds are measured from ``mu_p`` so that ``mu~ - mu_p`` (tiny when
    ``v_p`` is tiny) is never formed as a difference of two nearly equal numbers.
    """
    _check_bounds(log_a, log_b)
    mu_p = _as_tensor(mu_p, mu)
    sigma_p = _as_tensor(sigma_p, mu)
    if bool((sigma_p <= 0).any()) or bool((sigma <= 0).any()):
        raise ValueError("sigma and sigma_p must be positive standard deviations of log theta")
    var_q = sigma * sigma
    var_p = sigma_p * sigma_p
    var_sum = var_q + var_p
    var_reduced = var_q * var_p / var_sum
    shift = var_p * (mu - mu_p) / var_sum  # mu~ - mu_p
    sigma_reduced = torch.sqrt(var_reduced)
    log_z_reduced = log_normal_mass(
        ((log_a - mu_p) - shift) / sigma_reduced, ((log_b - mu_p) - shift) / sigma_reduced
    )
    log_z_q = log_partition(mu, sigma, log_a, log_b)
    log_z_p = log_partition(mu_p, sigma_p, log_a, log_b)
    return (
        log_z_reduced
        - log_z_q
        - log_z_p
        + math.log(log_b - log_a)
        - LOG_SQRT_2PI
        - 0.5 * torch.log(var_sum)
        - 0.5 * (mu - mu_p) ** 2 / var_sum
    )


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
