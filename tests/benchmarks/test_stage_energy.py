"""One codecarbon tracker, many spans: nested spans split it, failures become missing figures, and
the ledger keeps every stage's attempts across a resume."""
from __future__ import annotations

import json
import logging
import math

import pytest

from benchmarks.stage_energy import EnergyMeter, Figure, StageLedger




def busy(seconds: float) -> int:
    """Real CPU work, so that a load-based estimate sees load."""
    import time

    deadline, total = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        total += sum(range(1000))
    return total


def test_nested_spans_share_one_tracker_and_add_up(no_network):
    import codecarbon  # noqa: F401  (configures its logger on import; snapshot after that)

    logger = logging.getLogger("codecarbon")
    before = (logger.level, list(logger.handlers))
    meter = EnergyMeter("DNK")
    assert meter.mode() is not None  # the hardware is detected when the meter opens, not in a span
    with meter.measure("outer") as outer:
        busy(0.3)
        with meter.measure("inner") as inner:
            busy(0.3)
        busy(0.2)
    with meter.measure("after") as after:
        busy(0.3)
    mode = meter.mode()
    tracker = meter._tracker
    meter.close()

    assert no_network == []
    assert (logger.level, list(logger.handlers)) == before  # the console gets codecarbon's log back
    for reading in (outer, inner, after):
        figure = reading.figure
        assert figure.available and figure.reason is None
        assert figure.energy_kwh > 0 and figure.emissions_kg_co2 > 0 and figure.duration_s > 0
    # The outer span is its own pieces plus the inner one; the inner one lies within it.
    assert outer.figure.energy_kwh > inner.figure.energy_kwh
    assert outer.figure.duration_s >= inner.figure.duration_s + 0.45
    assert inner.figure.duration_s == pytest.approx(0.3, abs=0.15)
    # DNK's grid intensity: emissions are the same multiple of energy for every span.
    intensities = [r.figure.emissions_kg_co2 / r.figure.energy_kwh for r in (outer, inner, after)]
    assert max(intensities) == pytest.approx(min(intensities), rel=1e-6)
    assert mode is not None and mode.cpu_method not in ("", "unknown")
    assert mode.estimated == (not mode.cpu_measured)
    # The detection, outer's two pieces, inner, after: one tracker for all.
    assert [name.split("#")[0] for name in tracker._tasks] == ["hardware-detection", "outer", "inner", "outer", "after"]
    assert tracker._scheduler_monitor_power._stopped  # no sampler thread left behind


class Exploding:
    """A tracker whose every call raises, as with no permission on the counters."""

    def __init__(self, where: str = "start_task") -> None:
        self.where = where

    def start_task(self, name):
        if self.where == "start_task":
            raise PermissionError("/sys/class/powercap: permission denied")
        self._active_task = name

    def stop_task(self, name=None):
        raise RuntimeError("codecarbon broke")


@pytest.mark.parametrize("where, fragment", [("start_task", "PermissionError"), ("stop_task", "codecarbon broke")])
def test_a_failing_tracker_gives_missing_figures_and_never_raises(where, fragment):
    meter = EnergyMeter("DNK", tracker_factory=lambda: Exploding(where))
    ran = []
    with meter.measure("stage") as stage:
        with meter.measure("window") as window:
            ran.append(busy(0.01))
    with meter.measure("later") as later:
        ran.append(busy(0.01))
    meter.close()
    assert len(ran) == 2  # the work ran on
    for reading in (stage, window, later):
        assert not reading.figure.available and fragment in reading.figure.reason
    assert not meter.available and fragment in meter.reason and meter.mode() is None


def test_a_tracker_that_cannot_be_built_and_work_that_raises():
    def refuse():
        raise OSError("no codecarbon here")

    meter = EnergyMeter("DNK", tracker_factory=refuse)
    with pytest.raises(ZeroDivisionError):
        with meter.measure("stage") as stage:
            1 / 0  # noqa: B018
    meter.close()
    assert stage.figure == Figure.missing(stage.figure.reason)
    assert "could not create a tracker" in stage.figure.reason and "no codecarbon here" in stage.figure.reason


def test_ledger_adds_a_resumed_attempt_and_reports_missing_ones(tmp_path):
    path = tmp_path / "bench" / "energy_stages.json"
    first = StageLedger(path, country_iso_code="DNK", resume=False)
    first.add("training", Figure(True, 2e-4, 5e-5, 30.0))
    first.add("slicing_export", Figure(True, 1e-5, 2e-6, 2.0))
    # The process dies; the resumed one reads the file and adds its part.
    second = StageLedger(path, country_iso_code="DNK", resume=True)
    second.add("training", Figure(True, 1e-4, 2.5e-5, 15.0))
    second.add("benchmarking", Figure.missing("codecarbon's stop_task failed"))
    summary = second.summary()
    assert summary["training"] == {"available": True, "energy_kwh": pytest.approx(3e-4),
                                   "emissions_kg_co2": pytest.approx(7.5e-5), "duration_s": 45.0, "attempts": 2}
    assert summary["slicing_export"]["attempts"] == 1
    assert summary["benchmarking"] == {"available": False, "reason": "attempt 1 of 1: codecarbon's stop_task failed"}
    on_disk = json.loads(path.read_text())
    assert len(on_disk["stages"]["training"]["attempts"]) == 2 and on_disk["country_iso_code"] == "DNK"
    # A new run (no resume) starts over; a damaged file on resume is started over too.
    assert StageLedger(path, country_iso_code="DNK", resume=False).summary() == {}
    path.write_text("{not json")
    assert StageLedger(path, country_iso_code="DNK", resume=True).summary() == {}
    assert all(math.isfinite(v) for v in summary["training"].values() if isinstance(v, float))
