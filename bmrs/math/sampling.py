"""Exact, cheap reparameterised draws from a normal truncated to ``[log a, log b]``.

``phi = mu + sigma * z`` with ``z`` the inverse-CDF transform of a uniform ``u`` restricted to the
standardised interval. Done naively (``Phi^-1(Phi(alpha) + u Z)`` with autograd through every op)
this is wrong in the tails, where ``Phi`` underflows, and it records a few dozen autograd nodes per
step. Here the forward pass is a handful of elementwise ops without a graph, and the backward pass
is the implicit-reparameterisation gradient in closed form (Figurnov et al., 2018):

    pdf(z) dz = (1 - u) pdf(lo) dlo + u pdf(hi) dhi,   lo = (log a - mu)/sigma,  hi = (log b - mu)/sigma.

Three regimes, chosen per structure:

* ordinary: ``z = Phi^-1(p)`` with ``p = Phi(lo) + u Z``, or ``z = -Phi^-1(q)`` with the complementary
  ``q = 1 - p`` where that is the smaller one, so neither tail loses digits to rounding near 1;
* interval far below the mean (``hi < -12`` in float32, ``-5`` in float64: a unit pressed against ``theta = b``) or far above it
  (mirrored): ``z = hi - t`` with ``t`` solving ``log Phi(hi - t) - log Phi(hi) = log(u + (1-u) r)``
  by Newton's method on Mills ratios, and ``phi`` written from the bound (``log b - sigma t``) so
  nothing is lost to cancellation.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bmrs.math.fused import fused
from bmrs.math.truncnorm import log_mills

# Standard deviations below which the interval counts as deep in a tail. float32 draws stay on the
# ordinary path down to 12 (Phi(-12) ~ 2e-33 is still a normal float32 and the inverse CDF keeps 1e-9
# relative accuracy): the deep path is exact but costs several special-function passes, and units
# pressed against theta = 1 are common early in training. float64 switches at 5.
DEEP_TAIL = {torch.float32: 12.0, torch.float64: 5.0}
_NEWTON_STEPS = 4


def _log_ndtr_ratio(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(lo) / Phi(hi))`` for ``lo < hi <= 0``, without forming either log-CDF deep in the tail."""
    a_lo, a_hi = -lo, -hi
    return -0.5 * (a_lo - a_hi) * (a_lo + a_hi) + log_mills(a_lo) - log_mills(a_hi)


@fused
def _deep_tail_offsets(a: Tensor, log_r: Tensor, uniform: Tensor) -> tuple[Tensor, Tensor]:
    """``t >= 0`` with ``Phi(-(a + t)) / Phi(-a) = u + (1 - u) r``, and ``R(a + t) / R(a) - 1``.

    ``h(t) = -(a t + t^2/2) + log R(a + t) - log R(a)`` is decreasing with ``h'(t) = -1 / R(a + t)``;
    Newton's method from the exponential-tail guess ``t = -w / a`` converges in a few steps.
    """
    target = torch.log(torch.clamp(uniform + (1.0 - uniform) * torch.exp(log_r), min=torch.finfo(a.dtype).tiny))
    log_r_a = log_mills(a)
    t = -target / a
    for _ in range(_NEWTON_STEPS):
        log_r_at = log_mills(a + t)
        h = -(a * t + 0.5 * t * t) + log_r_at - log_r_a
        t = torch.clamp(t + (h - target) * torch.exp(log_r_at), min=0.0)
    return t, torch.expm1(log_mills(a + t) - log_r_a)


# Acklam's (2003) rational approximation of Phi^-1, relative error below 1.2e-9 (checked in the tests).
_CENTRAL_NUM = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
_CENTRAL_DEN = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01, -1.328068155288572e01, 1.0)
_TAIL_NUM = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
_TAIL_DEN = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00, 1.0)
_TAIL_BELOW = 0.02425


def _polynomial(coefficients: tuple[float, ...], x: Tensor) -> Tensor:
    result = torch.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        result = result * x + c
    return result


