"""Interleaved ONNX Runtime latency benchmark for dense vs pruned models.

All models are timed inside the same loop, one run each in turn, so slow drift
(thermal throttling, frequency scaling, noisy neighbours) lands on every model
alike instead of on whichever model happened to be measured last.
"""

from __future__ import annotations

import gc
import os
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.ort_runtime import (  # noqa: F401  (re-exported: the latency API names them)
    Provider,
    _as_provider,
    available_providers,
    describe_machine,
    open_session,
    require_providers,
    single_float_input,
)

# numpy's default (Hyndman & Fan type 7): linear interpolation between the two
# nearest order statistics. Named explicitly so reports stay comparable across
# numpy versions and so the report can state how percentiles were computed.
PERCENTILE_METHOD = "linear"

# Reserved key in the per-batch dictionary of LatencyReport.to_dict().
SPEEDUP_KEY = "speedup_p50"
DENSE_NAME = "dense"
PRUNED_NAME = "pruned"


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
    """

    batch_sizes: tuple[int, ...] = (1, 256)
    warmup: int = 10
    repeats: int = 100
    providers: tuple[Provider, ...] = (Provider.CPU,)
    intra_op_threads: int | None = None
    seed: int = 0
    thread_spinning: bool = False
    record_schedule: bool = False

    def __post_init__(self) -> None:
        # Lists (e.g. from YAML) and provider strings are accepted, then frozen
        # into tuples of canonical values so the config stays hashable.
        sizes = _unique_tuple("batch_sizes", self.batch_sizes, "(1, 256)",
                              lambda b: _positive_int("batch_sizes item", b))
        object.__setattr__(self, "batch_sizes", sizes)
        providers = _unique_tuple("providers", self.providers, "(Provider.CPU,)", _as_provider)
        object.__setattr__(self, "providers", providers)
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


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model at one batch size on one provider, in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray) -> LatencyStats:
        ms = samples_ns.astype(np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99], method=PERCENTILE_METHOD)
        return cls(float(p50), float(p90), float(p99), float(ms.mean()), int(ms.size))

    def to_dict(self) -> dict:
        return {k: v if k == "runs" else _json_float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class BatchResult:
    batch_size: int
    models: tuple[tuple[str, LatencyStats], ...]
    speedup_p50: float | None  # p50(dense) / p50(pruned); None without both names

    def stats(self, model: str) -> LatencyStats:
        """``model``'s latency at this batch size; ValueError naming the models timed otherwise."""
        timed = dict(self.models)
        if model not in timed:
            raise ValueError(f"no model {model!r} was timed at batch size {self.batch_size}; timed: {sorted(timed)}")
        return timed[model]


@dataclass(frozen=True)
class ProviderResult:
    provider: Provider
    batches: tuple[BatchResult, ...]


@dataclass(frozen=True)
class ScheduledRun:
    provider: Provider
    batch_size: int
    model: str


@dataclass(frozen=True)
class LatencyReport:
    onnxruntime_version: str
    machine: Mapping[str, object]  # platform, processor, CPU counts; see describe_machine
    input_shape: tuple[int, ...]
    model_paths: tuple[tuple[str, str], ...]
    warmup: int
    repeats: int
    seed: int
    intra_op_threads: int | None  # None: ORT's default, one thread per physical core
    thread_spinning: bool
    results: tuple[ProviderResult, ...]
    percentile_method: str = PERCENTILE_METHOD
    schedule: tuple[ScheduledRun, ...] | None = None
    timer: str = "time.perf_counter_ns around InferenceSession.run"

    def batch(self, batch_size: int, provider: Provider | str = Provider.CPU) -> BatchResult:
        """What was measured at ``batch_size`` on ``provider``: each model's ``LatencyStats``
        (``.stats(name)``) and ``speedup_p50``. ValueError naming what was measured when that pair
        was not."""
        provider = _as_provider(provider)
        for result in self.results:
            for batch in result.batches:
                if result.provider is provider and batch.batch_size == batch_size:
                    return batch
        measured = [(r.provider.value, b.batch_size) for r in self.results for b in r.batches]
        raise ValueError(
            f"no latency measured at batch size {batch_size!r} on {provider.value}; measured (provider, batch size): "
            f"{measured}; add it to LatencyConfig.batch_sizes / providers"
        )

    def to_dict(self) -> dict:
        """JSON-safe view: string keys only, no NaN/inf (those become None)."""
        by_provider: dict[str, dict] = {}
        for result in self.results:
            per_batch = {}
            for batch in result.batches:
                entry: dict = {name: stats.to_dict() for name, stats in batch.models}
                if _has_dense_and_pruned(dict(batch.models)):
                    entry[SPEEDUP_KEY] = _json_float(batch.speedup_p50)
                per_batch[str(batch.batch_size)] = entry
            by_provider[result.provider.value] = per_batch
        out = {
            "onnxruntime_version": self.onnxruntime_version,
            "machine": dict(self.machine),
            "input_shape": list(self.input_shape),
            "models": dict(self.model_paths),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "seed": self.seed,
            "intra_op_threads": self.intra_op_threads,
            "thread_spinning": self.thread_spinning,
            "percentile_method": self.percentile_method,
            "timer": self.timer,
            "by_provider": by_provider,
        }
        if self.schedule is not None:
            out["schedule"] = [
                {"provider": r.provider.value, "batch_size": r.batch_size, "model": r.model}
                for r in self.schedule
            ]
        return out


