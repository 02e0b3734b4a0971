"""One training run of a paper benchmark, measured the way every benchmark reports it, and cached as raw JSON.

A run is a ``FlowConfig``, the one ``bmrs run`` would load (``benchmarks.paper.runner.paper_config``:
the paper flow of flows.yaml with the benchmark's ``--set`` overrides), trained with the library's
own stages but without a run directory: ``bmrs.data.load_data`` its data, ``bmrs.models.build_network``
its model with or without noise, ``train_`` it (continuous pruning or not), slice what was pruned and
measure it on the test set.

``run_record`` is what a raw result file records of its run, and ``run_cached`` reuses a stored
result only when ``same_run`` finds its record is the run asked for: an interrupted benchmark
restarts where it stopped, and a changed setting is never mistaken for a finished run.
"""
from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bmrs import data as bmrs_data
from bmrs.artifacts import write_json
from bmrs.data import DataBundle, DataConfig
from bmrs.models import build_network
from bmrs.nn.noise import noise_modules
from bmrs.train import train_
from bmrs.train.config import complete_record
from bmrs.train.metrics import classification_metrics
from export.slicing import count_flops, count_params, parameter_compression, slice_model
from pipeline.config import FlowConfig


def is_noisy(config: FlowConfig, noisy: bool | None = None) -> bool:
    """Whether the run's model has noise layers: ``noisy`` when a benchmark says so (the rank
    correlations score a noisy model trained without pruning), else ``bmrs run``'s rule: a run that
    prunes has them, and ``train.criterion`` null is the paper's dense "None" model."""
    return config.train.criterion is not None if noisy is None else noisy


def run_record(config: FlowConfig, *, noisy: bool | None = None) -> dict[str, Any]:
    """What a raw result records of its run, JSON-safe. The layout is the one results have always
    had, so every stored file still matches: ``noise`` is None for a dense model and leaves out an
    empty ``start_on``, and ``noise_points`` is only there when the model names its own."""
    data, model = config.data, config.model
    noise: dict[str, Any] | None = None
    if is_noisy(config, noisy):
        noise = asdict(config.noise)
        if not noise["start_on"]:
            del noise["start_on"]
    record: dict[str, Any] = {
        "model": model.name,
        "model_options": model.options(),
        "dataset": data.dataset,
        "root": data.root,
        "val_fraction": data.val_fraction,
        "data_seed": data.seed,
        "max_train_examples": data.max_train_examples,
        "noise": noise,
        "train": replace(config.train, progress=False).to_dict(),
    }
    if model.noise_points is not None:
        record["noise_points"] = list(model.noise_points)
    return json.loads(json.dumps(record, allow_nan=False))


def same_run(stored: Any, wanted: dict[str, Any]) -> bool:
    """Whether a stored record describes the run ``wanted`` describes. Each side's criterion has
    every setting filled in by its default first: records written before criteria recorded all
    their settings hold only the ones that were given (``{}`` for bmrs_n, ``{"p1": 8.0}``)."""
    if not isinstance(stored, dict) or not isinstance(stored.get("train"), dict):
        return False
    try:
        return _completed(stored) == _completed(wanted)
    except (ValueError, TypeError):  # a criterion no longer registered: not a run this code makes
        return False


def _completed(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "train": complete_record(record["train"])}


@functools.lru_cache(maxsize=4)
def load_data(config: DataConfig) -> DataBundle:
    """``bmrs.data.load_data``, once per process for every run that shares the data."""
    return bmrs_data.load_data(config)


def build(config: FlowConfig, data: DataBundle, *, noisy: bool | None = None) -> nn.Module:
    noise = config.noise if is_noisy(config, noisy) else None
    return build_network(config.model, data.input_shape, data.num_classes, noise=noise, seed=config.train.seed)


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
    config: FlowConfig, *, noisy: bool | None = None, prepare: Callable[[nn.Module, DataBundle], None] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``config`` (``prepare`` may adjust the built model first) and measure it."""
    data = load_data(config.data)
    model = build(config, data, noisy=noisy)
    if prepare is not None:
        prepare(model, data)
    sample = data.test.images[:2]
    started = time.perf_counter()
    progress = (lambda m: parameter_compression(m, sample)) if is_noisy(config, noisy) else (lambda m: 0.0)
    result = train_(model, data, replace(config.train, progress=False), compression=progress)
    seconds = time.perf_counter() - started
    measured = measure(model, data)
    return model, {
        "spec": run_record(config, noisy=noisy),
        "test": measured,
        "history": result.as_dict(),
        "train_seconds": seconds,
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }


def run_cached(path: str | Path, wanted: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The result stored at ``path`` when its ``spec`` is the run ``wanted`` (a ``run_record``);
    otherwise ``compute()`` it and store it. A file from other settings is replaced, never reused."""
    path = Path(path)
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError:
            stored = None  # a damaged file is recomputed; write_json is atomic, so only edits cause this
        if isinstance(stored, dict) and same_run(stored.get("spec"), wanted):
            return stored
    result = compute()
    if not same_run(result.get("spec"), wanted):
        raise ValueError(f"the result computed for {path} does not record the run it was asked for")
    write_json(path, result)
    return result