def inverse_normal_cdf_lower_half(p: Tensor) -> Tensor:
    """``Phi^-1(p)`` for ``0 < p <= 1/2``, to 1.2e-9 relative, in plain elementwise ops.

    Unlike ``torch.special.ndtri`` (a scalar loop, 11 ns per element here) it vectorises when fused,
    and float32 models need no more digits. Evaluated in float64: in float32 the polynomials
    themselves lose 2e-4."""
    wide = p.double()
    root = torch.sqrt(-2.0 * torch.log(torch.clamp(wide, min=1e-300)))
    tail = _polynomial(_TAIL_NUM, root) / _polynomial(_TAIL_DEN, root)
    centred = wide - 0.5
    square = centred * centred
    central = centred * _polynomial(_CENTRAL_NUM, square) / _polynomial(_CENTRAL_DEN, square)
    return torch.where(wide < _TAIL_BELOW, tail, central).to(p.dtype)


def _structure_constants(mu: Tensor, sigma: Tensor, log_a: float, log_b: float, deep_below: float) -> tuple[Tensor, ...]:
    """Per-structure float64 constants: the interval on the lower side of the mean and its CDFs."""
    alpha, beta = (log_a - mu) / sigma, (log_b - mu) / sigma
    mirror = alpha > 0
    lo = torch.where(mirror, -beta, alpha)
    hi = torch.where(mirror, -alpha, beta)
    direction = 1.0 - 2.0 * mirror.double()
    deep = hi < -deep_below
    safe_lo, safe_hi = torch.where(deep, -1.0, lo), torch.where(deep, 1.0, hi)
    log_lo, log_hi = torch.special.log_ndtr(safe_lo), torch.special.log_ndtr(safe_hi)
    mass = torch.exp(log_hi) * -torch.expm1(log_lo - log_hi)
    below, above = torch.exp(log_lo), torch.exp(torch.special.log_ndtr(-safe_hi))  # Phi(lo), 1 - Phi(hi)
    return lo, hi, direction, deep, safe_lo, safe_hi, below, above, mass


