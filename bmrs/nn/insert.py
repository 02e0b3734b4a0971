"""Where noise goes in a network: ``NoisePoint`` names it, ``insert_noise`` puts it there.

``insert_noise`` wraps each named module so that its output is multiplied by a ``LogNormalNoise``
(the ``Noised`` wrapper) and records on every noise the layer whose output structures it scales
(``source``): that is where ``bmrs.nn.fold`` folds ``E[theta]`` and which layer's outputs export
slices away. ``NoiseInit`` says where the posteriors start and the truncation they live in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bmrs.nn.noise import LogNormalNoise, noise_modules_under

SLICEABLE_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class NoisePoint:
    """Noise on the output of module ``after``, scaling the output structures of module ``source``
    along ``dim`` of the activation (1: a conv map's channels; -1: a Linear's features, which is
    also right for ``(batch, tokens, features)`` activations).

    ``group`` names the coupled group of the point, if any: points whose sources' output structures
    are tied one to one (layers summed by a residual, a depthwise convolution and its producer)
    share it, and structure ``i`` of each is one channel, kept or removed together. The name is the
    group's first source layer in module order."""

    after: str
    source: str
    channels: int
    dim: int = 1
    group: str | None = None


def structure_dim(layer: nn.Module) -> int:
    return -1 if isinstance(layer, nn.Linear) else 1


def out_width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def sliceable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SLICEABLE_LAYERS)]



class Noised(nn.Module):
    """``noise(inner(x))``: the wrapper ``insert_noise`` puts in place of a module."""

    def __init__(self, inner: nn.Module, noise: LogNormalNoise) -> None:
        super().__init__()
        self.inner = inner
        self.noise = noise

    def forward(self, x: Tensor) -> Tensor:
        return self.noise(self.inner(x))


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``path`` of ``model`` (its parent must exist)."""
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
        noise.group = point.group
        set_submodule(model, point.after, Noised(model.get_submodule(point.after), noise))
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

