"""Noisy models with random posteriors and random pruning, shared by the export tests.

Imported by module name (the tests folder is not a package: ``tests/export`` as a package would
shadow the ``export`` package under test), hence a name no other tests folder uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bmrs.models import build_model, insert_noise, noise_points_for
from bmrs.nn.noise import noise_modules

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
CASES = {
    "lenet5": ("lenet5", {}),
    "mlp1": ("mlp", {}),
    "mlp3": ("mlp", {"hidden_layers": 3}),
}


@dataclass(frozen=True)
class NoisyCase:
    name: str
    model: nn.Module
    # Source layer path in the *folded* model -> bool keep mask, as fold_noise should report it.
    keep: dict[str, Tensor]
    x: Tensor


def folded_path(noisy_path: str) -> str:
    # insert_noise records a wrapped layer as "<path>.inner"; after folding it is "<path>" again.
    return noisy_path.removesuffix(".inner")


def make_noisy(case: str, seed: int = 0, drop_fraction: float = 0.5) -> NoisyCase:
    family, options = CASES[case]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(family, INPUT_SHAPE, NUM_CLASSES, **options)
    insert_noise(model, noise_points_for(family, model))
    keep: dict[str, Tensor] = {}
    with torch.no_grad():
        for noise in noise_modules(model).values():
            n = noise.num_structures
            # E[theta] between roughly 0.2 and 1, so outputs are O(1) and a 1e-5 check means something.
            noise.mu.copy_(torch.empty(n).uniform_(-1.5, 0.0, generator=generator))
            noise.log_sigma.copy_(torch.empty(n).uniform_(-3.0, -0.5, generator=generator))
            drop = torch.rand(n, generator=generator) < drop_fraction
            survivor, victim = torch.randperm(n, generator=generator)[:2].tolist()
            drop[survivor], drop[victim] = False, True  # every layer keeps one and loses one
            noise.prune_(drop)
            keep[folded_path(noise.source)] = noise.mask.clone()
    model.eval()
    x = torch.randn(16, *INPUT_SHAPE, generator=generator)
    return NoisyCase(case, model, keep, x)
