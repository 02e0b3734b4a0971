"""Absorb a noise layer's ``E[theta]`` into the weights of the layer whose outputs it scales.

At evaluation a ``LogNormalNoise`` multiplies structure ``i`` of its ``source`` layer's output by
``E[theta_i]`` (zero once pruned): a per-row rescaling of that layer. Export folds it to drop the
noise (``fold_noise``); fine-tuning "as deployed" folds it so that Adam's steps act on
the deployed weights' scale. For a structure that left the prior with ``E[theta] ~ 0.05``, fine-tuning
through the factor would move the deployed weights twenty times slower than the learning rate says.

The factor is applied at the source layer even when the noise sits further downstream (LeNet5 puts
it after ReLU and max pool). That is exact only if every module in between commutes with a
non-negative per-channel factor, which is checked rather than assumed. Noise on a BatchNorm's
output (where ``bmrs.models.structures`` puts it for a layer that feeds one) folds into the BatchNorm's
``gamma`` and ``beta`` instead: ``c * (gamma * x_hat + beta)`` is a BatchNorm with ``c * gamma`` and
``c * beta``, whatever ran before it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bmrs.nn.attention import HeadAttention, HeadGate
from bmrs.nn.insert import Noised, set_submodule
from bmrs.nn.noise import LogNormalNoise

# Modules f with f(c * x) = c * f(x) channel by channel for every c >= 0 (evaluation mode): the
# noise may sit after any chain of these and still be folded into the layer that feeds them.
CHANNELWISE_HOMOGENEOUS = (
    nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)  # fmt: skip
FOLDABLE_LAYERS = (nn.Linear, nn.Conv2d)


def absorb_expected_noise_(model: nn.Module) -> None:
    """In place: multiply every noise's ``E[theta]`` into its source layer's output rows and make the
    noise a deterministic factor of (nearly) one. Pruned structures keep their mask and stay zero.

    The model computes the same evaluation function afterwards; what changes is the parametrisation
    an optimiser sees. The posteriors are replaced, so run criteria before, not after, this.
    """
    with torch.no_grad():
        for plan in plan_folds(model):
            noise = plan.wrapper.noise
            before = noise.mean().detach()
            noise.make_identity_()
            # With log b != 0 the narrowest posterior still multiplies by ~b; divide it back out.
            after = noise.mean().detach()
            plan.scale_(torch.where(noise.mask, before / after.where(noise.mask, 1.0), 0.0))


@dataclass(frozen=True)
class FoldPlan:
    """Where one noise folds: ``target`` (the source layer, the BatchNorm the noise sits on, or an
    attention's value projection) absorbs ``E[theta]``, each structure's factor on ``rows_per_structure``
    consecutive output rows (an attention head owns ``head_dim`` rows of ``v``); ``source`` is the
    module whose output structures are sliced."""

    wrapper_path: str
    wrapper: Noised
    source: nn.Module
    source_path: str
    target: nn.Module
    rows_per_structure: int = 1

    def scale_(self, factor: Tensor) -> None:
        """Multiply structure ``i``'s rows of ``target`` by ``factor[i]``."""
        scale_output_rows(self.target, factor.repeat_interleave(self.rows_per_structure))


def plan_folds(model: nn.Module) -> list[FoldPlan]:
    """A checked ``FoldPlan`` for every noise of ``model``."""
    wrappers = [(path, module) for path, module in model.named_modules() if isinstance(module, Noised)]
    return [plan_fold(model, path, wrapper) for path, wrapper in wrappers]


def plan_fold(model: nn.Module, path: str, wrapper: Noised) -> FoldPlan:
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
    if isinstance(source, HeadAttention):
        if not isinstance(wrapper.inner, HeadGate) or source.heads is not wrapper or noise.dim != 1:
            raise ValueError(
                f"noise at {path!r} scales the attention {source_path!r}, but only noise on its heads "
                f"({source_path}.heads, along dim 1) folds into it"
            )
        if noise.num_structures != source.num_heads:
            raise ValueError(f"noise at {path!r} has {noise.num_structures} structures but {source_path!r} has {source.num_heads} heads")
        return FoldPlan(path, wrapper, source, source_path, source.v, rows_per_structure=source.head_dim)
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
    if isinstance(wrapper.inner, _BatchNorm):
        norm = wrapper.inner
        if not norm.affine or norm.num_features != width:
            raise ValueError(
                f"noise at {path!r} sits on a BatchNorm with {norm.num_features} features (affine={norm.affine}); "
                f"E[theta] folds into a BatchNorm only when it is affine and has the {width} channels of {source_path!r}"
            )
        return FoldPlan(path, wrapper, source, source_path, norm)
    if wrapper.inner is not source:
        _check_commutes(model, path, wrapper, source_path)
    return FoldPlan(path, wrapper, source, source_path, source)


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


def scale_output_rows(layer: nn.Module, factor: Tensor) -> None:
    weight = layer.weight
    weight.mul_(factor.to(device=weight.device, dtype=weight.dtype).reshape(-1, *[1] * (weight.dim() - 1)))
    if layer.bias is not None:
        layer.bias.mul_(factor.to(device=layer.bias.device, dtype=layer.bias.dtype))


def fold_noise(model: nn.Module) -> tuple[nn.Module, dict[str, Tensor]]:
    """Return ``(plain, keep)``: a copy of ``model`` without noise, computing its evaluation output.

    Every ``Noised`` wrapper is replaced by its ``inner`` module and ``E[theta]`` (zero where pruned)
    is multiplied into the output rows (weight and bias) of the noise's ``source`` layer, or into
    the ``gamma`` and ``beta`` of the BatchNorm the noise sits on. ``keep``
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
    plans = plan_folds(plain)

    seen: dict[int, str] = {}
    for plan in plans:
        if id(plan.source) in seen:
            raise ValueError(f"layer {plan.source_path!r} carries more than one noise; fold supports one noise per layer")
        seen[id(plan.source)] = plan.source_path

    folded: list[tuple[nn.Module, Tensor]] = []
    with torch.no_grad():
        for plan in plans:
            plan.scale_(plan.wrapper.noise.mean().detach())
            folded.append((plan.source, plan.wrapper.noise.mask.detach().clone()))
            set_submodule(plain, plan.wrapper_path, plan.wrapper.inner)

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
