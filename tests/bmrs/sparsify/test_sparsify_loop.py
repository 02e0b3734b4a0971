"""``sparsify_`` end to end on tiny data: it removes weights and keeps accuracy, resumes to the
uninterrupted result, refuses what it cannot continue, and sparsifies a structurally sliced model."""
from __future__ import annotations

import copy
import shutil
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bmrs.sparsify.checkpoints as checkpoints
import bmrs.sparsify.loop as loop
from bmrs.data import DataBundle, Split
from bmrs.sparsify import CHECKPOINT_NAME, SparsifyConfig, meanfield_layers, sparsify_, weight_sparsity
from bmrs.train import TrainingDivergedError
from bmrs.train.checkpoint import CheckpointError
from export.slicing import slice_

QUICK = SparsifyConfig(epochs=3, finetune_epochs=2, max_rounds=2, batch_size=64, lr=1e-2, progress=False)


def separable(num: int, seed: int, dims: int = 10) -> Split:
    """Two classes split by ``x0 - x1 = 0`` with a margin; the other dimensions are noise."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num, dims, generator=generator)
    score = x[:, 0] - x[:, 1]
    keep = score.abs() > 0.3
    return Split(x[keep].reshape(-1, 1, 1, dims), (score[keep] > 0).long())


def separable_data() -> DataBundle:
    return DataBundle("separable", separable(600, seed=0), separable(400, seed=1), separable(200, seed=2), 2)


def pretrain(model: nn.Module, split: Split, epochs: int = 20, lr: float = 1e-2) -> nn.Module:
    """A trained starting point, as the pipeline hands over (the dense model, or the sliced one)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        for images, labels in split.batches(64, generator=torch.Generator().manual_seed(epoch)):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_mlp() -> tuple[nn.Module, DataBundle]:
    torch.manual_seed(0)
    data = separable_data()
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    return pretrain(model, data.train), data


def records(result) -> tuple[list, list]:
    """The result's records without their wall times, which no two runs share."""
    rounds = [{k: v for k, v in asdict(r).items() if k not in ("prune_seconds", "epoch_seconds")} for r in result.rounds]
    epochs = [{k: v for k, v in asdict(e).items() if k != "seconds"} for e in result.epochs]
    return rounds, epochs


def assert_same_run(first, second) -> None:
    assert records(first) == records(second)
    assert first.stopped_early == second.stopped_early
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    for key, value in first.meanfield.state_dict().items():
        assert torch.equal(value, second.meanfield.state_dict()[key]), key


def test_sparsify_removes_most_weights_and_keeps_accuracy(trained_mlp) -> None:
    start, data = trained_mlp
    model = copy.deepcopy(start)
    config = SparsifyConfig(epochs=20, finetune_epochs=5, max_rounds=6, batch_size=64, lr=1e-2, progress=False)
    result = sparsify_(model, data, config)
    # Observed: 71% of the weights removed (86% of the first layer's, whose output layer is never
    # pruned), validation accuracy 1.0, ECE 0.035; rounds removing 267, 5, 2 and then 0 weights.
    assert result.sparsity >= 0.6 and result.rounds[-1].accuracy >= 0.97 and result.rounds[-1].ece < 0.1
    first_mask = meanfield_layers(result.meanfield)["1"].weight_mask
    assert first_mask[:, 2:].float().mean() < 0.1  # the 8 noise inputs are all but cut off
    assert result.stopped_early and result.rounds[-1].pruned == 0 and len(result.rounds) < config.max_rounds + 1
    assert [r.round for r in result.rounds] == list(range(len(result.rounds)))
    assert result.rounds[0].pruned == 0 and result.rounds[0].prune_seconds is None and result.rounds[1].pruned > 0
    assert all(r.prune_seconds > 0 for r in result.rounds[1:]) and all(r.epoch_seconds > 0 for r in result.rounds[:-1])
    output = meanfield_layers(result.meanfield)["3"]
    assert result.rounds[-1].alive_by_layer["3"] == output.num_weights  # the output layer is the authors' exception
    # In place: the same model, plain layers, the removed weights exactly 0, the mean-field model's function.
    assert result.model is model and [type(m) for m in model] == [type(m) for m in start]
    assert weight_sparsity(model) == pytest.approx(result.sparsity)
    assert torch.equal(model[1].weight == 0, ~first_mask)
    with torch.no_grad():
        assert torch.allclose(model(data.val.images), result.meanfield.eval()(data.val.images), atol=1e-6)


