"""Interleaved latency benchmark for dense vs pruned models: the ONNX files through ONNX Runtime
(``measure_latency``) and the PyTorch modules they were exported from, eager
(``measure_torch_latency``). Both take one ``LatencyConfig`` and return a ``LatencyReport``.

All models are timed inside the same loop, one run each in turn, so slow drift
(thermal throttling, frequency scaling, noisy neighbours) lands on every model
alike instead of on whichever model happened to be measured last.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from benchmarks.ort_runtime import (  # noqa: F401  (re-exported: the latency API names them)
    Provider,
    _as_provider,
    available_providers,
    describe_machine,
    open_session,
    require_providers,
    input_feed,
)
from benchmarks.torch_runtime import (  # noqa: F401  (TorchDevice, available_torch_devices: the API too)
    TorchDevice,
    as_torch_device,
    available_torch_devices,
    describe_module,
    describe_torch,
    on_device,
    require_torch_devices,
    synchronize,
    timed_call,
)
from benchmarks.latency_report import (  # noqa: F401  (re-exported: the latency API names them)
    DENSE_NAME,
    PERCENTILE_METHOD,
    PRUNED_NAME,
    SPEEDUP_BLOCKS_KEY,
    SPEEDUP_KEY,
    SPEEDUP_MAX_KEY,
    SPEEDUP_MIN_KEY,
    BatchResult,
    LatencyReport,
    LatencyStats,
    ProviderResult,
    Runtime,
    ScheduledRun,
    _speedup,
    block_speedups,
)

if TYPE_CHECKING:
    from torch import nn


def _positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    # bool is an int subclass; True as a batch size is always a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    low = 0 if allow_zero else 1
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class LatencyConfig:
    """How to time the models.

    thread_spinning: ORT's intra-op threads busy-wait after each run by default.
    With several sessions interleaved, the idle session's spinning threads steal
    cores from the one being timed, so spinning is off unless asked for.
    record_schedule: keep the (provider, batch size, model) order of every timed
    run in the report, to audit the interleaving. Off by default: it grows with
    repeats.
    intra_op_threads: ORT's intra-op threads, and torch's (``torch.set_num_threads``,
    restored afterwards) while ``measure_torch_latency`` runs; None: each library's default.
    torch_devices: where ``measure_torch_latency`` times the modules; None: CPU, plus
    CUDA when ``torch.cuda.is_available()``; (): none (the flow then times ORT only).
    """

    batch_sizes: tuple[int, ...] = (1, 256)
    warmup: int = 10
    repeats: int = 100
    providers: tuple[Provider, ...] = (Provider.CPU,)
    intra_op_threads: int | None = None
    seed: int = 0
    thread_spinning: bool = False
    record_schedule: bool = False
    torch_devices: tuple[TorchDevice, ...] | None = None

    def __post_init__(self) -> None:
        # Lists (e.g. from YAML) and provider strings are accepted, then frozen
        # into tuples of canonical values so the config stays hashable.
        sizes = _unique_tuple("batch_sizes", self.batch_sizes, "(1, 256)",
                              lambda b: _positive_int("batch_sizes item", b))
        object.__setattr__(self, "batch_sizes", sizes)
        providers = _unique_tuple("providers", self.providers, "(Provider.CPU,)", _as_provider)
        object.__setattr__(self, "providers", providers)
        if self.torch_devices is not None:
            devices = () if self.torch_devices in ((), []) else _unique_tuple(
                "torch_devices", self.torch_devices, "(TorchDevice.CPU,)", as_torch_device)
            object.__setattr__(self, "torch_devices", devices)
        _positive_int("warmup", self.warmup, allow_zero=True)
        _positive_int("repeats", self.repeats)
        if self.intra_op_threads is not None:
            _positive_int("intra_op_threads", self.intra_op_threads)
        _positive_int("seed", self.seed, allow_zero=True)
        for flag in ("thread_spinning", "record_schedule"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}.")


def _unique_tuple(name: str, value: object, example: str, convert) -> tuple:
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"{name} must be a non-empty tuple, e.g. {example}; got {value!r}.")
    items = tuple(convert(v) for v in value)
    if len(set(items)) != len(items):
        raise ValueError(f"{name} has duplicates: {items!r}; list each entry once.")
    return items


def measure_latency(
    models: Mapping[str, Path],
    input_shape: tuple[int, ...],
    config: LatencyConfig = LatencyConfig(),
) -> LatencyReport:
    """Time every model on every provider and batch size, runs interleaved.

    Models run round-robin in mapping order. With names "dense" and "pruned"
    the report carries speedup_p50 = p50(dense) / p50(pruned), and its range
    over blocks of consecutive repeats (speedup_p50_min / _max; see
    ``latency_report.SPEEDUP_BLOCKS``).
    """
    paths = _check_models(models)
    shape = _check_input_shape(input_shape)
    _check_config(config)
    require_providers(config.providers)

    def time_batch(provider: Provider, x: np.ndarray, schedule: list[ScheduledRun] | None) -> dict[str, np.ndarray]:
        calls = []
        for name, path in paths.items():
            session = open_session(path, provider, intra_op_threads=config.intra_op_threads,
                                   thread_spinning=config.thread_spinning)
            feed = input_feed(name, session, x)
            calls.append((name, lambda session=session, feed=feed: session.run(None, feed)))
        return _round_robin(calls, provider, x.shape[0], config, schedule)

    results, schedule = _measure(config.providers, shape, config, time_batch)
    return LatencyReport(
        onnxruntime_version=ort.__version__,
        machine=describe_machine(),
        input_shape=shape,
        model_paths=tuple((name, str(path)) for name, path in paths.items()),
        warmup=config.warmup,
        repeats=config.repeats,
        seed=config.seed,
        intra_op_threads=config.intra_op_threads,
        thread_spinning=config.thread_spinning,
        results=results,
        schedule=schedule,
    )


def check_runtimes(config: LatencyConfig) -> None:
    """Refuse (``ValueError`` naming it and the fix) an ONNX Runtime provider or a PyTorch device that
    ``config`` asks for by name and this machine cannot run: what a run checks before it trains."""
    require_providers(config.providers)
    if config.torch_devices:
        require_torch_devices(config.torch_devices)


def measure_torch_latency(
    models: Mapping[str, nn.Module],
    input_shape: tuple[int, ...],
    config: LatencyConfig = LatencyConfig(),
) -> LatencyReport:
    """PyTorch eager latency of ``models`` (the modules the ONNX files were exported from), timed
    exactly as ``measure_latency`` times the files: the same batch sizes, warm-up, repeats,
    round-robin order and random inputs (same seed), rows keyed by ``TorchDevice`` values
    ("torch-cpu", "torch-cuda") on ``config.torch_devices``.

    Runs under ``torch.inference_mode()`` on copies of the modules in evaluation mode (the caller's
    keep their device and mode), moved to each device once. Each batch's input is copied to the
    device once, before warm-up: the host-to-device copy is never in the timed region. On CUDA every
    timed run ends with ``torch.cuda.synchronize()``, so a sample covers the GPU's work, not only its launch.
    """
    import torch

    modules = _check_modules(models)
    shape = _check_input_shape(input_shape)
    _check_config(config)
    if config.torch_devices == ():
        raise ValueError("LatencyConfig.torch_devices is empty, so there is nothing to time; name devices, "
                         "e.g. (TorchDevice.CPU,), or leave it None for CPU plus CUDA when available.")
    devices = available_torch_devices() if config.torch_devices is None else config.torch_devices
    require_torch_devices(devices)

    placed: dict[TorchDevice, dict[str, nn.Module]] = {}  # each device's copies, made once

    def time_batch(device: TorchDevice, x: np.ndarray, schedule: list[ScheduledRun] | None) -> dict[str, np.ndarray]:
        if device not in placed:
            placed.clear()  # the previous device's copies are done with
            placed[device] = on_device(modules, device)
        x_on_device = torch.from_numpy(x).to(device.torch_name)
        calls = [(name, timed_call(model, x_on_device, device)) for name, model in placed[device].items()]
        return _round_robin(calls, device, x.shape[0], config, schedule, after_warmup=lambda: synchronize(device))

    threads = torch.get_num_threads()
    if config.intra_op_threads is not None:
        torch.set_num_threads(config.intra_op_threads)
    try:
        with torch.inference_mode():
            results, schedule = _measure(devices, shape, config, time_batch)
        machine = describe_machine()
        described = describe_torch(devices, str(machine["processor"]))
    finally:
        torch.set_num_threads(threads)
    return LatencyReport(
        onnxruntime_version=None,
        machine=machine,
        input_shape=shape,
        model_paths=tuple((name, describe_module(model)) for name, model in modules.items()),
        warmup=config.warmup,
        repeats=config.repeats,
        seed=config.seed,
        intra_op_threads=config.intra_op_threads,
        thread_spinning=None,
        results=results,
        schedule=schedule,
        timer="time.perf_counter_ns around model(x) under torch.inference_mode(), x already on the device; "
        "on CUDA ending with torch.cuda.synchronize()",
        torch=described,
    )


TimeBatch = Callable[[Runtime, np.ndarray, "list[ScheduledRun] | None"], "dict[str, np.ndarray]"]


def _measure(
    runtimes: tuple[Runtime, ...], shape: tuple[int, ...], config: LatencyConfig, time_batch: TimeBatch
) -> tuple[tuple[ProviderResult, ...], tuple[ScheduledRun, ...] | None]:
    # One input per batch size, drawn from the seed, for every runtime and model: ORT and torch,
    # dense and pruned do identical work on identical data.
    rng = np.random.default_rng(config.seed)
    inputs = {b: rng.standard_normal((b, *shape), dtype=np.float32) for b in config.batch_sizes}
    schedule: list[ScheduledRun] | None = [] if config.record_schedule else None
    results = []
    for runtime in runtimes:
        batches = []
        for batch_size, x in inputs.items():
            samples = time_batch(runtime, x, schedule)
            stats = tuple((name, LatencyStats.from_ns(ns, batch_size)) for name, ns in samples.items())
            batches.append(BatchResult(batch_size, stats, _speedup(dict(stats)), block_speedups(samples)))
        results.append(ProviderResult(runtime, tuple(batches)))
    return tuple(results), tuple(schedule) if schedule is not None else None


def _round_robin(
    calls: list[tuple[str, Callable[[], object]]],
    runtime: Runtime,
    batch_size: int,
    config: LatencyConfig,
    schedule: list[ScheduledRun] | None,
    after_warmup: Callable[[], None] = lambda: None,
) -> dict[str, np.ndarray]:
    """Warm each model up in turn, then time one call of each model per repeat, in ``calls`` order."""
    for _, call in calls:
        for _ in range(config.warmup):
            call()
    after_warmup()
    samples = {name: np.empty(config.repeats, dtype=np.int64) for name, _ in calls}
    # A GC pause would be charged to whichever model happens to be running.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(config.repeats):
            for name, call in calls:
                start = time.perf_counter_ns()
                call()
                samples[name][i] = time.perf_counter_ns() - start
                if schedule is not None:
                    schedule.append(ScheduledRun(runtime, batch_size, name))
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def _check_config(config: object) -> None:
    if not isinstance(config, LatencyConfig):
        raise TypeError(f"config must be a LatencyConfig, got {type(config).__name__}.")


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"Model names must be non-empty strings, got {name!r}.")
    if name in (SPEEDUP_KEY, SPEEDUP_MIN_KEY, SPEEDUP_MAX_KEY, SPEEDUP_BLOCKS_KEY):
        raise ValueError(f"Model name {name!r} is reserved for the speedup ratio; rename the model.")


def _check_modules(models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    from torch import nn

    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a non-empty mapping of name -> torch.nn.Module, e.g. "
                        f"{{'dense': dense_model, 'pruned': sliced_model}}; got {models!r}.")
    for name, model in models.items():
        _check_name(name)
        if not isinstance(model, nn.Module):
            raise TypeError(f"Model {name!r} must be a torch.nn.Module, got {type(model).__name__}; "
                            "ONNX files go to measure_latency.")
    return dict(models)


def _check_models(models: Mapping[str, Path]) -> dict[str, Path]:
    if not isinstance(models, Mapping) or not models:
        raise TypeError(
            f"models must be a non-empty mapping of name -> ONNX path, e.g. "
            f"{{'dense': Path('dense.onnx'), 'pruned': Path('pruned.onnx')}}; got {models!r}."
        )
    paths = {}
    for name, path in models.items():
        _check_name(name)
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Path for model {name!r} must be a str or Path, got {path!r}.")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file for model {name!r} not found: {path}; export it first.")
        paths[name] = path
    return paths


def _check_input_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(
            "input_shape must be a tuple of ints without the batch dimension, "
            f"e.g. (3, 32, 32); got {input_shape!r}."
        )
    return tuple(_positive_int("input_shape item", d) for d in input_shape)


