"""The registry of model families: ``@register_model(name, noise_rule=...)`` adds one.

A model is a plain ``nn.Module``: a registered family or the user's own, named
``package.module:factory`` (``bmrs.models.user``). A family may bring a noise rule (which of its
modules carry noise, ``bmrs.nn.insert.NoisePoint`` each); a model without one gets noise on every
layer ``bmrs.models.structures`` finds can carry it exactly.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from bmrs.models.user import build_user_model, is_user_model
from bmrs.nn.insert import NoisePoint

ModelFactory = Callable[..., nn.Module]
NoiseRule = Callable[[nn.Module], list[NoisePoint]]
MODELS: dict[str, ModelFactory] = {}
NOISE_RULES: dict[str, NoiseRule] = {}


def register_model(name: str, *, noise_rule: NoiseRule | None = None) -> Callable[[ModelFactory], ModelFactory]:
    def add(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = factory
        if noise_rule is not None:
            NOISE_RULES[name] = noise_rule
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

