"""A registered model with its noise: what training, resuming and benchmarks all build the same way."""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from bmrs.models.config import ModelConfig
from bmrs.models.registry import NOISE_RULES, build_model
from bmrs.models.structures import analyse_structures
from bmrs.nn.bank import attach_noise_bank
from bmrs.nn.attention import with_head_attention_keys
from bmrs.nn.insert import NoiseInit, NoisePoint, insert_noise, start_noise_on_


def build_network(
    config: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *, noise: NoiseInit | None = None, seed: int = 0
) -> nn.Module:
    """The model ``config`` names for inputs of ``input_shape`` (one example's) and ``num_classes``
    classes, seeded, starting from ``config.weights`` when given; with noise at its noise points
    (and one noise bank) when ``noise`` is given. What training, resuming and benchmarks all build
    the same way."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_network takes a ModelConfig, e.g. ModelConfig(name='lenet5'); got {config!r}")
    torch.manual_seed(seed)
    model = build_model(config.name, input_shape, num_classes, **config.options())
    if config.weights is not None:
        # Before the noise: a state dict names the plain model's modules, which noise wrappers rename.
        load_weights(model, config.weights, config.name)
    if noise is not None:
        points = noise_points_for(config.name, model, config.noise_points, input_shape=tuple(input_shape))
        if not config.noise_on_first_layer:
            points = _without_first_layer(model, points)
        insert_noise(model, points, **noise.posterior_options())
        start_noise_on_(model, noise.start_on)
        attach_noise_bank(model)
    return model


SAVE_HINT = "save one with torch.save(model.state_dict(), path)"
SHOWN_KEYS = 3


def load_weights(model: nn.Module, path: str, model_name: str = "the model") -> nn.Module:
    """``model`` with the state dict saved at ``path`` loaded strictly (every key, every shape).

    The file is read with ``weights_only=True``: it holds tensors only, so loading it cannot run
    code, and a pickled whole model is refused rather than trusted.
    """
    if not os.path.isfile(path):
        raise ValueError(f"model weights {path!r}: no such file; give the path of a state dict ({SAVE_HINT}) or weights: null")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a file that is not a state dict
        raise ValueError(f"model weights {path!r} is not a readable state dict ({_unreadable(error)}); {SAVE_HINT}") from error
    if not isinstance(state, Mapping):  # the file's content is the bad value: ValueError, like the other file errors
        raise ValueError(f"model weights {path!r} holds a {type(state).__name__}, not a state dict; {SAVE_HINT}")  # noqa: TRY004
    if not all(isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()):
        found = f"a mapping with keys {sorted(map(str, state))[:SHOWN_KEYS]}"
        raise ValueError(
            f"model weights {path!r} holds {found}, not a state dict of tensors; if it is a training checkpoint, "
            f"save the model's entry alone ({SAVE_HINT})"
        )
    # torchvision's ViT weights pack each attention's projections; the ViT families hold them apart.
    state = with_head_attention_keys(model, dict(state))
    problems = state_dict_mismatch(model, state)
    if problems:
        raise ValueError(
            f"model weights {path!r} do not fit {model_name!r} for this data: {problems}; give a state dict "
            "of the same family and settings, saved for the same input shape and number of classes"
        )
    model.load_state_dict(state, strict=True)
    return model


def state_dict_mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> str:
    """What keeps ``state`` from loading into ``model``, in one line; empty when it fits.

    Two mismatches have a usual cause worth naming: the model's last weight (its classifier) with
    another output count is a different number of classes, its first weight with another input
    count a different channel count (or image size, for an MLP's first layer).
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if wrong_shape:
        shapes = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}" for key in wrong_shape[:SHOWN_KEYS]]
        problems.append(f"{len(wrong_shape)} shapes differ, file vs model ({', '.join(shapes)})")
    weights = [key for key, value in expected.items() if key.endswith("weight") and value.dim() >= 2]
    if weights and weights[-1] in wrong_shape and state[weights[-1]].shape[0] != expected[weights[-1]].shape[0]:
        problems.append(
            f"the classifier {weights[-1]} has {state[weights[-1]].shape[0]} classes in the file, "
            f"{expected[weights[-1]].shape[0]} here"
        )
    if weights and weights[0] in wrong_shape and state[weights[0]].shape[1:2] != expected[weights[0]].shape[1:2]:
        problems.append(
            f"the first layer {weights[0]} takes {state[weights[0]].shape[1]} inputs in the file, "
            f"{expected[weights[0]].shape[1]} here (another channel count, or image size for a first Linear)"
        )
    return "; ".join(problems)


def _unreadable(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words: torch's own messages run
    to paragraphs and suggest ``weights_only=False``, which would run whatever code the file holds."""
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if refused:
        return f"it pickles a {refused.group(1)}, not tensors only: a whole model or checkpoint object"
    if isinstance(error, pickle.UnpicklingError):
        return "not a torch.save file of tensors: corrupt, or another format"
    if isinstance(error, EOFError):
        return "the file is empty or cut short"
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:160]}" if lines else type(error).__name__


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")


def _without_first_layer(model: nn.Module, points: list[NoisePoint]) -> list[NoisePoint]:
    """``points`` less the one on the layer defined first in ``model`` (module order), and the rest of
    its coupled group (a ResNet's stem shares its channels with the first stage's residual stream:
    they can only stay or go together); all of them when nothing else would be left to prune."""
    if len(points) < 2:
        return points
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    first = min(points, key=lambda point: order.get(point.source, len(order)))
    rest = [point for point in points if point != first and (first.group is None or point.group != first.group)]
    return rest or points


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

