"""Training and post-training pruning of a network with coupled groups (a residual stream):
every decision is taken per group, so a group's members always share one mask, and the trained
model slices exactly."""
from __future__ import annotations

import pytest
import torch

from bmrs.criteria import CRITERIA, build_criterion
from bmrs.data import DataBundle, Split
from bmrs.models.structures import analyse_structures
from bmrs.nn.groups import noise_groups
from bmrs.nn.insert import insert_noise
from bmrs.train import TrainConfig, train_
from bmrs.train.pruning import prune_starts, prune_step
from bmrs.train.post_training import PostTrainingConfig, post_training_prune
from export.slicing import slice_model
from layer_patterns import build_pattern

SHAPE = (3, 8, 8)


def blobs(n_train=96, n_val=32, classes=5, seed=0) -> DataBundle:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, *SHAPE, generator=generator)

    def split(n):
        labels = torch.arange(n) % classes
        return Split(centres[labels] + 0.3 * torch.randn(n, *SHAPE, generator=generator), labels)

    return DataBundle("blobs", split(n_train), split(n_val), split(n_val), classes)


def noisy_resnet(seed=0):
    model, shape = build_pattern("resnet_blocks", seed)
    insert_noise(model, analyse_structures(model, torch.randn(2, *shape)).default_points())
    return model


def assert_groups_share_masks(model):
    for group in noise_groups(model):
        masks = [noise.mask for noise in group.members.values()]
        assert all(torch.equal(mask, masks[0]) for mask in masks), group.name


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_prune_step_removes_a_groups_channel_from_every_member(name):
    model = noisy_resnet()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for noise in noise_groups(model)[0].members.values():  # members that disagree channel by channel
            noise.mu.copy_(torch.empty(8).uniform_(-19.0, 0.0, generator=generator))
            noise.log_sigma.copy_(torch.empty(8).uniform_(-3.0, 1.0, generator=generator))
    grad_sq = {path: torch.rand(8, generator=generator) for path in (n for g in noise_groups(model) for n in g.members)}
    criterion = build_criterion(name, ratio=0.5) if name in ("l2", "grad") else build_criterion(name)
    removed = prune_step(model, criterion, grad_sq, min_alive=1)
    assert_groups_share_masks(model)
    assert removed == sum(group.num_structures - int(group.mask.sum()) for group in noise_groups(model))


def test_training_with_continuous_pruning_keeps_groups_whole_and_slices_exactly():
    data = blobs()
    model = noisy_resnet()
    config = TrainConfig(epochs=3, finetune_epochs=1, batch_size=16, lr=1e-2, criterion=build_criterion("bmrs_n"),
                         prune_start_by_layer={"block1.conv2": 2}, progress=False)  # fmt: skip
    starts = prune_starts(model, config)
    stream = noise_groups(model)[0]
    assert {starts[name] for name in stream.members} == {2}  # one member starts later: the group waits for it
    train_(model, data, config)
    assert_groups_share_masks(model)
    model.eval()
    result = slice_model(model, data.val.images)
    with torch.no_grad():
        assert torch.allclose(result.model.eval()(data.val.images), model(data.val.images), atol=1e-5, rtol=1e-5)


def test_post_training_ranks_and_removes_a_groups_channel_as_one():
    data = blobs()
    model = noisy_resnet()
    train_(model, data, TrainConfig(epochs=1, finetune_epochs=0, batch_size=16, lr=1e-2, progress=False))
    removed_per_point = []

    def compression(work):
        assert_groups_share_masks(work)
        removed_per_point.append(sum(group.num_structures - int(group.mask.sum()) for group in noise_groups(work)))
        return slice_model(work, data.val.images[:2]).compression

    curve = post_training_prune(model, data, PostTrainingConfig(criterion="bmrs_n", steps=3, finetune_epochs=0), compression=compression)
    assert [point.removed for point in curve.points] == removed_per_point
    # Every group keeps its best channel: 3 groups of 8 channels leave 21 removable, counted once per group.
    assert curve.points[-1].removed == 3 * 7
