"""Schedules in optimiser steps: their rounding to whole epochs, and a steps run equal to its epochs twin."""
from __future__ import annotations

import random
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from bmrs.train.checkpoint import CheckpointError, read_checkpoint
from bmrs.data import DataBundle, Split
from bmrs.models import build_model, insert_noise, noise_points_for
from bmrs.train import TrainConfig, train_
from bmrs.train.config import Schedule, ScheduleUnit, steps_per_epoch
from pipeline.config import ConfigError, load_flow

REPO_FLOWS = Path(__file__).resolve().parents[3] / "flows.yaml"
STEPS = ScheduleUnit.STEPS


def in_steps(**schedule) -> TrainConfig:
    return TrainConfig(schedule_unit=STEPS, **schedule)


def test_steps_per_epoch_counts_the_last_partial_batch():
    assert steps_per_epoch(48_000, 32) == 1500
    assert steps_per_epoch(48_000, 128) == 375
    assert steps_per_epoch(300, 32) == 10  # 9 full batches and one of 12
    assert steps_per_epoch(1, 32) == 1


def test_whole_epochs_of_steps_resolve_exactly():
    given = in_steps(epochs=30_000, finetune_epochs=60_000, prune_start=30_000, prune_every=3_000,
                     prune_start_by_layer={"fc": 15_000})  # fmt: skip
    resolved = given.in_epochs(1500)
    assert resolved == TrainConfig(epochs=20, finetune_epochs=40, prune_start=20, prune_every=2, prune_start_by_layer={"fc": 10})
    assert resolved.schedule_unit is ScheduleUnit.EPOCHS


@pytest.mark.parametrize(
    "steps, expected",
    [(1, 1), (49, 1), (149, 1), (150, 2), (151, 2), (249, 2), (250, 3), (1000, 10)],
)  # 100 steps per epoch: the nearest epoch, halves up, never below one
def test_steps_round_to_the_nearest_epoch_and_at_least_one(steps, expected):
    resolved = in_steps(epochs=steps, prune_start=steps, prune_every=steps, finetune_epochs=steps).in_epochs(100)
    assert (resolved.epochs, resolved.prune_start, resolved.prune_every, resolved.finetune_epochs) == (expected,) * 4


def test_no_finetuning_stays_none_and_a_little_becomes_one_epoch():
    assert in_steps(epochs=500, finetune_epochs=0).in_epochs(100).finetune_epochs == 0
    assert in_steps(epochs=500, finetune_epochs=10).in_epochs(100).finetune_epochs == 1


def test_rounding_keeps_every_start_within_the_training_epochs():
    draw = random.Random(0)
    for _ in range(2000):
        per_epoch = draw.randint(1, 2000)
        epochs = draw.randint(1, 50_000)
        start, layer_start = draw.randint(1, epochs), draw.randint(1, epochs)
        resolved = in_steps(epochs=epochs, prune_start=start, prune_start_by_layer={"a": layer_start}).in_epochs(per_epoch)
        # Built through TrainConfig, so its own validation has passed too.
        assert 1 <= resolved.prune_start <= resolved.epochs
        assert 1 <= resolved.prune_start_by_layer["a"] <= resolved.epochs
        assert abs(resolved.epochs * per_epoch - epochs) <= max(per_epoch / 2, per_epoch - epochs)


def test_a_config_in_epochs_is_its_own_resolution():
    config = TrainConfig(epochs=3, prune_start=2)
    assert config.in_epochs(7) is config
    assert config.for_examples(100) is config


@pytest.mark.parametrize("per_epoch", [0, -3, 1.5, True])
def test_steps_per_epoch_must_be_a_positive_integer(per_epoch):
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive integer"):
        in_steps(epochs=10).in_epochs(per_epoch)


def test_training_data_must_not_be_empty():
    with pytest.raises(ValueError, match="at least one example"):
        in_steps(epochs=10).for_examples(0)


def test_validation_is_as_strict_in_steps_as_in_epochs():
    with pytest.raises(ValueError, match=r"train.prune_start \(1501\) is after the last training step \(1500\)"):
        in_steps(epochs=1500, prune_start=1501)
    with pytest.raises(ValueError, match=r"prune_start_by_layer\['fc'\] must be a step from 1 to train.epochs \(1500\), got 2000"):
        in_steps(epochs=1500, prune_start_by_layer={"fc": 2000})
    for change in (dict(epochs=0), dict(prune_every=0), dict(prune_start=0), dict(finetune_epochs=-1)):
        with pytest.raises(ValueError):
            in_steps(**change)
    with pytest.raises(TypeError, match="train.schedule_unit must be a ScheduleUnit"):
        TrainConfig(schedule_unit="steps")