@pytest.fixture
def snapshot_saves(monkeypatch, tmp_path):
    """Every checkpoint a run writes, kept in order (the run itself keeps only the latest)."""
    saved = []

    def save_and_keep(path, model, meta, *, training=None):
        loop_save(path, model, meta, training=training)
        copy_path = tmp_path / "snapshots" / f"{len(saved):03d}.pt"
        copy_path.parent.mkdir(exist_ok=True)
        shutil.copy(path, copy_path)
        saved.append(copy_path)

    loop_save = checkpoints.save_checkpoint
    monkeypatch.setattr(checkpoints, "save_checkpoint", save_and_keep)
    return saved


def test_resuming_from_every_checkpoint_gives_the_uninterrupted_result(trained_mlp, tmp_path, snapshot_saves) -> None:
    start, data = trained_mlp
    uninterrupted = sparsify_(copy.deepcopy(start), data, QUICK, checkpoint_dir=tmp_path / "run")
    # 3 fit epochs + round 0, then per round: its dF step, 2 epochs, its record.
    assert len(snapshot_saves) == 4 + 2 * 4
    for snapshot in list(snapshot_saves):
        directory = tmp_path / f"resume_{snapshot.stem}"
        directory.mkdir()
        shutil.copy(snapshot, directory / CHECKPOINT_NAME)
        assert_same_run(uninterrupted, sparsify_(copy.deepcopy(start), data, QUICK, checkpoint_dir=directory, resume=True))


@pytest.mark.parametrize("optimizer", ["adam", "adabelief"])
def test_an_interrupted_run_resumes_where_it_stopped(trained_mlp, tmp_path, monkeypatch, optimizer) -> None:
    start, data = trained_mlp
    config = replace(QUICK, optimizer=optimizer, lr=1e-2 if optimizer == "adam" else 1e-3)
    uninterrupted = sparsify_(copy.deepcopy(start), data, config)
    run_epoch, calls = loop._run_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # round 1's second epoch
            raise KeyboardInterrupt
        return run_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "_run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sparsify_(copy.deepcopy(start), data, config, checkpoint_dir=tmp_path)
    resumed = sparsify_(copy.deepcopy(start), data, config, checkpoint_dir=tmp_path, resume=True)
    assert len(calls) == 5 + 2 + 2 - 1  # the interrupted epoch again, and what was left
    assert_same_run(uninterrupted, resumed)
    assert resumed.sparsity > 0


def test_resume_starts_afresh_without_a_checkpoint_and_returns_a_finished_one(trained_mlp, tmp_path, monkeypatch) -> None:
    start, data = trained_mlp
    fresh = sparsify_(copy.deepcopy(start), data, QUICK, checkpoint_dir=tmp_path, resume=True)
    assert_same_run(sparsify_(copy.deepcopy(start), data, QUICK), fresh)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(loop, "_run_epoch", no_training)
    assert_same_run(fresh, sparsify_(copy.deepcopy(start), data, QUICK, checkpoint_dir=tmp_path, resume=True))
    # Plain data a weights_only load reads, as every project checkpoint is.
    payload = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert set(payload) == {"state_dict", "meta", "training"}


def test_resume_refuses_other_settings_another_start_and_no_directory(trained_mlp, tmp_path) -> None:
    start, data = trained_mlp
    sparsify_(copy.deepcopy(start), data, replace(QUICK, max_rounds=1), checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="different settings.*sparsify.lr"):
        sparsify_(copy.deepcopy(start), data, replace(QUICK, max_rounds=1, lr=2e-2), checkpoint_dir=tmp_path, resume=True)
    other_start = copy.deepcopy(start)
    with torch.no_grad():
        other_start[1].weight.mul_(2)
    with pytest.raises(CheckpointError, match="different settings.*model.values"):
        sparsify_(other_start, data, replace(QUICK, max_rounds=1), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="resume=True needs the checkpoint_dir"):
        sparsify_(copy.deepcopy(start), data, QUICK, resume=True)


