"""Training with noise and continuous pruning (algorithm 1) on small data, KL weighting, divergence."""
from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from bmrs.checkpoint import load_checkpoint
from bmrs.criteria import build_criterion
from bmrs.data import DataBundle, Split
from bmrs.models import build_model, insert_noise, noise_points_for
from bmrs.noise import noise_modules
from bmrs.train import (
    KLWeighting,
    TrainConfig,
    TrainingDivergedError,
    evaluate,
    kl_penalty,
    prune_step,
    structure_compression,
    train_,
)

SHAPE = (1, 6, 6)


def blobs(num_train=128, num_val=64, num_test=32, classes=4, shape=SHAPE, seed=0) -> DataBundle:
    """Four Gaussian blobs in pixel space: learnable in a couple of epochs."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(classes, *shape, generator=generator)

    def split(n):
        labels = torch.arange(n) % classes
        images = centres[labels] + 0.15 * torch.randn(n, *shape, generator=generator)
        return Split(images.float(), labels)

    return DataBundle("blobs", split(num_train), split(num_val), split(num_test), classes)


def noisy_mlp(seed=0, width=16, layers=2, input_shape=SHAPE, classes=4):
    torch.manual_seed(seed)
    model = build_model("mlp", input_shape, classes, hidden_width=width, hidden_layers=layers)
    return insert_noise(model, noise_points_for("mlp", model))


FAST = dict(epochs=2, finetune_epochs=1, batch_size=16, lr=1e-2, progress=False)


def test_train_prune_finetune():
    data = blobs()
    model = noisy_mlp()
    noises = list(noise_modules(model).values())
    with torch.no_grad():  # three units of the first layer already sit at theta ~ e^-19
        noises[0].mu[:3] = -19.0
        noises[0].log_sigma[:3] = math.log(0.5)
    snapshots = []

    def compression(m):
        snapshots.append([n.mask.clone() for n in noise_modules(m).values()])
        return structure_compression(m)

    result = train_(model, data, TrainConfig(criterion="bmrs_n", **FAST), compression=compression)
    history = result.history
    assert result.model is model
    assert [r.epoch for r in history] == [1, 2, 3]
    assert [r.phase for r in history] == ["train", "train", "finetune"]
    assert len(snapshots) == 3
    for older, newer in zip(snapshots, snapshots[1:]):
        for old, new in zip(older, newer):
            assert not (new & ~old).any(), "a pruned structure came back"
    assert torch.equal(torch.stack([m.sum() for m in snapshots[1]]), torch.stack([m.sum() for m in snapshots[2]]))
    assert not snapshots[0][0][:3].any(), "units at theta ~ e^-19 are pruned at the first pruning step"
    names = list(noise_modules(model))
    for record, masks in zip(history, snapshots):
        assert record.alive == {name: int(m.sum()) for name, m in zip(names, masks)}
        assert record.compression == pytest.approx(1 - sum(record.alive.values()) / 32)
        assert all(math.isfinite(v) for v in (record.loss, record.nll, record.kl, record.val_nll))
        assert record.loss == pytest.approx(record.nll + record.kl, rel=1e-6)
        assert 0 <= record.train_accuracy <= 1 and 0 <= record.val_accuracy <= 1 and record.seconds >= 0
    assert history[-1].val_accuracy > 0.5  # four blobs: far above chance (0.25)
    as_dicts = result.as_dict()
    assert len(as_dicts) == 3 and as_dicts[2]["phase"] == "finetune" and as_dicts[0]["alive"] == history[0].alive
    # Pruned structures output zero in the trained model.
    model.eval()
    hidden = model[1](torch.flatten(data.val.images, 1))
    assert (hidden[:, :3] == 0).all()


def test_gradient_criterion_collects_gradients_and_checkpoints(tmp_path):
    data = blobs()
    model = noisy_mlp()
    path = tmp_path / "ckpt.pt"
    config = TrainConfig(epochs=1, finetune_epochs=0, batch_size=32, progress=False, criterion="grad",
                         criterion_settings={"ratio": 0.25})  # fmt: skip
    history = train_(model, data, config, checkpoint_path=path).history
    assert list(history[0].alive.values()) == [12, 12]
    fresh = noisy_mlp(seed=1)
    meta = load_checkpoint(path, fresh)
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    assert [int(n.mask.sum()) for n in noise_modules(fresh).values()] == [12, 12]


def test_plain_model_trains_without_noise():
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, 4, hidden_width=16)
    history = train_(model, blobs(), TrainConfig(criterion="bmrs_n", **FAST)).history
    assert [r.alive for r in history] == [{}, {}, {}]
    assert all(r.kl == 0 and r.compression == 0 for r in history)
    assert history[-1].val_accuracy > 0.5


def test_same_seed_same_result():
    runs = [train_(noisy_mlp(), blobs(), TrainConfig(criterion="bmrs_n", **FAST)).history for _ in range(2)]
    assert [r.loss for r in runs[0]] == [r.loss for r in runs[1]]


def test_nan_input_raises_diverged():
    data = blobs()
    data.train.images[5, 0, 2, 2] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"train\.lr"):
        train_(noisy_mlp(), data, TrainConfig(criterion="bmrs_n", **FAST))


def test_huge_learning_rate_raises_diverged():
    data = blobs()
    with pytest.raises(TrainingDivergedError, match=r"train\.lr \(now 1e\+30\)"):
        train_(noisy_mlp(), data, TrainConfig(epochs=20, finetune_epochs=0, lr=1e30, progress=False, batch_size=16))


def _one_batch_kl(weighting: KLWeighting, scale: float, randomise: bool) -> tuple[float, list]:
    """Train one step of LeNet5 (one batch = the whole training set) and return the KL term it logged."""
    data = blobs(num_train=32, num_val=8, num_test=8, classes=10, shape=(1, 28, 28))
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28), 10)
    insert_noise(model, noise_points_for("lenet5", model))
    if randomise:
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for noise in noise_modules(model).values():
                noise.mu.copy_(torch.rand(noise.num_structures, generator=generator) * 3 - 2.5)
                noise.log_sigma.copy_(torch.rand(noise.num_structures, generator=generator) * 4 - 4)
    initial = [copy.deepcopy(n) for n in noise_modules(model).values()]
    config = TrainConfig(epochs=1, finetune_epochs=0, batch_size=32, criterion=None, progress=False,
                         kl_weighting=weighting, kl_scale=scale)  # fmt: skip
    return train_(model, data, config).history[0].kl, initial


def test_kl_weighting_magnitudes_at_init():
    # mu = 0, sigma = e^-5: every structure has KL = log 20 - log(sqrt(2 pi e) e^-5 / 2) ~ 7.27
    per_unit = math.log(20.0) - (0.5 * math.log(2 * math.pi * math.e) - 5.0 + math.log(0.5))
    units = 6 + 16 + 120 + 84
    layer_mean, _ = _one_batch_kl(KLWeighting.LAYER_MEAN, 1.0, randomise=False)
    assert layer_mean == pytest.approx(per_unit, rel=1e-5)
    elbo, _ = _one_batch_kl(KLWeighting.ELBO, 1.0, randomise=False)
    assert elbo == pytest.approx(units * per_unit / 32, rel=1e-5)
    assert TrainConfig().kl_weighting is KLWeighting.ELBO  # the exact objective is the default


@pytest.mark.parametrize("weighting", list(KLWeighting))
def test_kl_weighting_matches_definition(weighting):
    scale = 2.5
    logged, noises = _one_batch_kl(weighting, scale, randomise=True)
    kls = [n.kl().detach().double() for n in noises]
    if weighting is KLWeighting.ELBO:
        expected = scale * float(sum(k.sum() for k in kls)) / 32
    else:
        expected = scale * float(torch.stack([k.mean() for k in kls]).mean())
        pooled = scale * float(torch.cat(kls).mean())
        assert abs(expected - pooled) > 1e-3 * abs(expected), "layer sizes differ, so the two means must differ"
    assert logged == pytest.approx(expected, rel=1e-5)
    assert float(kl_penalty(noises, weighting, scale, 32).detach()) == pytest.approx(expected, rel=1e-5)


def test_prune_step_keeps_minimum_alive():
    model = noisy_mlp(width=8)
    for noise in noise_modules(model).values():
        with torch.no_grad():
            noise.mu.copy_(-torch.arange(8, dtype=torch.float32))  # E[theta] decreasing with the index
    everything = build_criterion("etheta", threshold=2.0)  # every E[theta] < 2
    removed = prune_step(model, everything, {}, min_alive=3)
    assert removed == 2 * 5
    for noise in noise_modules(model).values():
        assert noise.mask.tolist() == [True] * 3 + [False] * 5
    assert prune_step(model, everything, {}, min_alive=3) == 0


def test_evaluate_restores_mode():
    model = noisy_mlp()
    model.train()
    accuracy, nll = evaluate(model, blobs().val)
    assert model.training and 0 <= accuracy <= 1 and nll > 0


@pytest.mark.parametrize(
    "change",
    [dict(epochs=0), dict(batch_size=0), dict(prune_every=0), dict(eval_batch_size=0), dict(min_structures_per_layer=0),
     dict(finetune_epochs=-1), dict(lr=0.0), dict(lr=-1e-3), dict(lr=float("nan")), dict(lr=float("inf")),
     dict(kl_scale=-1.0), dict(kl_scale=float("nan")), dict(kl_scale=float("inf"))],
)  # fmt: skip
def test_invalid_config(change):
    with pytest.raises(ValueError):
        replace(TrainConfig(), **change)


def test_kl_weighting_must_be_the_enum():
    with pytest.raises((TypeError, ValueError)):
        TrainConfig(kl_weighting="elbo")


def test_unknown_criterion_in_config():
    with pytest.raises(ValueError):
        train_(noisy_mlp(), blobs(), TrainConfig(criterion="nope", **FAST))
