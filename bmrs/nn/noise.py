"""Multiplicative log-normal noise over structures (paper eq. 7; Neklyudov et al., 2017).

``h_i = theta_i * (w_i h_{i-1})`` with ``q(theta_i)`` a log-normal truncated to ``[a, b]`` and a
log-uniform prior on the same interval. One ``theta_i`` per structure along ``dim`` of the
activation, drawn independently per example in training (like dropout, so a conv filter's whole
feature map shares one draw) and replaced by ``E[theta]`` in evaluation.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.func import grad_and_value

from bmrs.math import truncnorm
from bmrs.math.fused import fused
from bmrs.math.reduction import PAPER_LOG_A, PAPER_LOG_B
from bmrs.math.sampling import TruncatedNormalDraw

LOG_SIGMA_RANGE = (-20.0, 5.0)


@torch.no_grad()
def project_log_sigma_(noises: list[LogNormalNoise]) -> None:
    """Put every ``log sigma`` back into ``LOG_SIGMA_RANGE`` after an optimiser step.

    The clamp in ``sigma_from_log`` has zero gradient outside the range, so a step that carries a
    posterior past a bound (Adam's momentum does) would leave it there for good: a structure whose
    sigma overshot the top could never sharpen again. Projecting the parameter keeps it where the
    gradient still reaches it."""
    for noise in noises:
        noise.log_sigma.clamp_(*LOG_SIGMA_RANGE)


def sigma_from_log(log_sigma: Tensor) -> Tensor:
    """The posterior's sigma; ``log sigma`` is clamped as in the authors' code, so no step can
    collapse a posterior to a point or spread it beyond any use."""
    return torch.exp(torch.clamp(log_sigma, *LOG_SIGMA_RANGE))


class LogNormalNoise(nn.Module):
    """Learned truncated log-normal noise, one variable per structure along ``dim``.

    ``mask`` holds the structures still alive; a pruned structure's noise is exactly zero in both
    training and evaluation, so its activation, and every gradient through it, is zero for good.
    """

    def __init__(
        self,
        num_structures: int,
        *,
        dim: int = 1,
        log_a: float = PAPER_LOG_A,
        log_b: float = PAPER_LOG_B,
        init_mu: float = 0.0,
        init_log_sigma: float = -5.0,
    ) -> None:
        super().__init__()
        if num_structures < 1:
            raise ValueError(f"num_structures must be >= 1, got {num_structures}")
        if not log_a < log_b <= 0.0:
            raise ValueError(f"need log_a < log_b <= 0 (theta in (0, 1]), got {log_a}, {log_b}")
        if dim == 0:
            raise ValueError("dim 0 is the batch axis; structures live along a channel/feature dim such as 1 or -1")
        self.dim = dim
        self.log_a = float(log_a)
        self.log_b = float(log_b)
        self.mu = nn.Parameter(torch.full((num_structures,), float(init_mu)))
        self.log_sigma = nn.Parameter(torch.full((num_structures,), float(init_log_sigma)))
        self.register_buffer("mask", torch.ones(num_structures, dtype=torch.bool))
        self.source: str | None = None  # the layer whose output structures this scales (set by insert_noise)
        # The coupled group this noise belongs to (set by insert_noise): structure i of every noise in
        # one group is the same removable channel, so the group is decided and removed as one.
        self.group: str | None = None
        self.bank = None  # a bmrs.nn.bank.NoiseBank drawing all layers' noise at once, when attached
        self._held_mean: Tensor | None = None  # E[theta] of frozen posteriors (see hold_mean)

    @property
    def num_structures(self) -> int:
        return self.mu.numel()

    def sigma(self) -> Tensor:
        return sigma_from_log(self.log_sigma)

    def _broadcast_shape(self, x: Tensor) -> list[int]:
        dim = self.dim % x.dim()
        if dim == 0 or x.shape[dim] != self.num_structures:
            raise ValueError(
                f"noise over {self.num_structures} structures along dim {self.dim} does not fit an "
                f"activation of shape {tuple(x.shape)} (dim 0 is the batch); insert it after a layer "
                "with that many outputs along a non-batch dim"
            )
        shape = [1] * x.dim()
        shape[0] = x.shape[0]
        shape[dim] = self.num_structures
        return shape

    def forward(self, x: Tensor) -> Tensor:
        shape = self._broadcast_shape(x)
        if self.training:
            draw = self.bank.theta_for(self, x.shape[0]) if self.bank is not None else self.sample(x.shape[0])
            theta = draw.reshape(shape)
        else:
            shape[0] = 1
            theta = (self._held_mean if self._held_mean is not None else self.mean()).reshape(shape)
        return x * theta.to(x.dtype)

    @contextlib.contextmanager
    def hold_mean(self) -> Iterator[None]:
        """Within the block, evaluation uses ``E[theta]`` computed once on entry, without a gradient:
        for training with the posteriors frozen (fine-tuning as deployed), where recomputing the
        float64 moments at every step, and back-propagating into parameters that are not updated,
        would double the step's cost for the same values."""
        self._held_mean = self.mean().detach()
        try:
            yield
        finally:
            self._held_mean = None

    def sample(self, num_draws: int) -> Tensor:
        """``num_draws`` independent draws of every structure's theta, masked: ``(num_draws, C)``."""
        uniform = torch.rand(num_draws, self.num_structures, device=self.mu.device, dtype=self.mu.dtype)
        return TruncatedNormalDraw.apply(self.mu, self.sigma(), uniform, self.log_a, self.log_b, self.mask)

    def _posterior64(self) -> tuple[Tensor, Tensor]:
        # Posterior statistics are C numbers per layer, so they are computed in float64: in float32
        # the tail masses lose enough digits to put Var[theta] off by 10% for a unit near theta = 1.
        return self.mu.double(), self.sigma().double()

    def kl(self) -> Tensor:
        """Per-structure ``KL(q || p)``; zero for pruned structures, which no longer carry a posterior."""
        return masked_kl(self.mu, self.log_sigma, self.mask, self.log_a, self.log_b)

    @torch.no_grad()
    def make_identity_(self) -> None:
        """The posterior of a factor of one: all mass at ``log b`` with the narrowest sigma allowed.
        Used once the factor has been folded into the source layer's weights."""
        self.mu.fill_(self.log_b)
        self.log_sigma.fill_(LOG_SIGMA_RANGE[0])

    def mean(self) -> Tensor:
        """``E[theta]`` per structure, zero where pruned."""
        log_m1 = truncnorm.log_moment(*self._posterior64(), 1, self.log_a, self.log_b)
        return (torch.exp(log_m1) * self.mask).to(self.mu.dtype)

    def _log_mean_and_variance(self) -> tuple[Tensor, Tensor]:
        mu, sigma = self._posterior64()
        log_m1 = truncnorm.log_moment(mu, sigma, 1, self.log_a, self.log_b)
        log_m2 = truncnorm.log_moment(mu, sigma, 2, self.log_a, self.log_b)
        # Var = m2 (1 - exp(2 log m1 - log m2)); Jensen makes the exponent <= 0, rounding may not.
        gap = torch.clamp(2.0 * log_m1 - log_m2, max=-torch.finfo(torch.float64).tiny)
        return log_m1, log_m2 + truncnorm.log1mexp(gap)

    def var(self) -> Tensor:
        """``Var[theta]`` per structure, from log moments so that it never goes negative; zero where pruned."""
        return (torch.exp(self._log_mean_and_variance()[1]) * self.mask).to(self.mu.dtype)

    def snr(self) -> Tensor:
        """``E[theta] / sqrt(Var[theta])``; zero where pruned. In logs: no overflow for a nearly deterministic unit."""
        log_mean, log_var = self._log_mean_and_variance()
        return (torch.exp(log_mean - 0.5 * log_var) * self.mask).to(self.mu.dtype)

    @torch.no_grad()
    def prune_(self, structures: Tensor) -> int:
        """Remove ``structures`` (a bool mask over structures) for good; returns how many were newly removed."""
        if structures.shape != self.mask.shape or structures.dtype != torch.bool:
            raise ValueError(
                f"prune_ takes a bool mask of shape {tuple(self.mask.shape)}, got "
                f"{structures.dtype} of shape {tuple(structures.shape)}"
            )
        newly = structures & self.mask
        self.mask &= ~structures
        return int(newly.sum())

    def extra_repr(self) -> str:
        alive = int(self.mask.sum())
        return f"{alive}/{self.num_structures} alive, dim={self.dim}, log_a={self.log_a}, log_b={self.log_b}"


def _masked_kl(mu: Tensor, log_sigma: Tensor, mask: Tensor, log_a: float, log_b: float) -> Tensor:
    """Per-structure ``KL(q || p)`` in float64, zero where ``mask`` is False, in ``mu``'s dtype."""
    sigma = sigma_from_log(log_sigma)
    return (truncnorm.kl_to_log_uniform(mu.double(), sigma.double(), log_a, log_b) * mask).to(mu.dtype)


masked_kl = fused(_masked_kl)


def _weighted_kl(mu: Tensor, log_sigma: Tensor, mask: Tensor, weights: Tensor, log_a: float, log_b: float) -> Tensor:
    return (_masked_kl(mu, log_sigma, mask, log_a, log_b) * weights).sum()


@fused
def _weighted_kl_and_gradient(mu, log_sigma, mask, weights, log_a: float, log_b: float):
    (grad_mu, grad_log_sigma), value = grad_and_value(_weighted_kl, argnums=(0, 1))(mu, log_sigma, mask, weights, log_a, log_b)
    return value, grad_mu, grad_log_sigma


class WeightedKL(torch.autograd.Function):
    """``sum(weights * KL)`` over structures, its gradient computed in the same fused forward pass.

    The KL depends on nothing but the noise parameters, so its value and gradient come out of one
    kernel (``torch.func.grad_and_value``); the backward pass only scales them. That saves the
    autograd graph of a few dozen special-function ops per training step."""

    @staticmethod
    def forward(ctx, mu: Tensor, log_sigma: Tensor, mask: Tensor, weights: Tensor, log_a: float, log_b: float) -> Tensor:
        value, grad_mu, grad_log_sigma = _weighted_kl_and_gradient(
            mu.detach(), log_sigma.detach(), mask, weights, log_a, log_b
        )
        ctx.save_for_backward(grad_mu, grad_log_sigma)
        return value

    @staticmethod
    def backward(ctx, grad_value: Tensor):
        grad_mu, grad_log_sigma = ctx.saved_tensors
        return grad_value * grad_mu, grad_value * grad_log_sigma, None, None, None, None


def noise_modules(model: nn.Module) -> dict[str, LogNormalNoise]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LogNormalNoise)}


def noise_modules_under(model: nn.Module, path: str, setting: str) -> dict[str, LogNormalNoise]:
    """The noise modules whose layer is ``path`` or lies under it (``features`` names every noisy
    layer in ``features``); ``setting`` names what asked, for the error when none does."""
    # A wrapped layer's recorded source ends in ".inner"; users name the layer as the model has it.
    noises = noise_modules(model)
    layers = {name: noise.source.removesuffix(".inner") for name, noise in noises.items()}
    chosen = {name: noises[name] for name, layer in layers.items() if layer == path or layer.startswith(path + ".")}
    if not chosen:
        raise ValueError(f"{setting} names {path!r}, which holds no noise layer; the noisy layers are {sorted(set(layers.values()))}")
    return chosen