def test_to_dict_of_the_default_unit_is_what_records_already_hold():
    # The keys every checkpoint fingerprint and cached benchmark spec was written with.
    recorded = ["epochs", "finetune_epochs", "prune_every", "prune_start", "batch_size", "lr", "kl_weighting", "kl_scale",
                "finetune_noise", "criterion", "criterion_settings", "min_structures_per_layer", "seed", "eval_batch_size", "progress"]  # fmt: skip
    assert list(TrainConfig().to_dict()) == recorded
    assert list(TrainConfig(schedule_unit=ScheduleUnit.EPOCHS).to_dict()) == recorded
    given = in_steps(epochs=3000, prune_start=1500)
    assert given.to_dict() == {**TrainConfig(epochs=3000, prune_start=1500).to_dict(), "schedule_unit": "steps"}
    assert given.in_epochs(1500).to_dict() == TrainConfig(epochs=2, prune_start=1, finetune_epochs=1).to_dict()


def test_schedule_reports_epochs_and_steps():
    plan = Schedule.of(in_steps(epochs=30_000, finetune_epochs=60_000, prune_start=30_000, batch_size=32), 48_000)
    assert plan.as_dict() == {
        "given_in": "steps", "steps_per_epoch": 1500, "epochs": 20, "finetune_epochs": 40, "prune_start": 20,
        "prune_every": 1, "prune_start_by_layer": {}, "steps": 30_000, "finetune_steps": 60_000,
    }  # fmt: skip
    assert plan.describe().startswith("schedule (given in steps, 1500 steps per epoch): 20 training epochs (30000 steps)")


# A steps schedule trains exactly as the epochs schedule it resolves to.


def blobs(num_train=300, classes=4, shape=(1, 6, 6)) -> DataBundle:
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(classes, *shape, generator=generator)

    def split(n):
        labels = torch.arange(n) % classes
        return Split(centres[labels] + 0.15 * torch.randn(n, *shape, generator=generator), labels)

    return DataBundle("blobs", split(num_train), split(64), split(32), classes)


def noisy_mlp():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 6, 6), 4, hidden_width=16, hidden_layers=2)
    return insert_noise(model, noise_points_for("mlp", model))


# 300 examples in batches of 32: 10 steps per epoch. 26 steps round to 3 epochs, 14 to 1, 15 to 2.
COMMON = dict(batch_size=32, lr=1e-2, criterion="bmrs_n", progress=False)
AS_STEPS = dict(epochs=26, finetune_epochs=14, prune_start=15, prune_every=6, prune_start_by_layer={"1": 25}, schedule_unit=STEPS)
AS_EPOCHS = dict(epochs=3, finetune_epochs=1, prune_start=2, prune_every=1, prune_start_by_layer={"1": 3})


def without_seconds(history):
    return [{**asdict(record), "seconds": None} for record in history]


def test_a_steps_run_equals_its_epochs_twin(tmp_path):
    data = blobs()
    in_steps_model, in_epochs_model = noisy_mlp(), noisy_mlp()
    by_steps = train_(in_steps_model, data, TrainConfig(**COMMON, **AS_STEPS), checkpoint_path=tmp_path / "steps.pt")
    by_epochs = train_(in_epochs_model, data, TrainConfig(**COMMON, **AS_EPOCHS), checkpoint_path=tmp_path / "epochs.pt")
    assert [(r.epoch, r.phase) for r in by_steps.history] == [(1, "train"), (2, "train"), (3, "train"), (4, "finetune")]
    assert without_seconds(by_steps.history) == without_seconds(by_epochs.history)
    assert by_steps.history[-1].alive != {"1.noise": 16, "4.noise": 16}, "the run pruned something"
    steps_state, epochs_state = in_steps_model.state_dict(), in_epochs_model.state_dict()
    assert all(torch.equal(tensor, epochs_state[key]) for key, tensor in steps_state.items())
    assert by_steps.schedule.config == TrainConfig(**COMMON, **AS_EPOCHS)
    assert (by_steps.schedule.given_in, by_steps.schedule.steps_per_epoch) == (STEPS, 10)
    assert by_epochs.schedule.given_in is ScheduleUnit.EPOCHS
    # The checkpoint records what the schedule came to, under the epochs config's fingerprint.
    steps_meta, epochs_meta = read_checkpoint(tmp_path / "steps.pt").meta, read_checkpoint(tmp_path / "epochs.pt").meta
    assert steps_meta["schedule"] == {**epochs_meta["schedule"], "given_in": "steps"}
    assert steps_meta["schedule"]["steps"] == 30 and steps_meta["schedule"]["finetune_steps"] == 10
    assert steps_meta["fingerprint"] == epochs_meta["fingerprint"]


