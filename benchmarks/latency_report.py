"""What a latency benchmark measured: per runtime (an ONNX Runtime provider or PyTorch eager on a
device), batch size and model, the latency percentiles and throughput, and how it was measured;
``LatencyReport.to_dict`` is the JSON the flow writes to ``bench/latency.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from benchmarks.ort_runtime import Provider, _as_provider
from benchmarks.torch_runtime import TorchDevice, as_torch_device

# Where a report's rows were measured: an ONNX Runtime provider or PyTorch eager on a device.
Runtime = Provider | TorchDevice

# numpy's default (Hyndman & Fan type 7): linear interpolation between the two
# nearest order statistics. Named explicitly so reports stay comparable across
# numpy versions and so the report can state how percentiles were computed.
PERCENTILE_METHOD = "linear"

# Reserved keys in the per-batch dictionary of LatencyReport.to_dict().
SPEEDUP_KEY = "speedup_p50"
SPEEDUP_MIN_KEY = "speedup_p50_min"
SPEEDUP_MAX_KEY = "speedup_p50_max"
SPEEDUP_BLOCKS_KEY = "speedup_p50_blocks"
# The speed-up's own spread: the interleaved repeats cut into consecutive blocks, p50(dense) /
# p50(pruned) in each. Block i of both models was timed over the same seconds, so each block's
# ratio is a re-measurement under that moment's load, and their min-max is what timing the same two
# files again can be expected to give. At most this many blocks, each of at least MIN_BLOCK_REPEATS
# repeats (fewer repeats: no range is stated).
SPEEDUP_BLOCKS = 5
MIN_BLOCK_REPEATS = 10
DENSE_NAME = "dense"
PRUNED_NAME = "pruned"


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model at one batch size on one runtime, in milliseconds; throughput in
    examples per second at the median latency (batch size / p50), None below timer resolution."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    throughput_per_s: float | None = None

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray, batch_size: int) -> LatencyStats:
        ms = samples_ns.astype(np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99], method=PERCENTILE_METHOD)
        throughput = batch_size / (float(p50) / 1e3) if p50 > 0 else None
        return cls(float(p50), float(p90), float(p99), float(ms.mean()), int(ms.size), throughput)

    def to_dict(self) -> dict:
        return {k: v if k == "runs" else _json_float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class BatchResult:
    batch_size: int
    models: tuple[tuple[str, LatencyStats], ...]
    speedup_p50: float | None  # p50(dense) / p50(pruned); None without both names
    # The same ratio in each block of consecutive interleaved repeats (SPEEDUP_BLOCKS); () when
    # there are too few repeats for two blocks, or no dense/pruned pair.
    speedup_p50_blocks: tuple[float, ...] = ()

    @property
    def speedup_p50_range(self) -> tuple[float, float] | None:
        """(min, max) of the blocks' speed-ups: the spread of ``speedup_p50`` within this measurement."""
        return (min(self.speedup_p50_blocks), max(self.speedup_p50_blocks)) if self.speedup_p50_blocks else None

    def stats(self, model: str) -> LatencyStats:
        """``model``'s latency at this batch size; ValueError naming the models timed otherwise."""
        timed = dict(self.models)
        if model not in timed:
            raise ValueError(f"no model {model!r} was timed at batch size {self.batch_size}; timed: {sorted(timed)}")
        return timed[model]


@dataclass(frozen=True)
class ProviderResult:
    provider: Runtime
    batches: tuple[BatchResult, ...]


@dataclass(frozen=True)
class ScheduledRun:
    provider: Runtime
    batch_size: int
    model: str


@dataclass(frozen=True)
class LatencyReport:
    """``measure_latency``'s (ORT: ``onnxruntime_version``, ``model_paths`` the files) or
    ``measure_torch_latency``'s (``torch``: its version, threads and device names; ``model_paths``
    the modules' classes and sizes; no ``onnxruntime_version`` nor ``thread_spinning``)."""

    onnxruntime_version: str | None
    machine: Mapping[str, object]  # platform, processor, CPU counts; see describe_machine
    input_shape: tuple[int, ...]
    model_paths: tuple[tuple[str, str], ...]
    warmup: int
    repeats: int
    seed: int
    intra_op_threads: int | None  # None: ORT's default, one thread per physical core
    thread_spinning: bool | None
    results: tuple[ProviderResult, ...]
    percentile_method: str = PERCENTILE_METHOD
    schedule: tuple[ScheduledRun, ...] | None = None
    timer: str = "time.perf_counter_ns around InferenceSession.run"
    torch: Mapping[str, object] | None = None

    def batch(self, batch_size: int, provider: Runtime | str = Provider.CPU) -> BatchResult:
        """What was measured at ``batch_size`` on ``provider`` (an ORT ``Provider`` or a
        ``TorchDevice``): each model's ``LatencyStats`` (``.stats(name)``) and ``speedup_p50``.
        ValueError naming what was measured when that pair was not."""
        provider = _as_runtime(provider)
        for result in self.results:
            for batch in result.batches:
                if result.provider is provider and batch.batch_size == batch_size:
                    return batch
        measured = [(r.provider.value, b.batch_size) for r in self.results for b in r.batches]
        raise ValueError(
            f"no latency measured at batch size {batch_size!r} on {provider.value}; measured (provider, batch size): "
            f"{measured}; add it to LatencyConfig.batch_sizes / providers / torch_devices"
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
                    if batch.speedup_p50_range is not None:
                        low, high = batch.speedup_p50_range
                        entry[SPEEDUP_MIN_KEY], entry[SPEEDUP_MAX_KEY] = _json_float(low), _json_float(high)
                        entry[SPEEDUP_BLOCKS_KEY] = [_json_float(ratio) for ratio in batch.speedup_p50_blocks]
                per_batch[str(batch.batch_size)] = entry
            by_provider[result.provider.value] = per_batch
        out = {
            **({} if self.onnxruntime_version is None else {"onnxruntime_version": self.onnxruntime_version}),
            **({} if self.torch is None else {"torch": dict(self.torch)}),
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


def _as_runtime(value: object) -> Runtime:
    try:
        return _as_provider(value)
    except ValueError:
        pass
    try:
        return as_torch_device(value)
    except ValueError:
        raise ValueError(f"Unknown runtime {value!r}; use a Provider ({[p.value for p in Provider]}) "
                         f"or a TorchDevice ({[d.value for d in TorchDevice]}).") from None


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


def block_speedups(samples_ns: Mapping[str, np.ndarray]) -> tuple[float, ...]:
    """p50(dense) / p50(pruned) over each block of consecutive repeats (see ``SPEEDUP_BLOCKS``).
    ``samples_ns``: each model's timings in repeat order, the models timed in turn per repeat."""
    if DENSE_NAME not in samples_ns or PRUNED_NAME not in samples_ns:
        return ()
    dense, pruned = np.asarray(samples_ns[DENSE_NAME]), np.asarray(samples_ns[PRUNED_NAME])
    blocks = min(SPEEDUP_BLOCKS, min(dense.size, pruned.size) // MIN_BLOCK_REPEATS)
    if blocks < 2:
        return ()
    ratios = []
    for dense_block, pruned_block in zip(np.array_split(dense, blocks), np.array_split(pruned, blocks)):
        pruned_p50 = float(np.percentile(pruned_block, 50, method=PERCENTILE_METHOD))
        if pruned_p50 <= 0:
            return ()  # below timer resolution, as _speedup
        ratios.append(float(np.percentile(dense_block, 50, method=PERCENTILE_METHOD)) / pruned_p50)
    return tuple(ratios)


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
