"""Mean-field Gaussian versions of ``nn.Linear`` and ``nn.Conv2d`` (Markovic et al. 2023's flat model).

Every weight ``w`` has its own posterior ``q(w) = N(m, s^2)`` (``weight_mean``, ``weight_log_std``;
log-std so that ``s > 0`` needs no constraint), and the same for every bias; the prior is
``N(0, g^2)`` with one scale ``g`` per layer (``prior_std``). The posteriors are fitted by
stochastic variational inference (minimising ``E_q[NLL] + KL(q || p)``), which needs a sample of
the network's output per example:

* Training mode uses the local reparameterisation trick (Kingma et al. 2015): with independent
  weights a layer's pre-activation ``y = x W^T + b`` is, given its input, Gaussian with mean
  ``x m^T + m_b`` and variance ``x^2 (s^2)^T + s_b^2`` (a convolution is the same sum over a
  receptive field, so ``conv(x^2, s^2)``). Drawing ``y`` instead of ``W`` is exact for the layer's
  output, costs two matrix products instead of one weight sample per example, and gives every
  example its own independent weights, which lowers the gradient's variance.
* Evaluation mode is the posterior mean: the layer computes exactly what an ``nn.Linear`` /
  ``nn.Conv2d`` holding ``m`` would, which is what ``to_dense`` exports.

``weight_mask`` (a bool buffer, True where a weight is kept) removes weights for good: a pruned
weight is exactly 0 in the mean, contributes no variance to the output and no KL. Biases are never
pruned: a bias costs no multiply-accumulate, and zeroing one would move its unit's operating point.

``to_meanfield`` converts every ``nn.Linear`` / ``nn.Conv2d`` of a model (groups, stride, padding,
dilation and padding mode kept; depthwise works) starting from its weights (``m = weight``, a small
``s``); ``to_dense`` turns the result back into a plain module of ``nn.Linear`` / ``nn.Conv2d``
holding ``m * mask``, which exports to ONNX like any model.
"""
from __future__ import annotations

import abc
import copy
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmrs.math.gaussian_reduction import delta_f_gaussian_spike, kl_to_centered_gaussian

DENSE_LAYERS = (nn.Linear, nn.Conv2d)


