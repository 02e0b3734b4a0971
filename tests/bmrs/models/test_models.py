"""Model registry, noise placement and the function a noisy model computes in evaluation."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bmrs.models import (
    MODELS,
    LeNet5,
    ModelConfig,
    NoiseInit,
    Noised,
    build_model,
    build_network,
    every_hidden_layer,
    insert_noise,
    lenet5_points,
    noise_points_for,
)
from bmrs.nn.noise import noise_modules


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
    # unknown families (user models) get every hidden Linear/Conv2d that can carry noise, found by tracing
    assert noise_points_for("something_else", model, input_shape=(1, 28, 28)) == every_hidden_layer(model)
    with pytest.raises(TypeError, match="pass input_shape"):
        noise_points_for("something_else", model)


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


# ------------------------------------------------------------------------------- the paper's presets


@pytest.mark.parametrize("preset, width, layers", [("mnist", 100, 7), ("fashion_mnist", 150, 1), ("cifar10", 150, 5)])
def test_mlp_presets_are_the_papers(preset, width, layers):
    from bmrs.models import MLP_PRESETS, mlp_settings

    assert (MLP_PRESETS[preset].hidden_width, MLP_PRESETS[preset].hidden_layers) == (width, layers)
    model = build_model("mlp", (1, 4, 4), 10, preset=preset)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [width] * layers + [10]
    # an explicit value that agrees with the preset is fine; one that disagrees names both
    assert mlp_settings(preset, hidden_width=width) == {"hidden_width": width, "hidden_layers": layers}
    with pytest.raises(ValueError, match=rf"preset '{preset}' has hidden_layers={layers} but hidden_layers=2"):
        build_model("mlp", (1, 4, 4), 10, preset=preset, hidden_layers=2)


def test_mlp_settings_defaults_and_errors():
    from bmrs.models import mlp_settings

    assert mlp_settings() == {"hidden_width": 150, "hidden_layers": 1}
    assert mlp_settings(hidden_width=32) == {"hidden_width": 32, "hidden_layers": 1}
    with pytest.raises(ValueError, match=r"unknown mlp preset 'imagenet'; choose one of \['cifar10'"):
        mlp_settings("imagenet")
    with pytest.raises(ValueError, match="integer >= 1"):
        mlp_settings(hidden_layers=True)


# ------------------------------------------------------------------------ the user's own model


FACTORIES = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(5 * 4 * 4, 7), nn.ReLU(), nn.Linear(7, classes))

    def forward(self, x):
        return self.classifier(self.features(x))

def make(input_shape, num_classes):
    return Net(input_shape[0], num_classes)

def make_fixed():
    return Net(1, 3)

def make_classes(num_classes, width=7):
    return Net(1, num_classes)

def make_anything(**settings):
    return Net(settings["input_shape"][0], settings["num_classes"])

def make_deep(depth):
    return Net(1, 3)

def make_nothing():
    return 42

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.block, self.out = nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x.flatten(1)))
        return self.out(h + torch.relu(self.block(h)))

not_callable = 3
'''


@pytest.fixture
def user_module(importable_module) -> str:
    """A module of factories, importable under a name unique to the test."""
    return importable_module(FACTORIES, "user_factories")


@pytest.mark.parametrize("factory, input_shape, classes", [
    ("make", (2, 4, 4), 6), ("make_fixed", (1, 4, 4), 3), ("make_classes", (1, 4, 4), 5), ("make_anything", (3, 4, 4), 4),
    ("Net", None, None),
])  # fmt: skip
def test_user_factory_gets_the_keywords_it_accepts(user_module, factory, input_shape, classes):
    if factory == "Net":  # a class whose parameters are neither keyword: it cannot be called
        with pytest.raises(TypeError, match=r"requires \['channels', 'classes'\].*give the other parameters defaults"):
            build_model(f"{user_module}:Net", (1, 4, 4), 3)
        return
    model = build_model(f"{user_module}:{factory}", input_shape, classes)
    assert model(torch.rand(2, *input_shape)).shape == (2, classes)
    assert model.training  # the output check leaves the model in training mode


def test_user_factory_errors_name_the_fix(user_module, tmp_path, monkeypatch):
    with pytest.raises(TypeError, match=r"requires \['depth'\]"):
        build_model(f"{user_module}:make_deep", (1, 4, 4), 3)
    with pytest.raises(TypeError, match="returned a int, not a torch.nn.Module"):
        build_model(f"{user_module}:make_nothing", (1, 4, 4), 3)
    with pytest.raises(TypeError, match="'not_callable' is a int, not a callable factory"):
        build_model(f"{user_module}:not_callable", (1, 4, 4), 3)
    with pytest.raises(ValueError, match=r"has no attribute 'mkae'; its public callables are \['Net', 'Residual', 'make'"):
        build_model(f"{user_module}:mkae", (1, 4, 4), 3)
    with pytest.raises(ValueError, match=r"maps a batch of 2 images to \(2, 3\); it must return logits shaped \(batch, 5\)"):
        build_model(f"{user_module}:make_fixed", (1, 4, 4), 5)  # a fixed 3-class model on 5 classes
    with pytest.raises(ValueError, match=r"fails on a batch of the dataset's images shaped \(2, 1, 5, 5\)"):
        build_model(f"{user_module}:make_fixed", (1, 5, 5), 3)
    with pytest.raises(ValueError, match="options \\['hidden_width'\\] apply to built-in models only"):
        build_model(f"{user_module}:make", (1, 4, 4), 3, hidden_width=3)
    for spec in ("nomodule_here_xyz:make", "nopackage_xyz.sub:make"):
        with pytest.raises(ValueError, match=r"no module '(nomodule_here|nopackage)_xyz'.*add its folder to PYTHONPATH"):
            build_model(spec, (1, 4, 4), 3)
    for spec in ("mod:", "mod:a:b", "my-mod:make", "mod:make()", "mod.:make"):
        with pytest.raises(ValueError, match="is not of the form package.module:factory"):
            build_model(spec, (1, 4, 4), 3)
    (tmp_path / "needs_dependency_xyz.py").write_text("import missing_dependency_xyz\n")
    with pytest.raises(ValueError, match="No module named 'missing_dependency_xyz'; install what it needs"):
        build_model("needs_dependency_xyz:make", (1, 4, 4), 3)
    (tmp_path / "broken_syntax_xyz.py").write_text("def make(:\n")
    with pytest.raises(ValueError, match="raised SyntaxError.*fix the module"):
        build_model("broken_syntax_xyz:make", (1, 4, 4), 3)


def test_user_module_is_found_in_the_current_directory(tmp_path, monkeypatch):
    import sys

    (tmp_path / "cwd_factories_xyz.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    try:
        model = build_model("cwd_factories_xyz:make", (1, 4, 4), 3)
    finally:
        sys.modules.pop("cwd_factories_xyz", None)
    assert model(torch.rand(1, 1, 4, 4)).shape == (1, 3)
    assert sys.path == path_before  # the current directory is on the path only for the lookup


def test_user_model_noise_points_automatic_and_explicit(user_module):
    spec = f"{user_module}:make"
    model = build_model(spec, (2, 4, 4), 3)
    automatic = noise_points_for(spec, model, input_shape=(2, 4, 4))
    assert [(p.after, p.source, p.channels) for p in automatic] == [
        ("features.0", "features.0", 4), ("features.2", "features.2", 5), ("classifier.1", "classifier.1", 7)
    ]  # fmt: skip
    # listed out of order: the points follow the model's module order
    explicit = noise_points_for(spec, model, ["classifier.1", "features.0"], input_shape=(2, 4, 4))
    assert [(p.after, p.channels) for p in explicit] == [("features.0", 4), ("classifier.1", 7)]
    insert_noise(model, explicit)
    assert sorted(noise_modules(model)) == ["classifier.1.noise", "features.0.noise"]
    assert model(torch.rand(2, 2, 4, 4)).shape == (2, 3)
    # an explicit list also replaces a built-in family's rule
    lenet = build_model("lenet5", (1, 28, 28), 10)
    assert [p.after for p in noise_points_for("lenet5", lenet, ("features.3",), input_shape=(1, 28, 28))] == ["features.3"]


@pytest.mark.parametrize("paths, error, fragment", [
    (["features.9"], ValueError, "'features.9' is not a Linear/Conv2d layer of the model (layers: ['features.0', 'features.2', 'classifier.1', 'classifier.3'])"),
    (["features.1"], ValueError, "'features.1' is not a Linear/Conv2d layer"),
    (["classifier.3"], ValueError, "'classifier.3' cannot carry noise: its outputs are the model's outputs (the classes)"),
    (["features.0", "features.0"], ValueError, "listed twice"),
    ([], ValueError, "list is empty"),
    ("features.0", TypeError, "must be a list of layer paths"),
])  # fmt: skip
def test_bad_explicit_noise_points(user_module, paths, error, fragment):
    model = build_model(f"{user_module}:make", (2, 4, 4), 3)
    with pytest.raises(error) as info:
        noise_points_for(f"{user_module}:make", model, paths, input_shape=(2, 4, 4))
    assert fragment in str(info.value)


def test_user_model_with_explicit_noise_slices_to_the_same_function(user_module):
    from export.slicing import slice_model

    torch.manual_seed(0)
    model = build_model(f"{user_module}:make", (2, 4, 4), 3)
    insert_noise(model, noise_points_for(f"{user_module}:make", model, ["features.0", "classifier.1"], input_shape=(2, 4, 4)))
    for noise in noise_modules(model).values():
        noise.prune_(torch.arange(noise.num_structures) % 2 == 0)
    model.eval()
    x = torch.rand(4, 2, 4, 4)
    sliced = slice_model(model, x)
    assert sliced.widths == {"features.0": 2, "features.2": 5, "classifier.1": 3, "classifier.3": 3}
    assert torch.allclose(sliced.model(x), model(x), atol=1e-5)


def _residual(user_module, pruned: tuple[str, ...]) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(f"{user_module}:Residual", (1, 4, 4), 3)
    insert_noise(model, every_hidden_layer(model))  # inp and block, summed: bypasses the analysis that refuses them
    for path in pruned:
        model.get_submodule(path).noise.prune_(torch.arange(8) < 3)
    return model.eval()


def test_residual_user_model_with_both_summed_layers_pruned_alike_slices_exactly(user_module):
    from export.slicing import slice_model

    model = _residual(user_module, ("inp", "block"))
    x = torch.rand(5, 1, 4, 4)
    sliced = slice_model(model, x)
    assert sliced.widths["inp"] == sliced.widths["block"] == 5
    assert torch.allclose(sliced.model(x), model(x), atol=1e-5)


@pytest.mark.parametrize("pruned", ["inp", "block"])
def test_residual_user_model_with_one_summed_layer_pruned_is_not_mis_sliced(user_module, pruned):
    from export.slicing import slice_model

    model = _residual(user_module, (pruned,))
    x = torch.rand(5, 1, 4, 4)
    try:
        sliced = slice_model(model, x)
    except ValueError as error:
        assert "coupled" in str(error)
        return
    assert torch.allclose(sliced.model(x), model(x), atol=1e-5)


def test_lenet5_widths_build_the_narrower_network_and_its_noise():
    model = noisy("lenet5", (1, 28, 28), widths=[4, 8, 12, 10])
    sizes = {name: noise.num_structures for name, noise in noise_modules(model).items()}
    assert sorted(sizes.values()) == [4, 8, 10, 12]
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in build_model("lenet5", (1, 28, 28), 10).parameters()) == 61706


@pytest.mark.parametrize("widths", [(6, 16, 120), (6, 0, 120, 84), (6, 16.5, 120, 84)])
def test_lenet5_refuses_bad_widths(widths):
    with pytest.raises(ValueError, match=r"four integers >= 1 \(conv1, conv2, fc1, fc2\)"):
        build_model("lenet5", (1, 28, 28), 10, widths=widths)


def test_start_on_starts_the_named_layers_at_theta_one_and_the_rest_at_the_init():
    init = NoiseInit(init_mu=-20.0, init_log_sigma=5.0, start_on=["features"])
    assert init.start_on == ("features",)
    model = build_network(ModelConfig("lenet5"), (1, 28, 28), 10, noise=init, seed=0)
    for name, noise in noise_modules(model).items():
        on = name.startswith("features")
        assert torch.all(noise.mu == (0.0 if on else -20.0)) and torch.all(noise.log_sigma == (-5.0 if on else 5.0)), name
        mean = noise.mean()
        assert torch.all(mean > 0.99) if on else torch.all(mean < 0.06), name
    same = build_network(ModelConfig("lenet5"), (1, 28, 28), 10, noise=NoiseInit(init_mu=-20.0, init_log_sigma=5.0, start_on=("features.0", "features.3")), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))


@pytest.mark.parametrize("start_on, error, message", [
    (["feature"], ValueError, r"start_on names 'feature', which holds no noise layer; the noisy layers are \['classifier.1', 'classifier.3', 'features.0', 'features.3'\]"),
    ("features", TypeError, "start_on must be a list of layer paths"),
    ([""], TypeError, "start_on must be a list of layer paths"),
])  # fmt: skip
def test_start_on_refuses_paths_without_noise(start_on, error, message):
    with pytest.raises(error, match=message):
        build_network(ModelConfig("lenet5"), (1, 28, 28), 10, noise=NoiseInit(start_on=start_on), seed=0)


def _noise_names(model: nn.Module) -> list[str]:
    return sorted(noise_modules(model))


def test_noise_off_the_first_layer_spares_the_input_layer_of_any_architecture(user_module):
    from bmrs.models import ModelConfig, build_network
    from bmrs.nn.insert import NoiseInit

    def noisy(first: bool, **model) -> nn.Module:
        config = ModelConfig(noise_on_first_layer=first, **model)
        return build_network(config, shapes[config.name], 3, noise=NoiseInit())

    shapes = {"lenet5": (1, 28, 28), f"{user_module}:make": (2, 4, 4), "mlp": (1, 28, 28)}
    # LeNet5's rule: noise after conv1's pooling, conv2's pooling, fc1, fc2; false drops conv1's.
    assert _noise_names(noisy(True)) == ["classifier.1.noise", "classifier.3.noise", "features.2.noise", "features.5.noise"]
    lenet = noisy(False)
    assert _noise_names(lenet) == ["classifier.1.noise", "classifier.3.noise", "features.5.noise"]
    assert lenet(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    # A user's model (traced points) and an explicit list: the first in module order, not in list order.
    assert _noise_names(noisy(False, name=f"{user_module}:make")) == ["classifier.1.noise", "features.2.noise"]
    listed = noisy(False, name=f"{user_module}:make", noise_points=("classifier.1", "features.2"))
    assert _noise_names(listed) == ["classifier.1.noise"]
    # A model with one noise point keeps it: there would be nothing to prune.
    assert _noise_names(noisy(False, name="mlp", hidden_width=8)) == _noise_names(noisy(True, name="mlp", hidden_width=8))
    with pytest.raises(TypeError, match="noise_on_first_layer must be true or false"):
        ModelConfig(noise_on_first_layer="no")