def test_a_steps_config_resumes_what_its_epochs_twin_checkpointed(tmp_path, monkeypatch):
    import bmrs.train.loop as train_module

    data = blobs()
    original = train_module.save_checkpoint

    def keep_epoch_two(path, model, meta, **kwargs):  # the checkpoint an interrupted run would have left
        original(path, model, meta, **kwargs)
        if meta["epoch"] == 2:
            shutil.copyfile(path, tmp_path / "interrupted.pt")

    monkeypatch.setattr(train_module, "save_checkpoint", keep_epoch_two)
    straight_model = noisy_mlp()
    straight = train_(straight_model, data, TrainConfig(**COMMON, **AS_EPOCHS), checkpoint_path=tmp_path / "epochs.pt")
    torch.manual_seed(123)  # the resumed process's RNG must not matter
    model = noisy_mlp()
    resumed = train_(model, data, TrainConfig(**COMMON, **AS_STEPS), resume_from=tmp_path / "interrupted.pt")
    assert without_seconds(resumed.history) == without_seconds(straight.history)
    assert all(torch.equal(tensor, model.state_dict()[key]) for key, tensor in straight_model.state_dict().items())
    other = TrainConfig(**COMMON, **{**AS_STEPS, "epochs": 36})  # 4 epochs: another schedule, refused
    with pytest.raises(CheckpointError, match=r"train.epochs: 3 in the checkpoint, 4 now"):
        train_(noisy_mlp(), data, other, resume_from=tmp_path / "interrupted.pt")


def test_the_resolved_schedule_is_logged(capsys):
    train_(noisy_mlp(), blobs(), TrainConfig(**{**COMMON, "progress": True}, **AS_STEPS))
    out = capsys.readouterr().out
    assert "schedule (given in steps, 10 steps per epoch): 3 training epochs (30 steps) + 1 fine-tuning epochs (10 steps)" in out
    assert "pruning after epoch 2, then every 1, 1 after epoch 3" in out


# The shipped from-prior recipes: in steps, and on Fashion-MNIST (48,000 training images after the
# 20% validation hold-out) exactly the epochs they were found with, so their results and checkpoints hold.


@pytest.mark.parametrize("flow", ["mlp_fmnist_bmrs_n_from_prior", "lenet5_fmnist_bmrs_n_from_prior"])
def test_from_prior_recipes_resolve_on_fashion_mnist_to_the_epochs_found_there(flow):
    train = load_flow(REPO_FLOWS, flow).train
    assert train.schedule_unit is STEPS
    found = replace(train, epochs=20, finetune_epochs=40, prune_start=20, prune_every=1, schedule_unit=ScheduleUnit.EPOCHS)
    assert train.for_examples(48_000) == found
    assert train.for_examples(48_000).to_dict() == found.to_dict()
    # On 1,152 images (36 steps per epoch at batch 32) the same climb runs the same number of steps.
    small = train.for_examples(36 * train.batch_size)
    assert small.epochs * 36 == pytest.approx(train.epochs, rel=0.01)


def test_schedule_unit_is_set_from_the_command_line():
    config = load_flow(REPO_FLOWS, "default", ["train.schedule_unit=steps", "train.epochs=3000", "train.prune_start=1500"])
    assert config.train.schedule_unit is STEPS and config.train.for_examples(48_000).epochs == 2
    assert load_flow(REPO_FLOWS, "default", ["train.schedule_unit=STEPS"]).train.schedule_unit is STEPS
    assert load_flow(REPO_FLOWS, "default").train.schedule_unit is ScheduleUnit.EPOCHS
    with pytest.raises(ConfigError, match=r"train.schedule_unit: 'minutes'"):
        load_flow(REPO_FLOWS, "default", ["train.schedule_unit=minutes"])
    with pytest.raises(ConfigError, match=r"is after the last training step \(10\)"):
        load_flow(REPO_FLOWS, "default", ["train.schedule_unit=steps", "train.epochs=10", "train.prune_start=20"])
