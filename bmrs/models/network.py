"""A registered model with its noise: what training, resuming and benchmarks all build the same way."""
from __future__ import annotations

import torch
from torch import nn

from bmrs.models.config import ModelConfig
from bmrs.models.registry import NOISE_RULES, build_model
from bmrs.models.structures import analyse_structures
from bmrs.nn.bank import attach_noise_bank
from bmrs.nn.insert import NoiseInit, NoisePoint, insert_noise, start_noise_on_


def build_network(
    config: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *, noise: NoiseInit | None = None, seed: int = 0
) -> nn.Module:
    """The model ``config`` names for inputs of ``input_shape`` (one example's) and ``num_classes``
    classes, seeded; with noise at its noise points (and one noise bank) when ``noise`` is given.
    What training, resuming and benchmarks all build the same way."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_network takes a ModelConfig, e.g. ModelConfig(name='lenet5'); got {config!r}")
    torch.manual_seed(seed)
    model = build_model(config.name, input_shape, num_classes, **config.options())
    if noise is not None:
        points = noise_points_for(config.name, model, config.noise_points, input_shape=tuple(input_shape))
        if not config.noise_on_first_layer:
            points = _without_first_layer(model, points)
        insert_noise(model, points, **noise.posterior_options())
        start_noise_on_(model, noise.start_on)
        attach_noise_bank(model)
    return model


def _without_first_layer(model: nn.Module, points: list[NoisePoint]) -> list[NoisePoint]:
    """``points`` less the one on the layer defined first in ``model`` (module order); all of them when
    there is only one, since a model with a single noise point has nothing else to prune."""
    if len(points) < 2:
        return points
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    first = min(points, key=lambda point: order.get(point.source, len(order)))
    return [point for point in points if point != first]


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