def test_a_nan_loss_raises_a_clear_error(trained_mlp) -> None:
    start, data = trained_mlp
    images = data.train.images.clone()
    images[3, 0, 0, 0] = float("nan")
    broken = replace(data, train=Split(images, data.train.labels))
    with pytest.raises(TrainingDivergedError, match=r"loss became nan in the initial fit, epoch 1, step \d+ .* lower sparsify.lr"):
        sparsify_(copy.deepcopy(start), broken, QUICK)


def test_refuses_noise_layers_nothing_to_prune_and_an_absent_device(trained_mlp) -> None:
    from bmrs.nn.noise import LogNormalNoise

    start, data = trained_mlp
    noisy = nn.Sequential(copy.deepcopy(start), LogNormalNoise(2))
    with pytest.raises(ValueError, match="still has BMRS noise layers"):
        sparsify_(noisy, data, QUICK)
    with pytest.raises(ValueError, match="only Linear/Conv2d layer .* set it to true"):
        sparsify_(nn.Sequential(nn.Flatten(), nn.Linear(10, 2)), data, QUICK)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            sparsify_(copy.deepcopy(start), data, replace(QUICK, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of torch")
def test_sparsify_on_cuda_removes_weights_and_hands_the_model_back(trained_mlp, tmp_path) -> None:
    start, data = trained_mlp
    on_cpu = sparsify_(copy.deepcopy(start), data, QUICK)
    model = copy.deepcopy(start)
    on_gpu = sparsify_(model, data, replace(QUICK, device="cuda"), checkpoint_dir=tmp_path)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert abs(weight_sparsity(model) - weight_sparsity(on_cpu.model)) < 0.1  # other bits, the same method
    assert on_gpu.rounds[-1].accuracy >= on_cpu.rounds[-1].accuracy - 0.05
    resumed = sparsify_(copy.deepcopy(start), data, replace(QUICK, device="cuda"), checkpoint_dir=tmp_path, resume=True)
    assert records(resumed) == records(on_gpu)  # a finished checkpoint is loaded, not retrained


def blobs(num: int, seed: int, classes: int = 4) -> Split:
    """Four Gaussian blobs in pixel space (centres shared by every split)."""
    centres = torch.rand(classes, 1, 6, 6, generator=torch.Generator().manual_seed(100))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (num,), generator=generator)
    return Split(centres[labels] + 0.15 * torch.randn(num, 1, 6, 6, generator=generator), labels)


def test_a_structurally_sliced_model_is_sparsified_in_place(tmp_path) -> None:
    """The combined mode: structured pruning's sliced plain model (fewer channels, a depthwise
    convolution, batch norm) goes through sparsify_ and keeps its modules, keys and shapes."""
    torch.manual_seed(0)
    data = DataBundle("blobs", blobs(256, seed=1), blobs(128, seed=2), blobs(64, seed=3), 4)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(),
        nn.Conv2d(8, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    )  # fmt: skip
    channels = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    keep = {"0": channels, "3": channels, "5": torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.bool)}
    sliced = slice_(pretrain(model, data.train, epochs=5), keep, data.train.images[:2])
    shapes = {key: value.shape for key, value in sliced.state_dict().items()}
    config = replace(QUICK, max_rounds=1, prune_output_layer=True)
    result = sparsify_(sliced, data, config, checkpoint_dir=tmp_path)
    assert result.model is sliced and {key: value.shape for key, value in sliced.state_dict().items()} == shapes
    assert list(meanfield_layers(result.meanfield)) == ["0", "3", "5", "9"]
    assert weight_sparsity(sliced) == pytest.approx(result.sparsity) and result.sparsity > 0
    with torch.no_grad():
        assert torch.allclose(sliced.eval()(data.val.images), result.meanfield.eval()(data.val.images), atol=1e-5)
