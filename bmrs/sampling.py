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
* interval far below the mean (``hi < -5``, a unit pressed against ``theta = b``) or far above it
  (mirrored): ``z = hi - t`` with ``t`` solving ``log Phi(hi - t) - log Phi(hi) = log(u + (1-u) r)``
  by Newton's method on Mills ratios, and ``phi`` written from the bound (``log b - sigma t``) so
  nothing is lost to cancellation.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bmrs.truncnorm import log_mills

DEEP_TAIL = 5.0  # standard deviations: beyond this the ordinary inverse CDF runs out of float32 digits
_NEWTON_STEPS = 4


def _log_ndtr_ratio(lo: Tensor, hi: Tensor) -> Tensor:
    """``log(Phi(lo) / Phi(hi))`` for ``lo < hi <= 0``, without forming either log-CDF deep in the tail."""
    a_lo, a_hi = -lo, -hi
    return -0.5 * (a_lo - a_hi) * (a_lo + a_hi) + log_mills(a_lo) - log_mills(a_hi)


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


class TruncatedNormalDraw(torch.autograd.Function):
    """``phi`` for ``uniform`` of shape ``(..., C)`` and per-structure ``mu, sigma`` of shape ``(C,)``."""

    @staticmethod
    def forward(ctx, mu: Tensor, sigma: Tensor, uniform: Tensor, log_a: float, log_b: float) -> Tensor:
        dtype = uniform.dtype
        mu64, sigma64 = mu.detach().double(), sigma.detach().double()
        alpha, beta = (log_a - mu64) / sigma64, (log_b - mu64) / sigma64
        mirror = alpha > 0  # work with the interval on the lower side of the mean: lo <= 0
        lo = torch.where(mirror, -beta, alpha)
        hi = torch.where(mirror, -alpha, beta)
        direction = 1.0 - 2.0 * mirror.double()
        deep = hi < -DEEP_TAIL

        # Ordinary regime; per-structure constants in float64, per-example work in the model dtype.
        safe_lo, safe_hi = torch.where(deep, -1.0, lo), torch.where(deep, 1.0, hi)
        log_lo, log_hi = torch.special.log_ndtr(safe_lo), torch.special.log_ndtr(safe_hi)
        mass = torch.exp(log_hi) * -torch.expm1(log_lo - log_hi)
        below = torch.exp(log_lo).to(dtype)  # Phi(lo)
        above = torch.exp(torch.special.log_ndtr(-safe_hi)).to(dtype)  # 1 - Phi(hi)
        mass = mass.to(dtype)
        p = below + uniform * mass
        q = above + (1.0 - uniform) * mass
        tiny = torch.finfo(dtype).tiny
        z = torch.where(p <= q, torch.special.ndtri(torch.clamp(p, min=tiny)), -torch.special.ndtri(torch.clamp(q, min=tiny)))
        z = torch.minimum(torch.maximum(z, safe_lo.to(dtype)), safe_hi.to(dtype))
        phi = mu.detach().to(dtype) + (sigma.detach() * direction).to(dtype) * z
        ratio_m1 = t = None
        deep_index = None
        if bool(deep.any()):
            deep_index = torch.nonzero(deep).squeeze(1)
            a = (-hi)[deep_index]
            log_r = _log_ndtr_ratio(lo[deep_index], hi[deep_index])
            t, ratio_m1 = _deep_tail_offsets(a, log_r, uniform[..., deep_index].double())
            t = torch.minimum(t, (hi - lo)[deep_index])
            bound = torch.where(mirror, log_a, log_b)[deep_index]
            phi[..., deep_index] = (bound - direction[deep_index] * sigma64[deep_index] * t).to(dtype)
        phi = torch.clamp(phi, log_a, log_b)
        ctx.param_dtype = mu.dtype
        ctx.save_for_backward(uniform, z, safe_lo.to(dtype), safe_hi.to(dtype), direction.to(dtype))
        ctx.deep = (deep_index, None if t is None else t.to(dtype), None if ratio_m1 is None else ratio_m1.to(dtype),
                    None if deep_index is None else (-hi)[deep_index].to(dtype))  # fmt: skip
        return phi

    @staticmethod
    def backward(ctx, grad_phi: Tensor):
        uniform, z, lo, hi, direction = ctx.saved_tensors
        # dz/dlo = (1-u) pdf(lo)/pdf(z), dz/dhi = u pdf(hi)/pdf(z), as exponents of moderate size.
        cap = 80.0
        weight_lo = torch.exp(torch.clamp(torch.log1p(-uniform) + 0.5 * (z - lo) * (z + lo), max=cap))
        weight_hi = torch.exp(torch.clamp(torch.log(uniform) + 0.5 * (z - hi) * (z + hi), max=cap))
        dphi_dmu = 1.0 - weight_lo - weight_hi
        dphi_dsigma = direction * (z - weight_lo * lo - weight_hi * hi)
        deep_index, t, ratio_m1, a = ctx.deep
        if deep_index is not None:
            # phi = bound -+ sigma t(a): dphi/dmu = -dt/da and dphi/dsigma = -+(t - a dt/da), dt/da = R(a+t)/R(a) - 1.
            dphi_dmu[..., deep_index] = -ratio_m1
            dphi_dsigma[..., deep_index] = direction[deep_index] * (a * ratio_m1 - t)
        grad_mu = (grad_phi * dphi_dmu).reshape(-1, z.shape[-1]).sum(0)
        grad_sigma = (grad_phi * dphi_dsigma).reshape(-1, z.shape[-1]).sum(0)
        return grad_mu.to(ctx.param_dtype), grad_sigma.to(ctx.param_dtype), None, None, None
