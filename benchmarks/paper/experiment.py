"""One training run, measured the way every benchmark reports it, and cached as raw JSON.

Benchmarks (table 1, the p1 sweep, rank correlations) are many runs of the same shape: load a
dataset, build a registered model with or without noise, train it (continuous pruning or not),
slice what was pruned and measure the result on the test set. ``RunSpec`` names one such run
completely; ``run_cached`` keeps each finished run's raw result in its own file, so an interrupted
benchmark restarts where it stopped and a changed setting is never mistaken for a finished run.
"""
from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from bmrs.artifacts import write_json
from bmrs.data import DataBundle, Split, load_dataset, resolve_root
from bmrs.train.metrics import classification_metrics
from bmrs.models import ModelConfig, NoiseInit, build_network
from bmrs.nn.noise import noise_modules
from bmrs.train import TrainConfig, train_
from export.slicing import count_flops, count_params, parameter_compression, slice_model


@dataclass(frozen=True)
class RunSpec:
    """Everything one run depends on. ``noise=None`` is the paper's "None" model (no noise layers)."""

    model: str = "lenet5"
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion_mnist"
    root: str | None = None  # None: the dataset's default root
    val_fraction: float = 0.2
    data_seed: int = 0
    max_train_examples: int | None = None
    noise: NoiseInit | None = field(default_factory=NoiseInit)
    train: TrainConfig = field(default_factory=TrainConfig)

    def resolved_root(self) -> str:
        return resolve_root(self.dataset, self.root)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe and comparable with a copy read back from a result file."""
        described = asdict(self)
        described["train"] = replace(self.train, progress=False).to_dict()
        if described["noise"] is not None and not described["noise"]["start_on"]:
            # Results cached before start_on existed describe the same runs: keep them valid.
            del described["noise"]["start_on"]
        return json.loads(json.dumps(described, allow_nan=False))


@functools.lru_cache(maxsize=4)
def _load(dataset: str, root: str, val_fraction: float, seed: int, limit: int | None) -> DataBundle:
    data = load_dataset(dataset, root, val_fraction=val_fraction, seed=seed)
    if limit is not None:
        data = replace(data, train=Split(data.train.images[:limit], data.train.labels[:limit]))
    return data


def load_data(spec: RunSpec) -> DataBundle:
    """The run's data; loaded once per process for every run that shares it."""
    return _load(spec.dataset, spec.resolved_root(), spec.val_fraction, spec.data_seed, spec.max_train_examples)


def build(spec: RunSpec, data: DataBundle) -> nn.Module:
    model = ModelConfig(spec.model, **spec.model_options)
    return build_network(model, data.input_shape, data.num_classes, noise=spec.noise, seed=spec.train.seed)


def measure(model: nn.Module, data: DataBundle) -> dict[str, Any]:
    """Test metrics of the model as deployed (pruned structures sliced away) and its size."""
    model.eval()
    sample = data.test.images[:2]
    if noise_modules(model):
        sliced = slice_model(model, sample)
        deployed, widths = sliced.model, sliced.widths
        sizes = {"dense_params": sliced.dense_params, "params": sliced.pruned_params,
                 "dense_flops": sliced.dense_flops, "flops": sliced.pruned_flops, "compression": sliced.compression}  # fmt: skip
    else:
        deployed, widths = model, {}
        params, flops = count_params(model), count_flops(model, sample)
        sizes = {"dense_params": params, "params": params, "dense_flops": flops, "flops": flops, "compression": 0.0}
    return {**classification_metrics(deployed, data.test).as_dict(), **sizes, "widths": widths}


def train_and_measure(
    spec: RunSpec, *, prepare: Callable[[nn.Module, DataBundle], None] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``spec`` (``prepare`` may adjust the built model first) and measure it."""
    data = load_data(spec)
    model = build(spec, data)
    if prepare is not None:
        prepare(model, data)
    sample = data.test.images[:2]
    started = time.perf_counter()
    progress = (lambda m: parameter_compression(m, sample)) if spec.noise is not None else (lambda m: 0.0)
    result = train_(model, data, replace(spec.train, progress=False), compression=progress)
    seconds = time.perf_counter() - started
    measured = measure(model, data)
    return model, {
        "spec": spec.to_dict(),
        "test": measured,
        "history": result.as_dict(),
        "train_seconds": seconds,
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }


def run_cached(path: str | Path, spec: RunSpec, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The result stored at ``path`` when it was produced by exactly ``spec``; otherwise ``compute()``
    it and store it. A file from other settings is replaced, never silently reused."""
    path = Path(path)
    wanted = spec.to_dict()
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError:
            stored = None  # a damaged file is recomputed; write_json is atomic, so only edits cause this
        if isinstance(stored, dict) and stored.get("spec") == wanted:
            return stored
    result = compute()
    if result.get("spec") != wanted:
        raise ValueError(f"the result computed for {path} does not record the spec it was asked for")
    write_json(path, result)
    return result


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value), as the paper's tables report."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
