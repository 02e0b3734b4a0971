"""Fold evaluation-mode noise into the weights it scales.

In evaluation a ``LogNormalNoise`` multiplies structure ``i`` of its ``source`` layer's output by
``E[theta_i]`` (zero once pruned). That is a per-row rescaling of the source layer, so the noise
can be absorbed into the layer's weight rows and bias and the wrapper dropped: the result is a plain
``nn.Module`` that computes the noisy model's evaluation function and that exporters can trace.

Which layer a noise folds into, and the checks that make the fold exact, live in ``bmrs.fold``
(fine-tuning as deployed folds the same way, in place).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from bmrs.fold import plan_folds, scale_output_rows
from bmrs.noise import LogNormalNoise


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
            factor = plan.wrapper.noise.mean().detach()
            scale_output_rows(plan.target, factor)
            folded.append((plan.source, plan.wrapper.noise.mask.detach().clone()))
            _set_submodule(plain, plan.wrapper_path, plan.wrapper.inner)

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


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)
