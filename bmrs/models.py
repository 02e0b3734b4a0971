"""Model families of the paper (appendix C), a registry of them, and where their noise goes.

A model is a plain ``nn.Module``: a registered family (``mlp``, ``lenet5``) or the user's own,
named ``package.module:factory`` (``bmrs.user_models``). ``insert_noise`` wraps the modules named
by the family's noise rule, or by an explicit list of layer paths, so that their output is
multiplied by a ``LogNormalNoise``. Each noise module records the layer whose output structures it
scales (``source``): that is where ``export`` folds ``E[theta]`` and which layer's outputs get
sliced away.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from bmrs.noise import LogNormalNoise, noise_modules, noise_modules_under
from bmrs.noise_bank import attach_noise_bank
from bmrs.structures import NoisePoint, analyse_structures, out_width, sliceable_layers, structure_dim
from bmrs.user_models import build_user_model, is_user_model

ModelFactory = Callable[..., nn.Module]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def add(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = factory
        return factory

    return add


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **options: object) -> nn.Module:
    """A registered family by name, or the user's ``package.module:factory`` (which takes no options)."""
    if is_user_model(name):
        if options:
            raise ValueError(
                f"model {name!r} is your own factory; the options {sorted(options)} apply to built-in models "
                "only: give your factory defaults instead"
            )
        return build_user_model(name, tuple(input_shape), num_classes)
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; choose one of {sorted(MODELS)} or name your own as package.module:factory"
        )
    return MODELS[name](input_shape, num_classes, **options)


@dataclass(frozen=True)
class MlpShape:
    hidden_width: int
    hidden_layers: int


# The paper's per-dataset MLPs (appendix C.1, chosen there by a sweep), named by dataset.
MLP_PRESETS: dict[str, MlpShape] = {
    "mnist": MlpShape(hidden_width=100, hidden_layers=7),
    "fashion_mnist": MlpShape(hidden_width=150, hidden_layers=1),
    "cifar10": MlpShape(hidden_width=150, hidden_layers=5),
}
DEFAULT_MLP_PRESET = "fashion_mnist"


def mlp_settings(
    preset: str | None = None, hidden_width: int | None = None, hidden_layers: int | None = None
) -> dict[str, int]:
    """``{"hidden_width", "hidden_layers"}`` from a preset and/or explicit values.

    An explicit value fills in what no preset gives (unset values default to the Fashion-MNIST
    preset, 1 x 150). Naming a preset and an explicit value that disagrees with it is an error
    rather than a silent override: either the preset or the number is not what the user meant.
    """
    if preset is not None and preset not in MLP_PRESETS:
        raise ValueError(f"unknown mlp preset {preset!r}; choose one of {sorted(MLP_PRESETS)}")
    base = MLP_PRESETS[preset or DEFAULT_MLP_PRESET]
    settings = {"hidden_width": base.hidden_width, "hidden_layers": base.hidden_layers}
    for key, value in (("hidden_width", hidden_width), ("hidden_layers", hidden_layers)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"mlp needs {key} to be an integer >= 1, got {value!r}")
        if preset is not None and value != settings[key]:
            raise ValueError(
                f"mlp preset {preset!r} has {key}={settings[key]} but {key}={value} is also given; "
                f"drop one of them (the preset, or the explicit {key})"
            )
        settings[key] = value
    return settings


@register_model("mlp")
def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    preset: str | None = None,
    hidden_width: int | None = None,
    hidden_layers: int | None = None,
) -> nn.Module:
    """Fully connected ReLU network, shaped by ``mlp_settings`` (default: 1 hidden layer of 150)."""
    settings = mlp_settings(preset, hidden_width, hidden_layers)
    hidden_width, hidden_layers = settings["hidden_width"], settings["hidden_layers"]
    in_features = 1
    for size in input_shape:
        in_features *= size
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(hidden_layers):
        layers += [nn.Linear(in_features, hidden_width), nn.ReLU()]
        in_features = hidden_width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


LENET5_WIDTHS = (6, 16, 120, 84)


