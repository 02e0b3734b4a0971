"""The paper's model families (appendix C): the MLP and LeNet5, with their noise rules."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from bmrs.models.registry import register_model
from bmrs.nn.insert import NoisePoint, out_width, sliceable_layers, structure_dim


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



@register_model("mlp", noise_rule=every_hidden_layer)
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


@register_model("lenet5", noise_rule=lenet5_points)
def lenet5(
    input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...] | list[int] = LENET5_WIDTHS
) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"lenet5 takes square images shaped (channels, size, size), got {input_shape}")
    return LeNet5(input_shape[0], input_shape[1], num_classes, widths=tuple(widths))