class MeanFieldLayer(nn.Module, metaclass=abc.ABCMeta):
    """What the Linear and Conv2d versions share: the posterior's parameters, the mask, the KL, dF."""

    def __init__(self, weight: Tensor, bias: Tensor | None, *, prior_std: float, init_std: float) -> None:
        super().__init__()
        for name, value in (("prior_std", prior_std), ("init_std", init_std)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.prior_std = float(prior_std)
        self.weight_mean = nn.Parameter(weight.detach().clone())
        self.weight_log_std = nn.Parameter(torch.full_like(weight.detach(), math.log(init_std)))
        if bias is None:
            self.register_parameter("bias_mean", None)
            self.register_parameter("bias_log_std", None)
        else:
            self.bias_mean = nn.Parameter(bias.detach().clone())
            self.bias_log_std = nn.Parameter(torch.full_like(bias.detach(), math.log(init_std)))
        self.register_buffer("weight_mask", torch.ones_like(weight, dtype=torch.bool))

    @abc.abstractmethod
    def _apply_to(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The deterministic layer (a linear map or a convolution) applied with ``weight`` and ``bias``."""

    def masked_weight_mean(self) -> Tensor:
        return self.weight_mean * self.weight_mask

    def output_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of this layer's output given the input ``x``, over ``q``."""
        mean = self._apply_to(x, self.masked_weight_mean(), self.bias_mean)
        weight_var = torch.exp(2 * self.weight_log_std) * self.weight_mask
        bias_var = None if self.bias_log_std is None else torch.exp(2 * self.bias_log_std)
        return mean, self._apply_to(x * x, weight_var, bias_var)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._apply_to(x, self.masked_weight_mean(), self.bias_mean)
        mean, var = self.output_moments(x)
        # The floor only stops sqrt's infinite derivative at an exactly zero variance (an input of
        # zeros reaching only pruned weights): clamp passes no gradient there, and the output is the mean.
        std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
        return mean + std * torch.randn_like(mean)

    def kl(self) -> Tensor:
        """``KL(q || p)`` summed over the kept weights and every bias (a scalar)."""
        weights = (kl_to_centered_gaussian(self.weight_mean, self.weight_log_std, self.prior_std) * self.weight_mask).sum()
        if self.bias_mean is None:
            return weights
        return weights + kl_to_centered_gaussian(self.bias_mean, self.bias_log_std, self.prior_std).sum()

    @torch.no_grad()
    def delta_f(self, spike_ratio: float) -> Tensor:
        """Per weight, ``dF`` of replacing the prior ``N(0, g^2)`` by the spike ``N(0, (spike_ratio g)^2)``
        (``bmrs.math.gaussian_reduction``); meaningless, and to be ignored, where already pruned."""
        return delta_f_gaussian_spike(
            self.weight_mean, torch.exp(self.weight_log_std), prior_std=self.prior_std, spike_std=spike_ratio * self.prior_std
        )

    @torch.no_grad()
    def prune_(self, prune: Tensor) -> int:
        """Remove the weights where the bool tensor ``prune`` is True, for good; returns how many were newly removed."""
        if prune.shape != self.weight_mask.shape or prune.dtype != torch.bool:
            raise ValueError(
                f"prune_ takes a bool tensor of shape {tuple(self.weight_mask.shape)}, got {prune.dtype} {tuple(prune.shape)}"
            )
        newly = int((prune & self.weight_mask).sum())
        self.weight_mask &= ~prune
        self.zero_pruned_()
        return newly

    @torch.no_grad()
    def zero_pruned_(self) -> None:
        """Set pruned means back to exactly 0 (an optimiser's momentum moves them though their gradient is 0)."""
        self.weight_mean.masked_fill_(~self.weight_mask, 0.0)

    @property
    def num_weights(self) -> int:
        return self.weight_mask.numel()

    @property
    def num_alive(self) -> int:
        return int(self.weight_mask.sum())

    def _dense_parameters(self, layer: nn.Module) -> nn.Module:
        with torch.no_grad():
            layer.weight.copy_(self.masked_weight_mean())
            if self.bias_mean is not None:
                layer.bias.copy_(self.bias_mean)
        return layer


class MeanFieldLinear(MeanFieldLayer):
    def __init__(self, source: nn.Linear, *, prior_std: float, init_std: float) -> None:
        super().__init__(source.weight, source.bias, prior_std=prior_std, init_std=init_std)
        self.in_features, self.out_features = source.in_features, source.out_features

    def _apply_to(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def to_dense(self) -> nn.Linear:
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias_mean is not None,
                          device=self.weight_mean.device, dtype=self.weight_mean.dtype)  # fmt: skip
        return self._dense_parameters(layer)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias_mean is not None}, prior_std={self.prior_std:g}"


class MeanFieldConv2d(MeanFieldLayer):
    def __init__(self, source: nn.Conv2d, *, prior_std: float, init_std: float) -> None:
        super().__init__(source.weight, source.bias, prior_std=prior_std, init_std=init_std)
        self.in_channels, self.out_channels = source.in_channels, source.out_channels
        self.kernel_size, self.stride, self.padding = source.kernel_size, source.stride, source.padding
        self.dilation, self.groups, self.padding_mode = source.dilation, source.groups, source.padding_mode
        self._padding_for_mode = source._reversed_padding_repeated_twice

    def _apply_to(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode == "zeros":
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        # As nn.Conv2d does; reflect, replicate and circular padding copy values, so they commute
        # with the square that the variance pass applies first.
        padded = F.pad(x, self._padding_for_mode, mode=self.padding_mode)
        return F.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)

    def to_dense(self) -> nn.Conv2d:
        layer = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, bias=self.bias_mean is not None, padding_mode=self.padding_mode,
            device=self.weight_mean.device, dtype=self.weight_mean.dtype,
        )  # fmt: skip
        return self._dense_parameters(layer)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias_mean is not None}, "
            f"padding_mode={self.padding_mode}, prior_std={self.prior_std:g}"
        )


