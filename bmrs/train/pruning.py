"""What the criterion removes and when, per coupled group: the decisions of one pruning step, the
step itself, and each noise layer's first pruning epoch."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bmrs.criteria import Criterion, group_views
from bmrs.nn.groups import noise_groups
from bmrs.nn.noise import noise_modules, noise_modules_under
from bmrs.train.config import TrainConfig


def prune_decisions(model: nn.Module, criterion: Criterion, grad_sq: dict[str, Tensor], min_alive: int) -> dict[str, Tensor]:
    """Per noise layer, the mask of structures the criterion removes (pruned ones included), never
    leaving fewer than ``min_alive`` structures. The criterion decides per coupled group, so every
    member of a group gets the same mask. Nothing is changed."""
    decisions = {}
    for group in group_views(model, grad_sq):
        decision = criterion.decide(group)
        prune = decision.prune.clone()
        if int((~prune).sum()) < min_alive:
            # Without a surviving structure the layer, and the network, would output a constant.
            keep = torch.argsort(decision.scores, descending=True, stable=True)[:min_alive]
            prune[keep] = False
            prune |= ~group.mask
        decisions.update(dict.fromkeys((member.name for member in group.members), prune))
    return decisions


def prune_step(model: nn.Module, criterion: Criterion, grad_sq: dict[str, Tensor], min_alive: int) -> int:
    """Apply the criterion to every noise group, never leaving fewer than ``min_alive`` structures;
    returns how many structures (a coupled group's channel counted once) were newly removed."""
    decisions = prune_decisions(model, criterion, grad_sq, min_alive)
    return sum(group.prune_(decisions[group.name]) for group in noise_groups(model))


def prune_starts(model: nn.Module, config: TrainConfig) -> dict[str, int]:
    """Per noise layer, the first epoch after which the criterion prunes it (a later entry of
    ``prune_start_by_layer`` wins where two name the same layer). The members of a coupled group
    start together, at the latest start among them: a channel removed from one member only could
    not be sliced."""
    starts = dict.fromkeys(noise_modules(model), config.prune_start)
    for path, start in config.prune_start_by_layer.items():
        starts.update(dict.fromkeys(noise_modules_under(model, path, "train.prune_start_by_layer"), start))
    for group in noise_groups(model):
        latest = max(starts[name] for name in group.members)
        starts.update(dict.fromkeys(group.members, latest))
    return starts


def prunes_after(epoch: int, start: int, every: int) -> bool:
    """Whether a layer whose pruning starts after ``start`` is pruned at the end of (1-based) ``epoch``."""
    return epoch >= start and (epoch - start) % every == 0
