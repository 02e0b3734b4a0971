"""Training with noise and continuous pruning (algorithm 1) on small data, KL weighting, divergence."""
from __future__ import annotations

import copy
import json
import math
import re
import shutil
from dataclasses import asdict, replace

import pytest
import torch
from torch import nn

from bmrs.train.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from bmrs.criteria import build_criterion
from bmrs.data import DataBundle, Split
from bmrs.models import build_model, insert_noise, noise_points_for
from bmrs.nn.noise import noise_modules
from bmrs.nn.bank import attach_noise_bank
from bmrs.train import (
    FinetuneNoise,
    KLWeighting,
    TrainConfig,
    TrainingDivergedError,
    evaluate,
    kl_penalty,
    structure_compression,
    train_,
)
from bmrs.train.pruning import prune_step

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
        # Pruning after every training epoch: what the criterion would keep is what survives.
        assert record.criterion_keeps == (record.alive if record.phase == "train" else None)
    assert history[-1].val_accuracy > 0.5  # four blobs: far above chance (0.25)
    as_dicts = result.as_dict()
    assert len(as_dicts) == 3 and as_dicts[2]["phase"] == "finetune" and as_dicts[0]["alive"] == history[0].alive
    # Pruned structures output zero in the trained model.
    model.eval()
    hidden = model[1](torch.flatten(data.val.images, 1))
    assert (hidden[:, :3] == 0).all()


def test_criterion_keeps_are_recorded_before_pruning_starts():
    model = noisy_mlp()
    first_layer = next(iter(noise_modules(model).values()))
    with torch.no_grad():
        first_layer.mu[:3] = -19.0
        first_layer.log_sigma[:3] = math.log(0.5)
    history = train_(model, blobs(), TrainConfig(criterion="bmrs_n", prune_start=2, **FAST)).history
    name = next(iter(noise_modules(model)))
    assert history[0].alive[name] == 16, "nothing is pruned before prune_start"
    assert history[0].criterion_keeps[name] <= 13, "the units at theta ~ e^-19 would go"
    assert history[1].criterion_keeps == history[1].alive


def test_prune_start_by_layer_prunes_each_layer_from_its_own_epoch():
    model = noisy_mlp()
    for noise in noise_modules(model).values():  # three units per layer at theta ~ e^-19
        with torch.no_grad():
            noise.mu[:3] = -19.0
            noise.log_sigma[:3] = math.log(0.5)
    config = TrainConfig(criterion="bmrs_n", prune_start=2, prune_start_by_layer={1: 1}, **FAST)  # YAML's int key
    assert config.prune_start_by_layer == {"1": 1}
    history = train_(model, blobs(), config).history
    assert history[0].alive["1.noise"] <= 13 and history[0].alive["3.noise"] == 16, "layer 3 waits for epoch 2"
    assert history[1].alive["3.noise"] <= 13


def test_prune_start_by_layer_is_checked():
    with pytest.raises(ValueError, match=r"prune_start_by_layer\['1'\] must be an epoch from 1 to train.epochs \(2\), got 3"):
        TrainConfig(prune_start_by_layer={"1": 3}, **FAST)
    with pytest.raises(TypeError, match="must map layer paths to epochs"):
        TrainConfig(prune_start_by_layer=[("1", 1)], **FAST)
    model = noisy_mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"train.prune_start_by_layer names 'classifier', which holds no noise layer; the noisy layers are \['1', '3'\]"):
        train_(model, blobs(), TrainConfig(prune_start_by_layer={"classifier": 1}, **FAST))
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items()), "refused before any step"


def test_gradient_criterion_collects_gradients_and_checkpoints(tmp_path):
    data = blobs()
    model = noisy_mlp()
    path = tmp_path / "ckpt.pt"
    config = TrainConfig(epochs=1, finetune_epochs=0, batch_size=32, progress=False, criterion={"name": "grad", "ratio": 0.25})  # fmt: skip
    history = train_(model, data, config, checkpoint_path=path).history
    assert list(history[0].alive.values()) == [12, 12]
    fresh = noisy_mlp(seed=1)
    meta = load_checkpoint(path, fresh)
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    assert [int(n.mask.sum()) for n in noise_modules(fresh).values()] == [12, 12]


