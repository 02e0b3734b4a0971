"""Energy per 1,000 inferences of two ONNX models (dense and pruned) through ONNX Runtime, measured
in alternating windows so that slow drift cancels in their ratio.

Each batch size gets ``rounds`` rounds of one window per model, the order flipped every round
(dense, pruned; pruned, dense; ...): a drift linear in time lands on both models alike. Each window
runs one model back to back for ``window_s`` seconds under one span of an ``EnergyMeter``; an
inference is one example, so a window of ``c`` calls at batch ``b`` covers ``c * b`` of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.codecarbon_offline import JOULES_PER_KWH, json_safe, require_known_country
from benchmarks.ort_runtime import Provider, describe_machine, open_session, require_providers, input_feed
from benchmarks.stage_energy import EnergyMeter, Figure

DENSE, PRUNED = "dense", "pruned"
WARMUP_CALLS = 3  # per model and batch size; the latency stage before it has warmed the machine up


@dataclass(frozen=True)
class EnergyRunConfig:
    """The flow's ``energy`` section.

    enabled: measure energy at all (False: no tracker, the report's ``energy`` is null).
    country_iso_code: the grid whose carbon intensity turns kWh into CO2 (codecarbon's offline table).
    batch_sizes, rounds, window_s: the inference measurement, ``rounds`` x 2 windows of ``window_s``
    seconds per batch size. track_stages: also measure training, fine-tuning, the dense reference's
    training, slicing and export, and benchmarking, each as a whole.
    """

    enabled: bool = True
    country_iso_code: str = "DNK"
    batch_sizes: tuple[int, ...] = (256,)
    rounds: int = 3
    window_s: float = 2.0
    track_stages: bool = True

    def __post_init__(self) -> None:
        for flag in ("enabled", "track_stages"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        code = self.country_iso_code
        if not (isinstance(code, str) and len(code) == 3 and code.isalpha() and code.isupper()):
            raise ValueError(f"country_iso_code must be a 3-letter upper-case ISO code such as 'DNK', 'DEU', 'USA'; got {code!r}")
        sizes = self.batch_sizes
        if not isinstance(sizes, (tuple, list)) or not sizes:
            raise ValueError(f"batch_sizes must be a non-empty list of batch sizes, e.g. [256]; got {sizes!r}")
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
            raise ValueError(f"batch_sizes must hold integers >= 1, e.g. [256]; got {list(sizes)!r}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"batch_sizes {list(sizes)!r} lists a size twice; list each once")
        object.__setattr__(self, "batch_sizes", tuple(sizes))
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1 (default 3); got {self.rounds!r}")
        window = self.window_s
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not (math.isfinite(window) and window > 0):
            raise ValueError(f"window_s must be a number of seconds > 0 (default 2.0); got {window!r}")


def check_energy_config(config: EnergyRunConfig) -> None:
    """What a run checks before it trains: an enabled section's country is in codecarbon's offline
    table (``ValueError`` naming it and examples). Without codecarbon installed nothing is checked:
    the run's energy figures then say why they are missing."""
    if not config.enabled:
        return
    try:
        import codecarbon  # noqa: F401
    except ImportError:
        return
    require_known_country(config.country_iso_code, "energy.country_iso_code")


def measure_paired_energy(
    models: Mapping[str, Path],
    input_shape: tuple[int, ...],
    config: EnergyRunConfig,
    meter: EnergyMeter,
    *,
    intra_op_threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The energy per 1,000 examples of ``models["dense"]`` and ``models["pruned"]`` on ONNX Runtime's
    CPU provider (``intra_op_threads`` as the latency benchmark sets them), per batch size of
    ``config``; each window a span of ``meter``. Returns the JSON-safe detail: every window, and per
    batch size each model's J and g CO2 per 1,000 examples, the pruned/dense ratio of the totals and
    its range over rounds; ``available`` False (with the reason) once a window could not be measured."""
    paths = {name: Path(models[name]) for name in (DENSE, PRUNED)}
    for name, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file for {name!r} not found: {path}; export it first")
    provider = Provider.CPU
    require_providers((provider,))
    rng = np.random.default_rng(seed)
    windows: list[dict[str, Any]] = []
    by_batch: dict[str, Any] = {}
    for batch in config.batch_sizes:
        x = rng.standard_normal((batch, *input_shape), dtype=np.float32)
        calls = {}
        for name, path in paths.items():
            session = open_session(path, provider, intra_op_threads=intra_op_threads)
            feed = input_feed(name, session, x)
            calls[name] = lambda session=session, feed=feed: session.run(None, feed)
            for _ in range(WARMUP_CALLS):
                calls[name]()
        rows = []
        for round_ in range(config.rounds):
            order = (DENSE, PRUNED) if round_ % 2 == 0 else (PRUNED, DENSE)
            row = {}
            for name in order:
                figure, count = _window(meter, f"inference-{name}-b{batch}-r{round_}", calls[name], config.window_s)
                windows.append({"batch_size": batch, "round": round_, "model": name, "calls": count,
                                "examples": count * batch, **figure.to_dict()})
                if not figure.available:
                    return _unavailable(figure.reason, config, intra_op_threads, windows)
                row[name] = (figure, count * batch)
            rows.append(row)
        by_batch[str(batch)] = _batch_summary(rows)
    return json_safe({
        "available": True,
        "provider": provider.value,
        "threads": intra_op_threads,
        "batch_sizes": list(config.batch_sizes),
        "rounds": config.rounds,
        "window_s": config.window_s,
        "warmup_calls": WARMUP_CALLS,
        "order": "alternating: dense first in even rounds, pruned first in odd ones",
        "by_batch": by_batch,
        "windows": windows,
        "onnxruntime_version": ort.__version__,
        "machine": describe_machine(),
    })


def _window(meter: EnergyMeter, name: str, call, seconds: float) -> tuple[Figure, int]:
    count = 0
    with meter.measure(name) as reading:
        deadline = time.perf_counter() + seconds
        while True:
            call()
            count += 1
            if time.perf_counter() >= deadline:
                break
    return reading.figure, count


def per_thousand(figure: Figure, examples: int) -> dict[str, Any]:
    """One model's figures per 1,000 examples (an inference is one example)."""
    return {
        "j_per_1k": figure.energy_kwh * JOULES_PER_KWH / examples * 1000,
        "g_co2_per_1k": figure.emissions_kg_co2 * 1000 / examples * 1000,
        "seconds": figure.duration_s,
        "examples": examples,
    }


def _batch_summary(rows: list[dict[str, tuple[Figure, int]]]) -> dict[str, Any]:
    totals = {}
    for name in (DENSE, PRUNED):
        figures = [row[name][0] for row in rows]
        total = Figure(True, sum(f.energy_kwh for f in figures), sum(f.emissions_kg_co2 for f in figures),
                       sum(f.duration_s for f in figures))
        totals[name] = per_thousand(total, sum(row[name][1] for row in rows))
    ratios = [_ratio(per_thousand(*row[PRUNED])["j_per_1k"], per_thousand(*row[DENSE])["j_per_1k"]) for row in rows]
    finite = [r for r in ratios if r is not None]
    return {
        **totals,
        "ratio_pruned_dense": _ratio(totals[PRUNED]["j_per_1k"], totals[DENSE]["j_per_1k"]),
        "ratio_min": min(finite, default=None),
        "ratio_max": max(finite, default=None),
        "rounds": len(rows),
        "ratio_by_round": ratios,
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    # A window codecarbon measured at zero energy has no ratio (None, not inf).
    value = numerator / denominator if denominator > 0 else math.nan
    return value if math.isfinite(value) else None


def _unavailable(reason: str | None, config: EnergyRunConfig, threads: int | None, windows: list) -> dict[str, Any]:
    return json_safe({"available": False, "reason": reason or "a window could not be measured",
                      "provider": Provider.CPU.value, "threads": threads, "batch_sizes": list(config.batch_sizes),
                      "rounds": config.rounds, "window_s": config.window_s, "windows": windows})