def convertible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ``nn.Linear`` / ``nn.Conv2d`` modules ``to_meanfield`` replaces, by path, in module order.

    Those inside an ``nn.MultiheadAttention`` are left out: it reads ``out_proj.weight`` directly
    instead of calling the module, so a replacement would never run (the project's ``HeadAttention``
    calls its projections and is converted)."""
    skipped = [f"{name}." for name, module in model.named_modules() if isinstance(module, nn.MultiheadAttention)]
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, DENSE_LAYERS) and not any(name.startswith(prefix) for prefix in skipped)
    }


def meanfield_layers(model: nn.Module) -> dict[str, MeanFieldLayer]:
    """The mean-field layers of ``model`` by path, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, MeanFieldLayer)}


def _replaced(model: nn.Module, replacements: dict[int, nn.Module]) -> nn.Module:
    """``model`` with every child that is a key of ``replacements`` (by id) swapped, wherever it
    appears: a module shared by two parents stays one module."""
    if id(model) in replacements:
        return replacements[id(model)]
    for parent in list(model.modules()):
        # _modules, not named_children: that lists a module held twice by one parent only once.
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                setattr(parent, name, replacements[id(child)])
    return model


def to_meanfield(model: nn.Module, *, prior_std: float = 0.1, output_prior_std: float | None = None, init_std: float = 1e-3) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` / ``nn.Conv2d`` (see ``convertible_layers``)
    replaced by its mean-field version, posterior mean = the layer's weights and bias, posterior std
    ``init_std``, prior ``N(0, prior_std^2)``; the last such layer in module order (the output layer
    of a feed-forward network) gets ``output_prior_std`` instead when it is given. ``model`` is untouched."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_meanfield takes an nn.Module, got {type(model).__name__}")
    copied = copy.deepcopy(model)
    layers = convertible_layers(copied)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to make Bayesian; nothing could be sparsified")
    last = next(reversed(layers))
    replacements: dict[int, nn.Module] = {}
    for name, layer in layers.items():
        scale = output_prior_std if name == last and output_prior_std is not None else prior_std
        kind = MeanFieldLinear if isinstance(layer, nn.Linear) else MeanFieldConv2d
        replacements[id(layer)] = kind(layer, prior_std=scale, init_std=init_std)
    return _replaced(copied, replacements)


def to_dense(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every mean-field layer replaced by the plain ``nn.Linear`` /
    ``nn.Conv2d`` holding its masked posterior mean (pruned weights exactly 0): the same state-dict
    keys as the model ``to_meanfield`` started from, and the same function as the mean-field model
    in evaluation mode. ``model`` is untouched."""
    copied = copy.deepcopy(model)
    return _replaced(copied, {id(layer): layer.to_dense() for layer in meanfield_layers(copied).values()})


@torch.no_grad()
def bmr_prune_(layers: Mapping[str, MeanFieldLayer], spike_ratio: float) -> dict[str, int]:
    """One BMR step: in each layer, remove every kept weight whose ``dF >= 0`` (the evidence does not
    drop when the weight's prior becomes the spike, so the weight is redundant); returns the number
    newly removed per layer. No threshold: the paper's criterion, ``dF`` against 0."""
    return {name: layer.prune_((layer.delta_f(spike_ratio) >= 0) & layer.weight_mask) for name, layer in layers.items()}


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of the weights of the Linear/Conv2d layers that are removed, biases not counted: a
    mean-field layer's pruned weights, a plain layer's exact zeros (what ``to_dense`` leaves)."""
    removed = total = 0
    for module in model.modules():
        if isinstance(module, MeanFieldLayer):
            removed += module.num_weights - module.num_alive
            total += module.num_weights
        elif isinstance(module, DENSE_LAYERS):
            removed += int((module.weight == 0).sum())
            total += module.weight.numel()
    return 0.0 if total == 0 else removed / total
