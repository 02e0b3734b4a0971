"""One batch of ops per training step for all of a model's noise layers.

Each ``LogNormalNoise`` costs a few dozen tiny tensor ops per step (its float64 truncation
constants, its draw, its KL, and their backward passes). On a small CPU model the per-op overhead of
those, times the number of layers, costs more than the convolutions: the paper's own code trains
4.9x-8.3x slower with noise than without. ``NoiseBank`` concatenates every layer's parameters and
does the same math once for the whole model: one draw of all thetas per forward pass, and one KL.
Each layer still owns its parameters, so state dicts, criteria and export see no difference.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bmrs.math.sampling import TruncatedNormalDraw
from bmrs.nn.noise import LogNormalNoise, WeightedKL, noise_modules, sigma_from_log


class NoiseBank:
    """Shared sampler and KL for a fixed list of noise layers with common truncation bounds."""

    def __init__(self, layers: list[LogNormalNoise]) -> None:
        if not layers:
            raise ValueError("a NoiseBank needs at least one LogNormalNoise layer")
        bounds = {(layer.log_a, layer.log_b) for layer in layers}
        if len(bounds) != 1:
            raise ValueError(f"all layers of a NoiseBank need the same truncation bounds, got {sorted(bounds)}")
        (self.log_a, self.log_b), = bounds
        self.layers = layers
        self._index = {id(layer): i for i, layer in enumerate(layers)}
        sizes = [layer.num_structures for layer in layers]
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self._draw: Tensor | None = None
        self._consumed: set[int] = set()

    @property
    def num_structures(self) -> int:
        return self._offsets[-1]

    def __deepcopy__(self, memo: dict) -> "NoiseBank":
        # Reached while the layers themselves are being copied (half-built), so nothing here may
        # inspect them. The cached draw belongs to one forward pass and its graph: a copy has none.
        import copy

        clone = NoiseBank.__new__(NoiseBank)
        memo[id(self)] = clone
        clone.log_a, clone.log_b = self.log_a, self.log_b
        clone.layers = [copy.deepcopy(layer, memo) for layer in self.layers]
        clone._index = {id(layer): i for i, layer in enumerate(clone.layers)}
        clone._offsets = list(self._offsets)
        clone._draw, clone._consumed = None, set()
        return clone

    def _parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every layer's ``mu``, ``log sigma`` and mask, concatenated in layer order."""
        mu = torch.cat([layer.mu for layer in self.layers])
        log_sigma = torch.cat([layer.log_sigma for layer in self.layers])
        mask = torch.cat([layer.mask for layer in self.layers])
        return mu, log_sigma, mask

    def theta_for(self, layer: LogNormalNoise, batch: int) -> Tensor:
        """This layer's ``(batch, C)`` slice of the current forward pass's draw.

        A new draw starts whenever a layer asks twice (the next forward pass) or the batch changes,
        so every forward pass sees fresh, independent noise and autograd reaches every layer.
        """
        index = self._index[id(layer)]
        if self._draw is None or index in self._consumed or self._draw.shape[0] != batch:
            mu, log_sigma, mask = self._parameters()
            uniform = torch.rand(batch, mu.numel(), device=mu.device, dtype=mu.dtype)
            self._draw = TruncatedNormalDraw.apply(mu, sigma_from_log(log_sigma), uniform, self.log_a, self.log_b, mask)
            self._consumed = set()
        self._consumed.add(index)
        return self._draw[:, self._offsets[index] : self._offsets[index + 1]]

    def weighted_kl(self, weights: Tensor) -> Tensor:
        """``sum(weights * KL)`` over every structure, layers concatenated in order."""
        return WeightedKL.apply(*self._parameters(), weights, self.log_a, self.log_b)

    def layer_mean_weights(self, like: Tensor) -> Tensor:
        """Weights that turn the concatenated KL into the mean over layers of per-layer means."""
        cached = getattr(self, "_layer_weights", None)
        if cached is None or cached.dtype != like.dtype or cached.device != like.device:
            cached = torch.empty(self._offsets[-1], dtype=like.dtype, device=like.device)
            for start, end in zip(self._offsets, self._offsets[1:]):
                cached[start:end] = 1.0 / ((end - start) * len(self.layers))
            self._layer_weights = cached
        return cached


def attach_noise_bank(model: nn.Module) -> NoiseBank | None:
    """Share one ``NoiseBank`` among the model's noise layers (if their bounds agree); returns it."""
    layers = list(noise_modules(model).values())
    if not layers or len({(layer.log_a, layer.log_b) for layer in layers}) != 1:
        return None
    bank = NoiseBank(layers)
    for layer in layers:
        layer.bank = bank
    return bank
