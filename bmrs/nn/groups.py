"""Coupled noise: the structures that are removed together, and one decision for each.

A channel of a residual stream exists in every layer that adds into the stream (the convolutions or
BatchNorms of each block's last step, a downsampling shortcut, the stem); a depthwise convolution's
channel exists in the layer that feeds it too. Slicing cannot remove channel ``i`` from one of them
only, so each of those layers carries its own noise and the noises form a ``NoiseGroup``: structure
``i`` of every member is the same removable channel. Pruning decides per group (``bmrs.criteria``
turns the members' posteriors into one score; for BMR criteria the exact ``dF_group = sum_i dF_i``)
and removes channel ``i`` from every member at once, so the members' masks never differ.

A noise outside any group is a group of one, named by the noise module's path: code that walks
``noise_groups`` treats plain and coupled layers alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bmrs.nn.noise import LogNormalNoise, noise_modules


@dataclass(frozen=True)
class NoiseGroup:
    """One removable set of structures: ``members`` maps noise-module paths (module order) to their
    noises, all with the same number of structures, structure ``i`` of each being one channel.
    ``name`` is the first member's path, so a group of one is named as its noise layer is."""

    name: str
    members: dict[str, LogNormalNoise]

    @property
    def num_structures(self) -> int:
        return next(iter(self.members.values())).num_structures

    @property
    def mask(self) -> Tensor:
        """The channels still alive: alive in every member (``prune_`` keeps the members equal)."""
        masks = [noise.mask for noise in self.members.values()]
        alive = masks[0].clone()
        for mask in masks[1:]:
            alive &= mask
        return alive

    @property
    def coupled(self) -> bool:
        return len(self.members) > 1

    def prune_(self, structures: Tensor) -> int:
        """Remove ``structures`` (bool over channels) from every member; returns how many channels
        were newly removed (counted once, not once per member)."""
        newly = int((structures & self.mask).sum())
        for noise in self.members.values():
            noise.prune_(structures)
        return newly


def noise_groups(model: nn.Module) -> list[NoiseGroup]:
    """The model's noises as groups, in the module order of each group's first member.

    ``ValueError`` when the members of a group disagree on their number of structures (a group
    built by hand, not by ``bmrs.models.structures``): their channels cannot be one set."""
    by_key: dict[str, dict[str, LogNormalNoise]] = {}
    for path, noise in noise_modules(model).items():
        key = noise.group if noise.group is not None else f"\0{path}"  # an ungrouped noise is alone
        by_key.setdefault(key, {})[path] = noise
    groups = []
    for key, members in by_key.items():
        sizes = {path: noise.num_structures for path, noise in members.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(
                f"the noises of coupled group {key!r} have different numbers of structures {sizes}; a group's "
                "members scale the same channels, so give them one size (bmrs.models.structures finds the groups)"
            )
        groups.append(NoiseGroup(next(iter(members)), members))
    return groups


def group_of(model: nn.Module) -> dict[str, NoiseGroup]:
    """Each noise-module path mapped to its group."""
    return {path: group for group in noise_groups(model) for path in group.members}



def prune_at_random_(model: nn.Module, fraction: float, *, seed: int = 0) -> None:
    """Remove about ``fraction`` of every group's channels at random, never its last one, with
    posteriors drawn in a plausible range, and give any all-zero Linear/Conv2d weight (torchvision's
    ViT head starts at zero) random values, so that outputs depend on every layer: a model to check
    slicing and export on (tests, benchmarks) without training one."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction is the share of each group's channels to remove, in [0, 1); got {fraction!r}")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and not bool(module.weight.any()):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / module.weight[0].numel() ** 0.5)
        for noise in noise_modules(model).values():
            n = noise.num_structures
            noise.mu.copy_(torch.empty(n).uniform_(-1.0, 0.0, generator=generator))
            noise.log_sigma.copy_(torch.empty(n).uniform_(-3.0, -1.0, generator=generator))
    for group in noise_groups(model):
        drop = torch.rand(group.num_structures, generator=generator) < fraction
        drop[int(torch.randint(group.num_structures, (1,), generator=generator))] = False
        group.prune_(drop)