def _ordinary_phi(uniform: Tensor, below: Tensor, above: Tensor, mass: Tensor, lo: Tensor, hi: Tensor,
                  mu: Tensor, scale: Tensor, log_a: float, log_b: float) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(z, phi)`` for every uniform: the smaller of ``p`` and ``1 - p`` is inverted, so neither tail
    loses digits to rounding near 1."""
    p = below + uniform * mass
    q = above + (1.0 - uniform) * mass
    smaller = torch.clamp(torch.minimum(p, q), min=torch.finfo(p.dtype).tiny)
    if p.dtype == torch.float64:
        magnitude = torch.special.ndtri(smaller)
    else:
        magnitude = inverse_normal_cdf_lower_half(smaller)
    z = torch.minimum(torch.maximum(torch.where(p <= q, magnitude, -magnitude), lo), hi)
    return z, torch.clamp(mu + scale * z, log_a, log_b)


@fused
def _draw(mu: Tensor, sigma: Tensor, uniform: Tensor, mask: Tensor | None, log_a: float, log_b: float):
    """One fused pass: per-structure constants (float64), then every draw (the uniform's dtype).

    Returns ``(out, dout_dmu, dout_dsigma, lo, hi, direction, deep)``: ``out`` is ``phi``, or
    ``exp(phi) * mask``, and its derivatives per draw are computed in the same pass, so the backward
    pass is two multiply-and-sums."""
    dtype = uniform.dtype
    deep_below = DEEP_TAIL.get(dtype, 5.0)
    lo, hi, direction, deep, safe_lo, safe_hi, below, above, mass = _structure_constants(
        mu.double(), sigma.double(), log_a, log_b, deep_below
    )
    lo_d, hi_d = safe_lo.to(dtype), safe_hi.to(dtype)
    scale = sigma.to(dtype) * direction.to(dtype)
    z, phi = _ordinary_phi(uniform, below.to(dtype), above.to(dtype), mass.to(dtype), lo_d, hi_d, mu.to(dtype), scale, log_a, log_b)
    dphi_dmu, dphi_dsigma = _phi_derivatives(uniform, z, lo_d, hi_d, direction.to(dtype))
    if mask is None:
        return phi, dphi_dmu, dphi_dsigma, lo, hi, direction, deep
    theta = torch.exp(phi) * mask.to(dtype)  # dtheta/dphi = theta, zero where pruned
    return theta, dphi_dmu * theta, dphi_dsigma * theta, lo, hi, direction, deep


def _phi_derivatives(uniform: Tensor, z: Tensor, lo: Tensor, hi: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
    """``dphi/dmu`` and ``dphi/dsigma`` per draw, from ``dz/dlo = (1-u) pdf(lo)/pdf(z)`` and
    ``dz/dhi = u pdf(hi)/pdf(z)``. The cap only bites where the uniform factor is exactly 0 (a
    ``u = 0`` draw clamped onto ``lo``), keeping ``0 * exp(...)`` finite."""
    half_z2 = 0.5 * z * z
    weight_lo = (1.0 - uniform) * torch.exp(torch.clamp(half_z2 - 0.5 * lo * lo, max=80.0))
    weight_hi = uniform * torch.exp(torch.clamp(half_z2 - 0.5 * hi * hi, max=80.0))
    return 1.0 - weight_lo - weight_hi, direction * (z - weight_lo * lo - weight_hi * hi)


class TruncatedNormalDraw(torch.autograd.Function):
    """Draws for ``uniform`` of shape ``(..., C)`` and per-structure ``mu, sigma`` of shape ``(C,)``.

    Returns ``phi``, or ``theta = exp(phi) * mask`` when a ``mask`` is given (one fused kernel
    instead of three ops and their backward passes)."""

    @staticmethod
    def forward(ctx, mu: Tensor, sigma: Tensor, uniform: Tensor, log_a: float, log_b: float, mask: Tensor | None = None) -> Tensor:
        dtype = uniform.dtype
        out, d_mu, d_sigma, lo, hi, direction, deep = _draw(mu.detach(), sigma.detach(), uniform, mask, log_a, log_b)
        if bool(deep.any()):
            index = torch.nonzero(deep).squeeze(1)
            a = (-hi)[index]
            t, ratio_m1 = _deep_tail_offsets(a, _log_ndtr_ratio(lo[index], hi[index]), uniform[..., index].double())
            t = torch.minimum(t, (hi - lo)[index])
            bound = torch.where(direction < 0, log_a, log_b)[index]
            phi = torch.clamp(bound - direction[index] * sigma.detach().double()[index] * t, log_a, log_b).to(dtype)
            # phi = bound -+ sigma t(a): dphi/dmu = -dt/da, dphi/dsigma = -+(t - a dt/da), dt/da = R(a+t)/R(a) - 1.
            dphi_dmu = (-ratio_m1).to(dtype)
            dphi_dsigma = (direction[index] * (a * ratio_m1 - t)).to(dtype)
            if mask is None:
                out[..., index], d_mu[..., index], d_sigma[..., index] = phi, dphi_dmu, dphi_dsigma
            else:
                theta = torch.exp(phi) * mask[index].to(dtype)
                out[..., index], d_mu[..., index], d_sigma[..., index] = theta, dphi_dmu * theta, dphi_dsigma * theta
        ctx.param_dtype = mu.dtype
        ctx.save_for_backward(d_mu, d_sigma)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        d_mu, d_sigma = ctx.saved_tensors
        columns = d_mu.shape[-1]
        grad_mu = (grad_out * d_mu).reshape(-1, columns).sum(0)
        grad_sigma = (grad_out * d_sigma).reshape(-1, columns).sum(0)
        return grad_mu.to(ctx.param_dtype), grad_sigma.to(ctx.param_dtype), None, None, None, None


def sample_phi(mu: Tensor, sigma: Tensor, uniform: Tensor, log_a: float, log_b: float) -> Tensor:
    """Reparameterised draw of ``phi`` for every ``uniform`` (broadcast against ``mu``).

    The draw is the exact inverse-CDF transform of ``uniform``, with gradients to ``mu`` and
    ``sigma`` by implicit differentiation of that transform (see ``TruncatedNormalDraw``).
    """
    return TruncatedNormalDraw.apply(mu, sigma, uniform.expand(*uniform.shape[:-1], mu.shape[-1]), log_a, log_b)
