"""Model registry, noise placement and the function a noisy model computes in evaluation."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bmrs.models import (
    MODELS,
    LeNet5,
    Noised,
    build_model,
    every_hidden_layer,
    insert_noise,
    lenet5_points,
    noise_modules,
    noise_points_for,
)


def noisy(name: str, input_shape, num_classes=10, **options) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, input_shape, num_classes, **options)
    return insert_noise(model, noise_points_for(name, model))


@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", ["mlp", "lenet5"])
def test_output_shape(name, input_shape):
    model = build_model(name, input_shape, 10)
    x = torch.rand(4, *input_shape)
    assert model(x).shape == (4, 10)
    model = noisy(name, input_shape)
    for train in (True, False):
        model.train(train)
        assert model(x).shape == (4, 10)


def test_mlp_noise_points():
    model = noisy("mlp", (1, 28, 28))
    noises = noise_modules(model)
    assert len(noises) == 1
    (noise,) = noises.values()
    assert noise.num_structures == 150
    source = model.get_submodule(noise.source)
    assert isinstance(source, nn.Linear) and source.out_features == 150 and source.in_features == 784

    deep = noisy("mlp", (1, 28, 28), num_classes=5, hidden_width=20, hidden_layers=3)
    noises = list(noise_modules(deep).values())
    assert len(noises) == 3
    sources = [deep.get_submodule(n.source) for n in noises]
    assert [s.in_features for s in sources] == [784, 20, 20]
    assert all(s.out_features == 20 for s in sources)
    # the classifier layer carries no noise
    assert isinstance(deep[-1], nn.Linear) and deep[-1].out_features == 5


@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32)])
def test_lenet5_noise_points(input_shape):
    model = noisy("lenet5", input_shape)
    noises = list(noise_modules(model).values())
    assert [n.num_structures for n in noises] == [6, 16, 120, 84]
    sources = [model.get_submodule(n.source) for n in noises]
    assert [type(s) for s in sources] == [nn.Conv2d, nn.Conv2d, nn.Linear, nn.Linear]
    assert [s.out_channels for s in sources[:2]] == [6, 16]
    assert sources[0].in_channels == input_shape[0]
    assert [s.out_features for s in sources[2:]] == [120, 84]
    assert sources[2].in_features == 400
    # conv noise sits after each ReLU + max pool; fc noise right after the layer
    wrappers = [m for m in model.modules() if isinstance(m, Noised)]
    assert [type(w.inner) for w in wrappers] == [nn.MaxPool2d, nn.MaxPool2d, nn.Linear, nn.Linear]


def test_noise_point_rules():
    model = build_model("lenet5", (1, 28, 28), 10)
    points = lenet5_points(model)
    assert [(p.after, p.source, p.channels) for p in points] == [
        ("features.2", "features.0", 6),
        ("features.5", "features.3", 16),
        ("classifier.1", "classifier.1", 120),
        ("classifier.3", "classifier.3", 84),
    ]
    with pytest.raises(TypeError):
        lenet5_points(build_model("mlp", (1, 28, 28), 10))
    # unknown families fall back to every hidden Linear/Conv2d
    assert noise_points_for("something_else", model) == every_hidden_layer(model)


def _fold_expected_theta(plain: nn.Module, noisy_model: nn.Module) -> None:
    """Scale each source layer's output rows of ``plain`` by the matching E[theta] of ``noisy_model``."""
    with torch.no_grad():
        for noise in noise_modules(noisy_model).values():
            layer = plain.get_submodule(noise.source.replace(".inner", ""))
            theta = noise.mean().detach()
            layer.weight.mul_(theta.view(-1, *([1] * (layer.weight.dim() - 1))))
            layer.bias.mul_(theta)


@pytest.mark.parametrize("name, input_shape", [("lenet5", (1, 28, 28)), ("lenet5", (3, 32, 32)), ("mlp", (1, 28, 28))])
def test_eval_equals_expected_theta_folded_into_weights(name, input_shape):
    torch.manual_seed(0)
    plain = build_model(name, input_shape, 10)
    model = insert_noise(copy.deepcopy(plain), noise_points_for(name, plain))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for noise in noise_modules(model).values():
            n = noise.num_structures
            noise.mu.copy_(torch.rand(n, generator=generator) * 3.5 - 3.0)
            noise.log_sigma.copy_(torch.rand(n, generator=generator) * 5.0 - 5.0)
            noise.prune_(torch.rand(n, generator=generator) < 0.2)
    model.eval()
    x = torch.rand(8, *input_shape, generator=generator)
    expected_model = copy.deepcopy(plain)
    _fold_expected_theta(expected_model, model)
    assert torch.allclose(model(x), expected_model(x), rtol=1e-4, atol=1e-6)
    # and the noise changed the function (it is not a no-op)
    assert not torch.allclose(model(x), plain(x), rtol=1e-3, atol=1e-4)


def test_train_mode_is_stochastic_and_eval_is_not():
    model = noisy("lenet5", (1, 28, 28))
    with torch.no_grad():
        for noise in noise_modules(model).values():
            noise.log_sigma.fill_(-1.0)
    x = torch.rand(2, 1, 28, 28)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_noise_options_are_passed_through():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 3, hidden_width=5)
    insert_noise(model, noise_points_for("mlp", model), init_mu=-2.0, init_log_sigma=-1.0, log_a=-10.0)
    (noise,) = noise_modules(model).values()
    assert noise.log_a == -10.0
    assert torch.equal(noise.mu.detach(), torch.full((5,), -2.0))
    assert torch.equal(noise.log_sigma.detach(), torch.full((5,), -1.0))


def test_bad_arguments():
    assert {"mlp", "lenet5"} <= set(MODELS)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet9000", (1, 28, 28), 10)
    with pytest.raises(ValueError):
        build_model("lenet5", (1, 30, 30), 10)
    with pytest.raises(ValueError):
        build_model("lenet5", (1, 28, 32), 10)
    with pytest.raises(ValueError):
        build_model("mlp", (1, 28, 28), 10, hidden_width=0)
    assert isinstance(build_model("lenet5", (3, 32, 32), 10), LeNet5)