def measure_latency(
    models: Mapping[str, Path],
    input_shape: tuple[int, ...],
    config: LatencyConfig = LatencyConfig(),
) -> LatencyReport:
    """Time every model on every provider and batch size, runs interleaved.

    Models run round-robin in mapping order. With names "dense" and "pruned"
    the report carries speedup_p50 = p50(dense) / p50(pruned).
    """
    paths = _check_models(models)
    shape = _check_input_shape(input_shape)
    if not isinstance(config, LatencyConfig):
        raise TypeError(f"config must be a LatencyConfig, got {type(config).__name__}.")
    require_providers(config.providers)

    rng = np.random.default_rng(config.seed)
    schedule: list[ScheduledRun] | None = [] if config.record_schedule else None
    results = []
    for provider in config.providers:
        batches = []
        for batch_size in config.batch_sizes:
            # One input for all models so they do identical work on identical data.
            x = rng.standard_normal((batch_size, *shape), dtype=np.float32)
            samples = _time_interleaved(paths, provider, x, config, schedule)
            stats = tuple((name, LatencyStats.from_ns(ns)) for name, ns in samples.items())
            batches.append(BatchResult(batch_size, stats, _speedup(dict(stats))))
        results.append(ProviderResult(provider, tuple(batches)))

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
        results=tuple(results),
        schedule=tuple(schedule) if schedule is not None else None,
    )


def _time_interleaved(
    paths: dict[str, Path],
    provider: Provider,
    x: np.ndarray,
    config: LatencyConfig,
    schedule: list[ScheduledRun] | None,
) -> dict[str, np.ndarray]:
    shape = tuple(x.shape)
    runs = []  # (name, session, feed, samples) in round-robin order
    for name, path in paths.items():
        session = open_session(path, provider, intra_op_threads=config.intra_op_threads,
                               thread_spinning=config.thread_spinning)
        feed = {single_float_input(name, session, shape): x}
        for _ in range(config.warmup):
            session.run(None, feed)
        runs.append((name, session, feed, np.empty(config.repeats, dtype=np.int64)))

    # A GC pause would be charged to whichever model happens to be running.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(config.repeats):
            for name, session, feed, samples in runs:
                start = time.perf_counter_ns()
                session.run(None, feed)
                samples[i] = time.perf_counter_ns() - start
                if schedule is not None:
                    schedule.append(ScheduledRun(provider, shape[0], name))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: samples for name, _, _, samples in runs}


def _check_models(models: Mapping[str, Path]) -> dict[str, Path]:
    if not isinstance(models, Mapping) or not models:
        raise TypeError(
            f"models must be a non-empty mapping of name -> ONNX path, e.g. "
            f"{{'dense': Path('dense.onnx'), 'pruned': Path('pruned.onnx')}}; got {models!r}."
        )
    paths = {}
    for name, path in models.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"Model names must be non-empty strings, got {name!r}.")
        if name == SPEEDUP_KEY:
            raise ValueError(f"Model name {name!r} is reserved for the speedup ratio; rename the model.")
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


def _has_dense_and_pruned(stats: Mapping[str, LatencyStats]) -> bool:
    return DENSE_NAME in stats and PRUNED_NAME in stats


def _speedup(stats: Mapping[str, LatencyStats]) -> float | None:
    if not _has_dense_and_pruned(stats):
        return None
    pruned = stats[PRUNED_NAME].p50_ms
    # Below timer resolution the ratio is meaningless rather than infinite.
    if pruned <= 0:
        return None
    return stats[DENSE_NAME].p50_ms / pruned


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