def lenet5_widths(widths: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``widths`` as a tuple, checked: conv1 filters, conv2 filters, fc1 and fc2 neurons."""
    widths = tuple(widths)
    if len(widths) != 4 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(
            f"lenet5 widths are four integers >= 1 (conv1, conv2, fc1, fc2), got {widths!r}; "
            f"the paper's are {LENET5_WIDTHS}"
        )
    return widths


class LeNet5(nn.Module):
    """LeNet5 (LeCun et al., 1998): conv 6 and 16 filters of 5x5, each ReLU + 2x2 max pool, then
    fully connected 120 -> 84 -> classes. 28x28 inputs are padded by 2 so both 28 and 32 pixel
    datasets reach the classic 16x5x5 feature map.

    ``widths`` (conv1 filters, conv2 filters, fc1 and fc2 neurons) defaults to the paper's; other
    widths give the dense network a pruned LeNet5 is sliced into, which is what a from-scratch
    baseline at the same size trains.
    """

    def __init__(
        self, in_channels: int, image_size: int, num_classes: int, widths: tuple[int, ...] = LENET5_WIDTHS
    ) -> None:
        super().__init__()
        if image_size not in (28, 32):
            raise ValueError(f"lenet5 takes 28x28 or 32x32 images, got {image_size}x{image_size}")
        conv1, conv2, fc1, fc2 = lenet5_widths(widths)
        padding = 2 if image_size == 28 else 0
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, conv1, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(conv1, conv2, 5), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(conv2 * 5 * 5, fc1), nn.ReLU(), nn.Linear(fc1, fc2), nn.ReLU(), nn.Linear(fc2, num_classes)
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_model("lenet5")
def lenet5(
    input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...] | list[int] = LENET5_WIDTHS
) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"lenet5 takes square images shaped (channels, size, size), got {input_shape}")
    return LeNet5(input_shape[0], input_shape[1], num_classes, widths=tuple(widths))


def every_hidden_layer(model: nn.Module) -> list[NoisePoint]:
    """Noise on every Linear/Conv2d output except the last layer's (its outputs are the classes)."""
    layers = sliceable_layers(model)
    return [NoisePoint(name, name, out_width(layer), structure_dim(layer)) for name, layer in layers[:-1]]


def lenet5_points(model: nn.Module) -> list[NoisePoint]:
    """Each conv filter map and each hidden fully connected neuron (paper section 5).

    A conv filter's noise sits after its ReLU and max pool rather than right after the conv: a
    positive per-channel factor commutes with both (and zero gives zero), so the model is the same
    function while the noise multiplies a map four times smaller, which is what keeps training
    with noise nearly as cheap as without.
    """
    if not isinstance(model, LeNet5):
        raise TypeError(f"lenet5 noise points need a LeNet5, got {type(model).__name__}")
    conv_points = [
        NoisePoint(f"features.{index + 2}", f"features.{index}", model.features[index].out_channels)
        for index in (0, 3)
    ]
    fc_points = [point for point in every_hidden_layer(model) if point.source.startswith("classifier")]
    return conv_points + fc_points


NOISE_RULES: dict[str, Callable[[nn.Module], list[NoisePoint]]] = {
    "mlp": every_hidden_layer,
    "lenet5": lenet5_points,
}


class Noised(nn.Module):
    """``noise(inner(x))``: the wrapper ``insert_noise`` puts in place of a module."""

    def __init__(self, inner: nn.Module, noise: LogNormalNoise) -> None:
        super().__init__()
        self.inner = inner
        self.noise = noise

    def forward(self, x: Tensor) -> Tensor:
        return self.noise(self.inner(x))


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def insert_noise(model: nn.Module, points: list[NoisePoint], **noise_options: float) -> nn.Module:
    """Wrap every ``point.after`` with a fresh ``LogNormalNoise`` (in place); returns ``model``.

    ``noise_options`` go to ``LogNormalNoise`` (``init_mu``, ``init_log_sigma``, ``log_a``, ``log_b``).
    """
    sources: dict[int, nn.Module] = {}
    for point in points:
        sources[id(model.get_submodule(point.after))] = model.get_submodule(point.source)
        noise = LogNormalNoise(point.channels, dim=point.dim, **noise_options)
        _set_submodule(model, point.after, Noised(model.get_submodule(point.after), noise))
    paths = {id(module): name for name, module in model.named_modules()}
    for wrapper in (m for m in model.modules() if isinstance(m, Noised)):
        wrapper.noise.source = paths[id(sources[id(wrapper.inner)])]
    return model


AUTHORS_INIT_LOG_SIGMA = -5.0


@dataclass(frozen=True)
class NoiseInit:
    """Where every noise posterior starts and the truncation it lives in (paper section 5: log a = -20,
    log b = 0; the authors' code starts every structure at mu = 0, log sigma = -5, i.e. theta ~ 1).

    ``start_on`` lists layer paths (or path prefixes such as ``features``) whose noise starts at the
    authors' theta ~ 1 (``mu = log b``, ``log sigma = -5``) whatever ``init_mu`` / ``init_log_sigma``
    say: with every posterior started at the bottom of the prior, a deep stack of noisy layers
    multiplies the signal by ~1/20 per layer and hardly trains, so some layers may start on.
    """

    init_mu: float = 0.0
    init_log_sigma: float = AUTHORS_INIT_LOG_SIGMA
    log_a: float = -20.0
    log_b: float = 0.0
    start_on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        paths = self.start_on
        if isinstance(paths, str) or not isinstance(paths, (list, tuple)) or not all(isinstance(p, str) and p for p in paths):
            raise TypeError(f"start_on must be a list of layer paths such as [features], got {paths!r}")
        object.__setattr__(self, "start_on", tuple(paths))

    def posterior_options(self) -> dict[str, float]:
        """What every ``LogNormalNoise`` is built with (``start_on`` is applied afterwards)."""
        return {"init_mu": self.init_mu, "init_log_sigma": self.init_log_sigma, "log_a": self.log_a, "log_b": self.log_b}


def start_noise_on_(model: nn.Module, paths: tuple[str, ...]) -> None:
    """Start the noise of every layer under ``paths`` at theta ~ 1 (``mu = log b``, ``log sigma = -5``)."""
    for path in paths:
        with torch.no_grad():
            for noise in noise_modules_under(model, path, "start_on").values():
                noise.mu.fill_(noise.log_b)
                noise.log_sigma.fill_(AUTHORS_INIT_LOG_SIGMA)


def build_network(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    options: dict[str, object] | None = None,
    noise: NoiseInit | None = None,
    noise_points: tuple[str, ...] | list[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """The registered model, seeded, with noise at its noise points (and one noise bank) when
    ``noise`` is given: what training, resuming and benchmarks all build the same way."""
    torch.manual_seed(seed)
    model = build_model(name, input_shape, num_classes, **(options or {}))
    if noise is not None:
        points = noise_points_for(name, model, noise_points, input_shape=tuple(input_shape))
        insert_noise(model, points, **noise.posterior_options())
        start_noise_on_(model, noise.start_on)
        attach_noise_bank(model)
    return model


def noise_points_for(
    model_name: str,
    model: nn.Module,
    explicit: tuple[str, ...] | list[str] | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
) -> list[NoisePoint]:
    """The family's noise rule, or (user models, and ``explicit`` layer paths) the layers
    ``analyse_structures`` finds can carry noise exactly, traced on a batch of ``input_shape``."""
    rule = NOISE_RULES.get(model_name)
    if explicit is None and rule is not None:
        return rule(model)
    if input_shape is None:
        raise TypeError(
            f"noise points of {model_name!r} are found by tracing the model: pass input_shape (one example's shape)"
        )
    structures = analyse_structures(model, torch.zeros(2, *input_shape))
    return structures.default_points() if explicit is None else structures.points_for(explicit)


__all__ = [
    "LENET5_WIDTHS", "MLP_PRESETS", "MODELS", "NOISE_RULES", "LeNet5", "MlpShape", "NoiseInit", "NoisePoint", "Noised", "build_model", "build_network",
    "every_hidden_layer", "insert_noise", "lenet5_points", "mlp_settings", "noise_modules",
    "noise_points_for", "register_model",
]  # fmt: skip
