"""Post-training pruning (paper section 5) on a tiny learnable problem, and the knee on a hand-made curve."""
from __future__ import annotations

import json

import pytest
import torch

from bmrs.criteria import LayerView, build_criterion
from bmrs.data import DataBundle, Split
from bmrs.train.metrics import classification_metrics
from bmrs.models import build_model, insert_noise, noise_points_for
from bmrs.nn.noise import noise_modules
from bmrs.train.post_training import (
    PostTrainingConfig,
    PruningCurve,
    knee_index,
    post_training_prune,
)
from bmrs.train import TrainConfig, train_
from export.slicing import parameter_compression


def sliced_compression(data):
    example = data.test.images[:2]
    return lambda model: parameter_compression(model, example)

SHAPE = (1, 28, 28)


def teacher_data(num_train=600, num_val=100, num_test=200, classes=10, seed=0, latent=4) -> DataBundle:
    """Images that are a fixed random mixing of a few latent variables, labelled by a fixed random
    linear teacher on those latents: 784 pixels but few real degrees of freedom, so an MLP learns
    it in two epochs from 600 examples (a teacher on raw pixels would need far more)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(latent, SHAPE[1] * SHAPE[2], generator=generator) / latent**0.5
    teacher = torch.randn(latent, classes, generator=generator)

    def split(n):
        z = torch.randn(n, latent, generator=generator)
        images = torch.sigmoid(z @ mixing).reshape(n, *SHAPE)
        return Split(images, (z @ teacher).argmax(1))

    return DataBundle("teacher", split(num_train), split(num_val), split(num_test), classes)


@pytest.fixture(scope="module")
def data():
    return teacher_data()


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, 10, hidden_width=32, hidden_layers=1)
    insert_noise(model, noise_points_for("mlp", model))
    with torch.no_grad():  # a few units start near theta ~ e^-19 so BMRS has something to find
        noise = next(iter(noise_modules(model).values()))
        noise.mu[:6] = -19.0
        noise.log_sigma[:6] = 0.5
    config = TrainConfig(epochs=2, finetune_epochs=0, criterion=None, batch_size=16, lr=1e-2, progress=False)
    train_(model, data, config)
    assert classification_metrics(model, data.test).accuracy > 0.5  # it learned: the curve has something to lose
    return model


def fast(criterion, **overrides):
    settings = dict(criterion=criterion, steps=4, finetune_epochs=1, lr=1e-3, batch_size=64, seed=0)
    settings.update(overrides)
    return PostTrainingConfig(**settings)


def check_curve(curve: PruningCurve, model):
    points = curve.points
    assert points[0].removed == 0
    removed = [p.removed for p in points]
    compression = [p.compression for p in points]
    assert removed == sorted(removed) and len(set(removed)) == len(removed)
    assert all(b >= a - 1e-12 for a, b in zip(compression, compression[1:]))
    assert points[0].compression == pytest.approx(0.0, abs=1e-12)
    layers = noise_modules(model)
    removable = sum(int(n.mask.sum()) - 1 for n in layers.values())
    assert points[-1].removed == removable  # everything but each layer's last structure
    assert points[-1].compression < 1.0
    assert curve.knee_index is None or 0 <= curve.knee_index < len(points)
    for p in points:
        assert 0.0 <= p.accuracy <= 1.0 and 0.0 <= p.ece <= 1.0


@pytest.mark.parametrize("criterion", ["snr", "l2", "bmrs_n"])
def test_curve_shape(trained, data, criterion):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    curve = post_training_prune(trained, data, fast(criterion), compression=sliced_compression(data))
    check_curve(curve, trained)
    # The trained model itself is not pruned or fine-tuned.
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    restored = json.loads(json.dumps(curve.to_dict(), allow_nan=False))
    assert restored == curve.to_dict()
    assert restored["criterion"] == criterion and len(restored["points"]) == len(curve.points)
    if criterion.startswith("bmrs"):
        assert curve.bmrs_boundary is not None
    else:
        assert curve.bmrs_boundary is None and curve.bmrs_stop_index is None


def test_bmrs_boundary_matches_direct_count(trained, data):
    criterion = build_criterion("bmrs_n")
    direct = 0
    for name, noise in noise_modules(trained).items():
        view = LayerView(name, noise, trained.get_submodule(noise.source))
        direct += int((criterion.decide(view).prune & noise.mask).sum())
    assert direct >= 6  # the units started at theta ~ e^-19
    curve = post_training_prune(trained, data, fast("bmrs_n", steps=3, finetune_epochs=0), compression=sliced_compression(data))
    assert curve.bmrs_boundary == direct
    stop = curve.points[curve.bmrs_stop_index]
    assert stop.removed == direct
    # Without fine-tuning, removing structures BMRS says add nothing hardly moves the accuracy.
    assert stop.accuracy == pytest.approx(curve.points[0].accuracy, abs=0.02)
    regular = {round(i * curve.points[-1].removed / 3) for i in range(4)}
    assert {p.removed for p in curve.points} == regular | {direct}

    unstopped = post_training_prune(trained, data, fast("bmrs_n", steps=3, finetune_epochs=0, stop_at_bmrs_boundary=False), compression=sliced_compression(data))
    assert unstopped.bmrs_boundary == direct
    assert {p.removed for p in unstopped.points} == regular


def test_grad_criterion_collects_statistics(trained, data):
    curve = post_training_prune(trained, data, fast("grad", steps=2, finetune_epochs=0), compression=sliced_compression(data))
    check_curve(curve, trained)


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown pruning criterion 'nope'"):
        PostTrainingConfig(criterion="nope")
    with pytest.raises(ValueError, match="no setting 'ratioo'"):
        PostTrainingConfig(criterion={"name": "l2", "ratioo": 0.5})
    with pytest.raises(TypeError, match="a criterion is a name such as 'bmrs_n'"):
        PostTrainingConfig(criterion=[("name", "l2"), ("ratio", 0.5)])
    with pytest.raises(ValueError, match="steps"):
        PostTrainingConfig(criterion="snr", steps=0)
    with pytest.raises(ValueError, match="lr"):
        PostTrainingConfig(criterion="snr", lr=float("nan"))


def test_model_without_noise_is_refused(data):
    model = build_model("mlp", SHAPE, 10, hidden_width=8, hidden_layers=1)
    with pytest.raises(ValueError, match="no noise layers"):
        post_training_prune(model, data, PostTrainingConfig(criterion="snr"), compression=sliced_compression(data))


def test_knee_on_hand_made_curve():
    # Accuracy flat until 0.6 compression, then falling: the knee is the last flat point.
    xs = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ys = [0.90, 0.90, 0.89, 0.88, 0.50, 0.10]
    assert knee_index(xs, ys) == 3
    # Units do not matter: the same shape in percent and parameter counts.
    assert knee_index([x * 1e6 for x in xs], [y * 100 for y in ys]) == 3
    assert knee_index([0.0, 0.5, 1.0], [1.0, 0.5, 0.0]) is None  # straight: no knee
    assert knee_index([0.0, 1.0], [1.0, 0.0]) is None
    with pytest.raises(ValueError, match="as many"):
        knee_index([0.0, 1.0], [1.0])


def test_to_dict_replaces_non_finite():
    from bmrs.train.post_training import CurvePoint

    curve = PruningCurve("snr", [CurvePoint(0, 0.0, 0.5, float("inf"), 0.1)], None, None, None)
    assert curve.to_dict()["points"][0]["nll"] is None
    json.dumps(curve.to_dict(), allow_nan=False)
