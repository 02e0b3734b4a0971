"""Fold evaluation-mode noise into the weights it scales.

In evaluation a ``LogNormalNoise`` multiplies structure ``i`` of its ``source`` layer's output by
``E[theta_i]`` (zero once pruned). That is a per-row rescaling of the source layer, so the noise
can be absorbed into the layer's weight rows and bias and the wrapper dropped: the result is a plain
``nn.Module`` that computes the noisy model's evaluation function and that exporters can trace.

The factor is applied at the source layer even when the noise sits further downstream (LeNet5 puts
it after ReLU and max pool). That is exact only if every module in between commutes with a
non-negative per-channel factor, which is checked rather than assumed.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from bmrs.models import Noised
from bmrs.noise import LogNormalNoise

# Modules f with f(c * x) = c * f(x) channel by channel for every c >= 0 (evaluation mode): the
# noise may sit after any chain of these and still be folded into the layer that feeds them.
CHANNELWISE_HOMOGENEOUS = (
    nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)  # fmt: skip
FOLDABLE_LAYERS = (nn.Linear, nn.Conv2d)


def fold_noise(model: nn.Module) -> tuple[nn.Module, dict[str, Tensor]]:
    """Return ``(plain, keep)``: a copy of ``model`` without noise, computing its evaluation output.

    Every ``Noised`` wrapper is replaced by its ``inner`` module and ``E[theta]`` (zero where pruned)
    is multiplied into the output rows (weight and bias) of the noise's ``source`` layer. ``keep``
    maps each source layer's path *in the returned model* to a bool mask over its output
    structures, ``True`` where the structure survives. ``model`` itself is not modified; a model
    without noise gives a plain copy and ``{}``.

    Raises ``TypeError``/``ValueError`` when a noise cannot be folded exactly: no recorded source,
    a source that is not a Linear/Conv2d, a size or axis mismatch, two noises on one layer, or a
    module between source and noise that does not commute with a per-channel factor.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_noise takes an nn.Module, got {type(model).__name__}")
    plain = copy.deepcopy(model)
    wrappers = [(path, module) for path, module in plain.named_modules() if isinstance(module, Noised)]
    plans = [_plan(plain, path, wrapper) for path, wrapper in wrappers]

    seen: dict[int, str] = {}
    for _, _, source, source_path in plans:
        if id(source) in seen:
            raise ValueError(f"layer {source_path!r} carries more than one noise; fold supports one noise per layer")
        seen[id(source)] = source_path

    folded: list[tuple[nn.Module, Tensor]] = []
    with torch.no_grad():
        for path, wrapper, source, _ in plans:
            factor = wrapper.noise.mean().detach()
            _scale_output_rows(source, factor)
            folded.append((source, wrapper.noise.mask.detach().clone()))
            _set_submodule(plain, path, wrapper.inner)

    stray = [path for path, module in plain.named_modules() if isinstance(module, LogNormalNoise)]
    if stray:
        raise ValueError(
            f"noise modules {stray} are not inside a Noised wrapper, so their source layer is unknown; "
            "insert noise with bmrs.models.insert_noise"
        )
    # Paths are looked up after unwrapping: a wrapped layer's path loses its ".inner" suffix.
    paths = {id(module): path for path, module in plain.named_modules()}
    keep = {paths[id(source)]: mask.cpu() for source, mask in folded}
    return plain, keep


def _plan(model: nn.Module, path: str, wrapper: Noised) -> tuple[str, Noised, nn.Module, str]:
    """Resolve and check the layer ``wrapper``'s noise folds into."""
    noise = wrapper.noise
    if not path:
        raise ValueError("the model itself is a Noised wrapper; pass the network that contains it")
    if isinstance(wrapper.inner, Noised):
        raise ValueError(f"noise wrapper {path!r} wraps another noise wrapper; fold supports one noise per layer")
    source_path = getattr(noise, "source", None)
    if not isinstance(source_path, str):
        raise ValueError(
            f"noise at {path!r} records no source layer (noise.source); insert noise with "
            "bmrs.models.insert_noise, which records the layer whose outputs it scales"
        )
    try:
        source = model.get_submodule(source_path)
    except AttributeError as error:
        raise ValueError(
            f"noise at {path!r} names source {source_path!r}, which is not a module of the model"
        ) from error
    if not isinstance(source, FOLDABLE_LAYERS):
        raise TypeError(
            f"noise at {path!r} scales {source_path!r}, a {type(source).__name__}; only Linear and "
            "Conv2d outputs can be folded and sliced"
        )
    width = source.out_features if isinstance(source, nn.Linear) else source.out_channels
    if noise.num_structures != width:
        raise ValueError(
            f"noise at {path!r} has {noise.num_structures} structures but its source {source_path!r} "
            f"has {width} outputs; the noise belongs to another layer"
        )
    # Output structures are dim 1 of a conv map and the last dim of a Linear output (dim 1 for the
    # usual (batch, features) input); another axis would scale pixels or tokens, not weight rows.
    allowed_dims = (1, -1) if isinstance(source, nn.Linear) else (1, -3)
    if noise.dim not in allowed_dims:
        raise ValueError(
            f"noise at {path!r} acts along dim {noise.dim}, but the output structures of the "
            f"{type(source).__name__} {source_path!r} lie along dim {allowed_dims[0]}"
        )
    if wrapper.inner is not source:
        _check_commutes(model, path, wrapper, source_path)
    return path, wrapper, source, source_path


def _check_commutes(model: nn.Module, path: str, wrapper: Noised, source_path: str) -> None:
    """Noise placed downstream of its source: the modules in between must commute with it."""
    parent_path, _, wrapper_name = path.rpartition(".")
    source_parent, _, source_name = source_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    names = list(parent._modules) if isinstance(parent, nn.Sequential) else []
    if source_parent != parent_path or source_name not in names or names.index(source_name) > names.index(wrapper_name):
        raise ValueError(
            f"noise at {path!r} is not inside or after its source {source_path!r} in one nn.Sequential, "
            "so fold cannot tell what runs in between; place the noise on the source's own output"
        )
    between = [parent._modules[name] for name in names[names.index(source_name) + 1 : names.index(wrapper_name)]]
    for module in [*between, wrapper.inner]:
        if not isinstance(module, CHANNELWISE_HOMOGENEOUS):
            raise ValueError(
                f"noise at {path!r} sits after a {type(module).__name__} downstream of its source "
                f"{source_path!r}; E[theta] only folds through modules that commute with a non-negative "
                f"per-channel factor ({', '.join(t.__name__ for t in CHANNELWISE_HOMOGENEOUS)})"
            )


def _scale_output_rows(layer: nn.Module, factor: Tensor) -> None:
    weight = layer.weight
    weight.mul_(factor.to(device=weight.device, dtype=weight.dtype).reshape(-1, *[1] * (weight.dim() - 1)))
    if layer.bias is not None:
        layer.bias.mul_(factor.to(device=layer.bias.device, dtype=layer.bias.dtype))


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)
