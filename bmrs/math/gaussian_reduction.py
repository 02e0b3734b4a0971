"""Bayesian model reduction for a mean-field Gaussian weight posterior (Markovic et al. 2023).

A weight has the posterior ``q(w) = N(m, s^2)``, fitted under the prior ``p(w) = N(0, g^2)``; the
reduced prior is the spike ``p~(w) = N(0, e^2)`` with ``e << g``. BMR gives the change in log
evidence of that swap without refitting:

    dF = log E_q[ p~(w) / p(w) ] = log integral N(w; m, s^2) N(w; 0, e^2) / N(w; 0, g^2) dw.

The integrand is a Gaussian times ``exp`` of a quadratic, so with the precisions ``1/s^2``,
``1/e^2``, ``1/g^2`` the reduced posterior has precision ``1/s~^2 = 1/s^2 + 1/e^2 - 1/g^2`` and
mean ``m~ = s~^2 m / s^2``, and

    dF = 1/2 log( s~^2 g^2 / (s^2 e^2) ) + 1/2 ( m~^2 / s~^2 - m^2 / s^2 ).

Multiplying the reduced precision by ``s^2 e^2`` gives ``D = e^2 + (1 - e^2/g^2) s^2``, and both
terms collapse onto it:

    dF = 1/2 [ log(g^2 / D) - (1 - e^2/g^2) m^2 / D ],   m~ = m e^2 / D,   s~^2 = s^2 e^2 / D.

That is what is computed here, with ``D`` scaled by ``k = max(s, e)`` (``D / k^2`` lies between
``1 - e^2/g^2`` and 2, so neither ``s^2`` nor ``e^2`` can under- or overflow on its own) and
``1 - e^2/g^2`` as ``(g - e)(g + e) / g^2`` (exact where ``e`` is near ``g``). Nothing is subtracted
that could cancel: for ``e -> 0`` the result tends smoothly to the Savage-Dickey ratio
``log q(0) / p(0) = log(g/s) - m^2 / (2 s^2)``, which ``e = 0`` returns exactly, and for large
``|m| / s`` the quadratic term is a product, not a difference of two large numbers.

Validity: the integral converges only while the reduced precision is positive,
``1/s^2 + 1/e^2 - 1/g^2 > 0`` (``D > 0``). A spike narrower than the prior (``e < g``, the only
case pruning uses) satisfies it for every posterior. Outside it (``e > g`` and a posterior wider
than ``e g / sqrt(e^2 - g^2)``) the integral diverges: ``dF`` is ``+inf``, the exact value, and the
reduced mean and variance are NaN because no normalisable reduced posterior exists.

A weight is pruned where ``dF >= 0``: the evidence does not drop when it is pinned at zero.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _as_tensors(mean: Tensor, std: Tensor, prior_std: Tensor | float, spike_std: Tensor | float) -> tuple[Tensor, ...]:
    dtype = torch.promote_types(mean.dtype, std.dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"mean and std must be floating-point tensors, got {mean.dtype} and {std.dtype}")
    as_tensor = lambda value: torch.as_tensor(value, dtype=dtype, device=mean.device)  # noqa: E731
    return tuple(as_tensor(value) for value in (mean, std, prior_std, spike_std))


def _scaled_reduction(std: Tensor, prior_std: Tensor, spike_std: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(k, slab, core, spike_ratio)``: ``k = max(s, e)``, ``slab = 1 - e^2/g^2``, ``core = D / k^2``
    and ``spike_ratio = (e/k)^2``, the factor the reduced mean needs."""
    k = torch.maximum(std, spike_std)
    slab = (prior_std - spike_std) * (prior_std + spike_std) / prior_std.square()
    spike_ratio = (spike_std / k).square()
    core = spike_ratio + slab * (std / k).square()
    return k, slab, core, spike_ratio


def delta_f_gaussian_spike(
    mean: Tensor, std: Tensor, *, prior_std: Tensor | float, spike_std: Tensor | float
) -> Tensor:
    """``dF`` of replacing the prior ``N(0, prior_std^2)`` by the spike ``N(0, spike_std^2)`` for the
    posterior ``N(mean, std^2)``, elementwise with broadcasting; prune where it is ``>= 0``.

    ``std > 0``, ``prior_std > 0`` and ``spike_std >= 0`` (0 is the Dirac spike: the Savage-Dickey
    ratio). ``+inf`` where the reduced precision ``1/std^2 + 1/spike_std^2 - 1/prior_std^2`` is not
    positive (only possible with ``spike_std > prior_std``), where the integral diverges.
    """
    mean, std, prior_std, spike_std = _as_tensors(mean, std, prior_std, spike_std)
    k, slab, core, _ = _scaled_reduction(std, prior_std, spike_std)
    valid = core > 0
    safe_core = torch.where(valid, core, 1.0)
    log_ratio = 2 * (torch.log(prior_std) - torch.log(k)) - torch.log(safe_core)  # log(g^2 / D)
    quadratic = (mean / k).square() * (slab / safe_core)  # (1 - e^2/g^2) m^2 / D
    return torch.where(valid, 0.5 * (log_ratio - quadratic), torch.inf)


def reduced_gaussian_posterior(
    mean: Tensor, std: Tensor, *, prior_std: Tensor | float, spike_std: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Mean and variance of the reduced posterior ``q~(w) ~ q(w) p~(w) / p(w)``, elementwise:
    ``m~ = m e^2 / D`` and ``s~^2 = s^2 e^2 / D``. For the Dirac spike (``spike_std = 0``) both are
    0; NaN where ``dF`` is ``+inf`` (no normalisable reduced posterior)."""
    mean, std, prior_std, spike_std = _as_tensors(mean, std, prior_std, spike_std)
    k, _, core, spike_ratio = _scaled_reduction(std, prior_std, spike_std)
    valid = core > 0
    safe_core = torch.where(valid, core, 1.0)
    reduced_mean = mean * (spike_ratio / safe_core)
    # s^2 e^2 / D = min(s, e)^2 / (D / k^2): the product of the two small scales never forms.
    reduced_var = torch.minimum(std, spike_std).square() / safe_core
    nan = torch.full_like(reduced_mean, torch.nan)
    return torch.where(valid, reduced_mean, nan), torch.where(valid, reduced_var, nan)


def kl_to_centered_gaussian(mean: Tensor, log_std: Tensor, prior_std: Tensor | float) -> Tensor:
    """``KL( N(mean, exp(log_std)^2) || N(0, prior_std^2) )`` elementwise.

    The textbook ``log(g/s) + (s^2 + m^2) / (2 g^2) - 1/2`` cancels to nothing where ``s ~ g``; with
    ``r = log s - log g`` it is ``(expm1(2 r) - 2 r) / 2 + m^2 / (2 g^2)``, a sum of two terms that
    are each >= 0, so it stays accurate (and >= 0) for every ``r``."""
    prior_std = torch.as_tensor(prior_std, dtype=mean.dtype, device=mean.device)
    r = log_std - torch.log(prior_std)
    return 0.5 * (torch.expm1(2 * r) - 2 * r) + 0.5 * (mean / prior_std).square()