def test_plain_model_trains_without_noise():
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, 4, hidden_width=16)
    history = train_(model, blobs(), TrainConfig(criterion=None, **FAST)).history
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


def test_diverging_training_raises_diverged():
    data = blobs()
    # Infinite pixels meet weights of both signs in the first layer: inf - inf, so the loss is NaN at once.
    overflowing = torch.full_like(data.train.images, float("inf"))
    data = DataBundle(data.name, Split(overflowing, data.train.labels), data.val, data.test, data.num_classes)
    with pytest.raises(TrainingDivergedError, match=r"at epoch 1, step 1 .*lower train\.lr \(now 0\.5\)"):
        train_(noisy_mlp(), data, TrainConfig(epochs=2, finetune_epochs=0, lr=0.5, progress=False, batch_size=16))


def test_a_learning_rate_above_one_is_refused_as_a_setting():
    with pytest.raises(ValueError, match=r"train\.lr 1e\+30 is above 1: Adam moves every weight by about lr per step"):
        TrainConfig(lr=1e30)


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
    everything = build_criterion("etheta", threshold=1.0)  # every E[theta] < 1 (theta <= b = 1, and sigma > 0)
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
     dict(prune_start=0), dict(epochs=3, prune_start=4), dict(finetune_epochs=-1), dict(lr=0.0), dict(lr=-1e-3), dict(lr=float("nan")), dict(lr=float("inf")),
     dict(kl_scale=-1.0), dict(kl_scale=float("nan")), dict(kl_scale=float("inf"))],
)  # fmt: skip
def test_invalid_config(change):
    with pytest.raises(ValueError):
        replace(TrainConfig(), **change)


@pytest.mark.parametrize("prune_start, prune_every, expected", [(1, 1, [1, 2, 3, 4]), (3, 1, [3, 4]), (2, 2, [2, 4]), (4, 3, [4])])
def test_pruning_starts_at_prune_start_then_every_prune_every(prune_start, prune_every, expected):
    data = blobs()
    model = noisy_mlp()
    seen = []
    # E[theta] < 2 holds for every structure: each epoch that runs the criterion leaves one per layer.
    config = TrainConfig(**{**FAST, "epochs": 4}, prune_start=prune_start, prune_every=prune_every,
                         criterion={"name": "etheta", "threshold": 1.0})  # fmt: skip
    original = noise_modules(model)["1.noise"].prune_

    def spy(mask):
        seen.append(len(seen))
        return original(mask)

    noise_modules(model)["1.noise"].prune_ = spy
    history = train_(model, data, config).history
    assert len(seen) == len(expected)
    first = expected[0]
    assert all(record.alive["1.noise"] == 16 for record in history[: first - 1])
    assert history[first - 1].alive["1.noise"] == 1


def test_kl_weighting_must_be_the_enum():
    with pytest.raises((TypeError, ValueError)):
        TrainConfig(kl_weighting="elbo")


def test_unknown_criterion_in_config():
    with pytest.raises(ValueError):
        train_(noisy_mlp(), blobs(), TrainConfig(criterion="nope", **FAST))


# Resuming: an interrupted run continues to the bit-identical result of an uninterrupted one.


def synthetic_digits(num_train=512, seed=0) -> DataBundle:
    """Random 1x28x28 images with random labels: enough for every code path, cheap for LeNet5."""
    generator = torch.Generator().manual_seed(seed)

    def split(n):
        return Split(torch.rand(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator))

    return DataBundle("synthetic", split(num_train), split(64), split(32), 10)


def noisy_lenet(seed, noisy=True):
    torch.manual_seed(seed)
    model = build_model("lenet5", (1, 28, 28), 10)
    if noisy:
        insert_noise(model, noise_points_for("lenet5", model))
        attach_noise_bank(model)
    return model


