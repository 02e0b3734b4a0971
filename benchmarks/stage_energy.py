"""Energy of the spans of one process (training, a benchmark window) from ONE offline codecarbon
tracker, and a ledger that keeps each stage's figures across an interrupted and resumed run.

``EnergyMeter.measure(name)`` is a span measured with codecarbon's task API (``start_task`` /
``stop_task``), so the hardware is detected once per meter, not once per span. codecarbon has a
single active task, so a span opened inside another splits it: the outer task stops, the inner one
runs, the outer one starts again; the outer span's figure is the sum of its pieces, the inner
span's included. Under the task API codecarbon's periodic scheduler (``measure_power_secs``) is
paused; the CPU power in load mode comes from its fixed 1 s monitor plus the closing sample that
``stop_task`` takes, so a span of any length, a fraction of a second included, gets a real figure.

A tracker that fails (no permission, a codecarbon error, an exception in ``start_task`` or
``stop_task``) never raises out of the meter: the spans open at that moment and every later one
become ``Figure.missing(reason)``, and the work they measure runs on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.codecarbon_offline import (
    CODECARBON_LOGGER,
    LogCapture,
    MeasurementMode,
    TrackingMode,
    offline_tracker,
    read_mode,
)
from bmrs.artifacts import write_json

# Inert under the task API (start_task pauses the scheduler it paces); set so that a tracker used
# with start()/stop() would also integrate at least once per second.
MEASURE_POWER_SECS = 1.0


@dataclass(frozen=True)
class Figure:
    """The energy of one span and its emissions at the configured country's grid intensity, or why
    there is none (``available`` False, ``reason`` set)."""

    available: bool
    energy_kwh: float = 0.0
    emissions_kg_co2: float = 0.0
    duration_s: float = 0.0
    reason: str | None = None

    @classmethod
    def missing(cls, reason: str) -> Figure:
        return cls(False, reason=reason)

    def to_dict(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self.reason}
        return {"available": True, "energy_kwh": self.energy_kwh, "emissions_kg_co2": self.emissions_kg_co2,
                "duration_s": self.duration_s}


@dataclass
class Reading:
    """A span being measured; ``figure`` is set when it ends (also when the work in it raised)."""

    name: str
    figure: Figure | None = None


@dataclass
class _Open:
    name: str
    started: float
    energy_kwh: float = 0.0
    emissions_kg_co2: float = 0.0
    error: str | None = None

    def close(self) -> Figure:
        if self.error is not None:
            return Figure.missing(self.error)
        return Figure(True, self.energy_kwh, self.emissions_kg_co2, time.perf_counter() - self.started)


class EnergyMeter:
    """One offline codecarbon tracker for every span of a run (see the module's docstring).

    ``tracker_factory``: builds the tracker; default: ``offline_tracker`` for ``country_iso_code``.
    While the meter is open codecarbon's log goes to ``warnings`` instead of the console; ``close()``
    gives the console back."""

    def __init__(
        self,
        country_iso_code: str,
        *,
        tracking_mode: TrackingMode = TrackingMode.MACHINE,
        tracker_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.country_iso_code = country_iso_code
        self._tracker: Any = None
        self._error: str | None = None
        self._stack: list[_Open] = []
        self._measured = False
        self._tasks = 0
        logger = logging.getLogger(CODECARBON_LOGGER)
        self._saved_log = (logger.level, list(logger.handlers))
        capture = LogCapture()
        self.warnings = capture.messages  # codecarbon's warnings (hardware detection), not printed
        # ERROR until the tracker sets its own level: its constructor chats at INFO/WARNING.
        logger.setLevel(logging.ERROR)
        logger.handlers = [capture]
        try:
            if tracker_factory is None:
                self._tracker = offline_tracker(country_iso_code, Path(tempfile.gettempdir()),
                                                tracking_mode=tracking_mode, measure_power_secs=MEASURE_POWER_SECS)
            else:
                self._tracker = tracker_factory()
        except Exception as error:  # noqa: BLE001  (any tracker failure becomes a missing figure)
            self._error = f"codecarbon could not create a tracker: {_describe(error)}"
        capture.detach_console()
        # codecarbon detects the hardware at the first task (seconds: it looks the CPU up in its
        # tables); an empty task now keeps that out of every span, and a broken tracker shows at once.
        with self.measure("hardware-detection"):
            pass

    @property
    def available(self) -> bool:
        """False once the tracker failed: every later figure is missing."""
        return self._error is None

    @property
    def reason(self) -> str | None:
        return self._error

    def mode(self) -> MeasurementMode | None:
        """What codecarbon measured with; None until a span was measured (hardware is detected then)."""
        if not self._measured:
            return None
        try:
            return read_mode(self._tracker)
        except Exception:  # noqa: BLE001
            return None

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[Reading]:
        """Measure the body's span as ``name``; ``reading.figure`` holds the result afterwards."""
        reading = Reading(name)
        self._begin(name)
        try:
            yield reading
        finally:
            reading.figure = self._end()

    def close(self) -> None:
        """End open spans, stop codecarbon's threads and give its log back to the console."""
        while self._stack:
            self._end()
        self._stop_tracker()
        logger = logging.getLogger(CODECARBON_LOGGER)
        logger.setLevel(self._saved_log[0])
        logger.handlers = self._saved_log[1]

    def _begin(self, name: str) -> None:
        if self._error is None and self._stack:
            self._stop_task()
        self._stack.append(_Open(name, time.perf_counter(), error=self._missing_reason()))
        if self._error is None:
            self._start_task()

    def _end(self) -> Figure:
        if self._error is None:
            self._stop_task()
        figure = self._stack.pop().close()
        if self._error is None and self._stack:
            self._start_task()
        return figure

    def _missing_reason(self) -> str | None:
        return None if self._error is None else f"not measured: {self._error}"

    def _start_task(self) -> None:
        self._tasks += 1
        try:
            # Unique names: codecarbon renames a repeated one with a random suffix.
            self._tracker.start_task(f"{self._stack[-1].name}#{self._tasks}")
            if getattr(self._tracker, "_active_task", True) is None:
                raise RuntimeError("codecarbon did not start the task")
        except Exception as error:  # noqa: BLE001
            self._fail(f"codecarbon's start_task failed: {_describe(error)}")

    def _stop_task(self) -> None:
        try:
            data = self._tracker.stop_task()
            if data is None:
                raise RuntimeError("stop_task returned no measurement")
            energy, emissions = float(data.energy_consumed), float(data.emissions)
            if not (math.isfinite(energy) and math.isfinite(emissions) and energy >= 0 and emissions >= 0):
                raise RuntimeError(f"codecarbon measured {energy} kWh and {emissions} kg CO2")
        except Exception as error:  # noqa: BLE001
            self._fail(f"codecarbon's stop_task failed: {_describe(error)}")
            return
        self._measured = True
        for span in self._stack:  # the piece belongs to every span open around it
            span.energy_kwh += energy
            span.emissions_kg_co2 += emissions

    def _fail(self, reason: str) -> None:
        log = f" (codecarbon said: {self.warnings[-1]})" if self.warnings else ""
        self._error = reason + log
        for span in self._stack:
            span.error = span.error or self._error
        self._stop_tracker()

    def _stop_tracker(self) -> None:
        # Ends codecarbon's sampler thread: a task left running after a failure keeps its 1 s monitor.
        with contextlib.suppress(Exception):
            monitor = getattr(self._tracker, "_scheduler_monitor_power", None)
            if monitor is not None:
                monitor.stop()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class StageLedger:
    """``energy_stages.json``: every attempt at every stage, written as soon as the attempt ends, so
    that a resumed run adds its part to what the interrupted one measured.

    Without ``resume`` an existing file is replaced; with it, one that cannot be read is started
    over (the stages it held are then reported from this attempt on, their ``attempts`` say so)."""

    def __init__(self, path: Path, *, country_iso_code: str, resume: bool) -> None:
        self.path = Path(path)
        self.country_iso_code = country_iso_code
        self._stages: dict[str, list[dict[str, Any]]] = {}
        if resume:
            self._stages = _read_ledger(self.path)

    def add(self, stage: str, figure: Figure, mode: MeasurementMode | None = None) -> None:
        attempt = {**figure.to_dict(), "mode": None if mode is None else mode.cpu_method,
                   "ended": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._stages.setdefault(stage, []).append(attempt)
        payload = {"country_iso_code": self.country_iso_code,
                   "stages": {name: {"attempts": attempts} for name, attempts in self._stages.items()}}
        # A full disk must not end the run over a side figure; the report still gets it.
        with contextlib.suppress(OSError):
            write_json(self.path, payload)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per stage, the sum of its attempts, or why it is missing."""
        return {name: _sum_attempts(attempts) for name, attempts in self._stages.items()}


def _read_ledger(path: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        stages = json.loads(path.read_text())["stages"]
        return {str(name): [dict(a) for a in entry["attempts"] if isinstance(a, dict)] for name, entry in stages.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return {}


def _sum_attempts(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    for number, attempt in enumerate(attempts, 1):
        if not attempt.get("available"):
            return {"available": False,
                    "reason": f"attempt {number} of {len(attempts)}: {attempt.get('reason') or 'not measured'}"}
    try:
        totals = {key: float(sum(float(a[key]) for a in attempts)) for key in ("energy_kwh", "emissions_kg_co2", "duration_s")}
    except (KeyError, TypeError, ValueError):
        return {"available": False, "reason": "energy_stages.json holds a damaged attempt"}
    if not all(math.isfinite(v) for v in totals.values()):
        return {"available": False, "reason": "energy_stages.json holds a non-finite figure"}
    return {"available": True, **totals, "attempts": len(attempts)}