RESUME_CASES = {
    # Interrupted after a training epoch, and inside fine-tuning.
    "bmrs_n": (TrainConfig(epochs=2, finetune_epochs=2, batch_size=32, lr=5e-3, criterion="bmrs_n", progress=False), (1, 3)),
    # prune_every=3: the gradient statistics of epochs 2 and 3 are summed across the interruption.
    "grad": (TrainConfig(epochs=3, finetune_epochs=1, prune_every=3, batch_size=32, lr=5e-3, criterion={"name": "grad", "ratio": 0.25}, progress=False), (2,)),
    # Fine-tuning as deployed: cut right before E[theta] is folded into the weights, and after it.
    "expected": (TrainConfig(epochs=2, finetune_epochs=2, batch_size=32, lr=5e-3, criterion="bmrs_n",
                             finetune_noise=FinetuneNoise.EXPECTED, progress=False), (2, 3)),
    # The dense baseline: no noise layers, no criterion.
    "none": (TrainConfig(epochs=2, finetune_epochs=0, batch_size=32, lr=5e-3, criterion=None, progress=False), (1,)),
}  # fmt: skip


def snapshot_every_epoch(monkeypatch, folder):
    """Keep a copy of every epoch's checkpoint, as an interrupted run would have left it."""
    import bmrs.train.loop as train_module

    original = train_module.save_checkpoint

    def save_and_copy(path, model, meta, **kwargs):
        original(path, model, meta, **kwargs)
        shutil.copyfile(path, folder / f"epoch{meta['epoch']}.pt")

    monkeypatch.setattr(train_module, "save_checkpoint", save_and_copy)


def without_seconds(history):
    return [{k: v for k, v in asdict(record).items() if k != "seconds"} for record in history]


def assert_trees_equal(a, b, where="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, (dict, list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        pairs = [(k, a[k], b[k]) for k in a] if isinstance(a, dict) else list(zip(range(len(a)), a, b))
        for key, x, y in pairs:
            assert_trees_equal(x, y, f"{where}[{key!r}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch, case):
    config, cuts = RESUME_CASES[case]
    data = synthetic_digits()
    snapshot_every_epoch(monkeypatch, tmp_path)
    noisy = config.criterion is not None
    straight = train_(noisy_lenet(0, noisy), data, config, checkpoint_path=tmp_path / "straight.pt")
    expected = read_checkpoint(tmp_path / "straight.pt")
    total = config.epochs + config.finetune_epochs
    assert [r.epoch for r in straight.history] == list(range(1, total + 1))
    if case == "grad":
        assert read_checkpoint(tmp_path / "epoch2.pt").training["grad_sq"], "statistics pending at the interruption"
        assert straight.history[0].compression > 0.2, "masks change, so the restored masks are tested too"
    for cut in cuts:
        interrupted = tmp_path / f"epoch{cut}.pt"
        assert read_checkpoint(interrupted).meta["epoch"] == cut
        torch.manual_seed(123)  # the resumed process's RNG must not matter
        model = noisy_lenet(7, noisy)  # nor its initial weights: everything comes from the checkpoint
        resumed_path = tmp_path / f"resumed{cut}.pt"
        resumed = train_(model, data, config, checkpoint_path=resumed_path, resume_from=interrupted)
        assert without_seconds(resumed.history) == without_seconds(straight.history), f"cut {cut}"
        for key, tensor in straight.model.state_dict().items():
            assert torch.equal(model.state_dict()[key], tensor), f"cut {cut}: {key}"
        found = read_checkpoint(resumed_path)
        assert_trees_equal(found.state_dict, expected.state_dict, f"cut {cut} state_dict")
        assert_trees_equal(found.training, expected.training, f"cut {cut} training")  # Adam, RNGs, grad_sq
        assert found.meta["finished"] and found.meta["epoch"] == total


def test_resume_from_a_finished_checkpoint_trains_nothing(tmp_path):
    data, config = blobs(), TrainConfig(criterion="bmrs_n", **FAST)
    path = tmp_path / "done.pt"
    done = train_(noisy_mlp(), data, config, checkpoint_path=path)
    calls = []
    model = noisy_mlp(seed=3)
    result = train_(model, data, config, compression=lambda m: calls.append(m) or 0.0, checkpoint_path=path, resume_from=path)
    assert calls == [] and without_seconds(result.history) == without_seconds(done.history)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in done.model.state_dict().items())


BASE = TrainConfig(epochs=1, finetune_epochs=1, batch_size=32, criterion={"name": "grad", "ratio": 0.25}, progress=False)


@pytest.fixture
def finished_checkpoint(tmp_path):
    path = tmp_path / "base.pt"
    train_(noisy_mlp(), blobs(), BASE, checkpoint_path=path)
    return path


@pytest.mark.parametrize(
    "change, named",
    [(dict(lr=2e-3), "train.lr: 0.0014 in the checkpoint, 0.002 now"), (dict(epochs=2), "train.epochs"),
     (dict(criterion={"name": "grad", "ratio": 0.5}), "train.criterion_settings.ratio"), (dict(seed=1), "train.seed"),
     (dict(kl_weighting=KLWeighting.LAYER_MEAN), "train.kl_weighting")],
)  # fmt: skip
def test_resume_under_other_settings_is_refused_by_name(finished_checkpoint, change, named):
    model = noisy_mlp(seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=re.escape(named)) as info:
        train_(model, blobs(), replace(BASE, **change), resume_from=finished_checkpoint)
    assert "base.pt" in str(info.value) and "resume with the settings" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resume_with_another_model_or_data_is_refused(finished_checkpoint):
    with pytest.raises(CheckpointError, match=r"model\.modules\.1"):
        train_(noisy_mlp(width=12), blobs(), BASE, resume_from=finished_checkpoint)
    with pytest.raises(CheckpointError, match=r"data\.train_digest"):
        train_(noisy_mlp(), blobs(seed=1), BASE, resume_from=finished_checkpoint)
    # Progress bars are not part of the result.
    train_(noisy_mlp(), blobs(), replace(BASE, progress=True), resume_from=finished_checkpoint)


def test_resume_needs_a_training_checkpoint(tmp_path):
    weights_only = tmp_path / "weights.pt"
    save_checkpoint(weights_only, noisy_mlp(), {"epoch": 1})
    with pytest.raises(CheckpointError, match="weights only"):
        train_(noisy_mlp(), blobs(), BASE, resume_from=weights_only)
    with pytest.raises(CheckpointError, match="absent.pt"):
        train_(noisy_mlp(), blobs(), BASE, resume_from=tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        train_(noisy_mlp(), blobs(), BASE, resume_from=garbage)


@pytest.mark.parametrize("damage", ["rng", "optimizer", "grad_sq", "history"])
def test_damaged_training_state_is_refused_before_anything_changes(finished_checkpoint, tmp_path, damage):
    payload = torch.load(finished_checkpoint, weights_only=True)
    if damage == "rng":
        payload["training"]["rng"] = torch.zeros(7, dtype=torch.uint8)
    elif damage == "optimizer":
        payload["training"]["optimizer"]["param_groups"][0]["params"] = [0]
    elif damage == "grad_sq":
        payload["training"]["grad_sq"] = {"1.noise": torch.zeros(3)}
    else:
        meta = json.loads(payload["meta"])
        meta["history"] = meta["history"][:1]
        payload["meta"] = json.dumps(meta)
    damaged = tmp_path / "damaged.pt"
    torch.save(payload, damaged)
    model = noisy_mlp(seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(CheckpointError, match="damaged.pt"):
        train_(model, blobs(), BASE, resume_from=damaged)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_resume_in_another_environment_warns(finished_checkpoint, monkeypatch):
    monkeypatch.setenv("BMRS_COMPILE", "0")
    with pytest.warns(UserWarning, match=r"compiled: True in the checkpoint, False now.*not bit for bit"):
        train_(noisy_mlp(), blobs(), BASE, resume_from=finished_checkpoint)


def test_resume_needs_the_recorded_settings(finished_checkpoint, tmp_path):
    payload = torch.load(finished_checkpoint, weights_only=True)
    meta = json.loads(payload["meta"])
    del meta["fingerprint"]
    payload["meta"] = json.dumps(meta)
    torch.save(payload, tmp_path / "anonymous.pt")
    with pytest.raises(CheckpointError, match="does not record the settings"):
        train_(noisy_mlp(), blobs(), BASE, resume_from=tmp_path / "anonymous.pt")


def test_expected_noise_finetuning_trains_the_deployed_network():
    """FinetuneNoise.EXPECTED: the fine-tuning epochs see theta = E[theta] (no draw) folded into the
    weights, learn no posterior and add no KL; the weights still train."""
    data = blobs()
    model = noisy_mlp()
    attach_noise_bank(model)
    config = TrainConfig(**{**FAST, "epochs": 1, "finetune_epochs": 2}, criterion="bmrs_n", finetune_noise=FinetuneNoise.EXPECTED)
    noises = list(noise_modules(model).values())
    draws = []
    original = noises[0].bank.theta_for

    def spy(layer, batch):
        draws.append(batch)
        return original(layer, batch)

    noises[0].bank.theta_for = spy
    after_training = {}

    def snapshot(m):
        if not after_training:  # the compression measure runs once per epoch: the first is training's end
            after_training.update({k: v.clone() for k, v in m.state_dict().items()})
            after_training["masks"] = [noise.mask.clone() for noise in noises]
        return 0.0

    history = train_(model, data, config, compression=snapshot).history
    steps_per_epoch = math.ceil(len(data.train) / FAST["batch_size"])
    assert len(draws) == steps_per_epoch * len(noises)  # draws in the training epoch only
    assert [r.kl for r in history[1:]] == [0.0, 0.0]
    for noise, mask in zip(noises, after_training["masks"]):
        assert torch.equal(noise.mask, mask)
        assert torch.allclose(noise.mean()[mask], torch.ones(int(mask.sum())), atol=1e-6)  # folded: a factor of one
        assert torch.all(noise.mu == noise.log_b)
    final = model.state_dict()
    weights = [key for key in final if key.endswith("weight")]
    assert weights and all(not torch.equal(final[key], after_training[key]) for key in weights)
    assert all(noise.training == model.training for noise in noises)  # no layer left in another mode


def test_a_criterion_on_a_model_without_noise_layers_is_an_error():
    dense = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="'bmrs_n' but the model has no noise layers"):
        train_(dense, blobs(), TrainConfig(**FAST))  # the default criterion is BMRS_N
    history = train_(dense, blobs(), TrainConfig(**{**FAST, "criterion": None})).history  # dense training is explicit
    assert len(history) == FAST["epochs"] + FAST["finetune_epochs"]


def test_checkpoints_that_recorded_only_the_given_criterion_settings_still_resume(tmp_path):
    from bmrs.train.checkpoint import read_checkpoint, save_checkpoint

    config = TrainConfig(**{**FAST, "criterion": {"name": "bmrs_u", "p1": 4}})
    path = tmp_path / "epoch.pt"
    finished = train_(noisy_mlp(), blobs(), config, checkpoint_path=path)
    checkpoint = read_checkpoint(path)

    def rewrite(settings):  # the checkpoint as written before criteria recorded every setting
        meta = json.loads(json.dumps(checkpoint.meta))
        meta["fingerprint"]["train"]["criterion_settings"] = settings
        model = noisy_mlp()
        model.load_state_dict(checkpoint.state_dict)
        save_checkpoint(path, model, meta, training=checkpoint.training)

    rewrite({"p1": 4.0})
    assert train_(noisy_mlp(), blobs(), config, resume_from=path).history == finished.history
    rewrite({"p1": 5.0})
    with pytest.raises(CheckpointError, match="criterion_settings.p1"):
        train_(noisy_mlp(), blobs(), config, resume_from=path)
