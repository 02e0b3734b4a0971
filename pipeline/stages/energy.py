"""The flow's energy and CO2 figures (``FlowConfig.energy``): one codecarbon tracker per run.

Stages measured as a whole (``energy.track_stages``): ``training`` and ``fine_tuning`` (the pruned
method's two phases, told apart by ``train_``'s ``on_phase`` hook, not by apportioning time),
``baseline_training`` (the dense reference, its fine-tuning epochs included), ``sparsify`` (BMR on
individual weights with its SVI fit and fine-tuning rounds, when ``sparsify.enabled``), ``slicing_export``
(fold, slice, ONNX export and parity checks of both models) and ``benchmarking`` (latency and the
inference energy). Each stage's figure goes to ``bench/energy_stages.json`` as soon as it ends; a
resumed run adds its part to the stage (``attempts``). The inference stage measures dense and
pruned per 1,000 examples in alternating windows (``benchmarks.energy_pair``) into
``bench/energy.json``.

A tracker that fails never fails the run: the figures it could not take say why they are missing.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.codecarbon_offline import json_safe
from benchmarks.energy_pair import DENSE, PRUNED, EnergyRunConfig, measure_paired_energy
from benchmarks.stage_energy import EnergyMeter, StageLedger
from bmrs.artifacts import write_json
from bmrs.data import DataBundle
from pipeline.config import FlowConfig

TRAINING, FINE_TUNING, BASELINE_TRAINING = "training", "fine_tuning", "baseline_training"
SPARSIFY, SLICING_EXPORT, BENCHMARKING = "sparsify", "slicing_export", "benchmarking"
STAGES = (TRAINING, FINE_TUNING, SPARSIFY, BASELINE_TRAINING, SLICING_EXPORT, BENCHMARKING)
STAGES_FILE = Path("bench") / "energy_stages.json"
DETAIL_FILE = Path("bench") / "energy.json"
_ROW_KEYS = ("j_per_1k", "g_co2_per_1k", "seconds", "examples")


class RunEnergy:
    """The energy measurement of one run directory; a no-op when ``config.enabled`` is False.

    ``tracker_factory``: builds the codecarbon tracker (tests pass a failing one); default: offline."""

    def __init__(self, config: EnergyRunConfig, run_dir: Path, *, resume: bool,
                 tracker_factory: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.enabled = config.enabled
        self.meter = EnergyMeter(config.country_iso_code, tracker_factory=tracker_factory) if self.enabled else None
        self.ledger = (StageLedger(Path(run_dir) / STAGES_FILE, country_iso_code=config.country_iso_code, resume=resume)
                       if self.enabled and config.track_stages else None)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure the body as stage ``name`` (one attempt; also when the body raises)."""
        if self.ledger is None:
            yield
            return
        try:
            with self.meter.measure(name) as reading:
                yield
        finally:
            self.ledger.add(name, reading.figure, self.meter.mode())

    @contextlib.contextmanager
    def training_phases(self, *, baseline: bool) -> Iterator[Callable[[str], None] | None]:
        """``train_``'s ``on_phase`` for a training stage: the pruned method's phases go to
        ``training`` and ``fine_tuning``; the dense reference's both to ``baseline_training``.
        None when stages are not tracked. The last phase's stage ends with the block."""
        if self.ledger is None:
            yield None
            return
        names = {"train": BASELINE_TRAINING, "finetune": BASELINE_TRAINING} if baseline else {"train": TRAINING, "finetune": FINE_TUNING}
        current = contextlib.ExitStack()
        running: list[str] = []

        def on_phase(phase: str) -> None:
            name = names[phase]
            if running == [name]:
                return  # the dense reference's fine-tuning continues its one stage
            current.close()
            running[:] = [name]
            current.enter_context(self.stage(name))

        try:
            yield on_phase
        finally:
            current.close()

    def report(self, inference: dict[str, Any] | None) -> dict[str, Any] | None:
        """The report's ``energy`` section; None when energy is not measured."""
        if not self.enabled:
            return None
        mode = self.meter.mode()
        summary = self.ledger.summary() if self.ledger is not None else {}
        if mode is not None:
            note = mode.note()
        else:
            note = f"no energy was measured: {self.meter.reason or 'nothing ran under the tracker'}"
        return json_safe({
            "available": self.meter.available,
            "reason": self.meter.reason,
            "country_iso_code": self.config.country_iso_code,
            "mode": None if mode is None else mode.to_dict(),
            "note": note,
            "stages": {name: summary[name] for name in STAGES if name in summary},
            "inference": _report_inference(inference),
        })

    def close(self) -> None:
        if self.meter is not None:
            self.meter.close()


@contextlib.contextmanager
def run_energy(config: FlowConfig, run_dir: Path, *, resume: bool,
               tracker_factory: Callable[[], Any] | None = None) -> Iterator[RunEnergy]:
    """The run's ``RunEnergy``, its tracker's threads and log given back at the end."""
    energy = RunEnergy(config.energy, run_dir, resume=resume, tracker_factory=tracker_factory)
    try:
        yield energy
    finally:
        energy.close()


def inference_energy_stage(config: FlowConfig, data: DataBundle, run_dir: Path, energy: RunEnergy) -> dict[str, Any]:
    """Energy per 1,000 examples of ``dense.onnx`` and ``model.onnx`` on ONNX Runtime's CPU provider,
    with the latency section's threads, in alternating windows. Writes ``bench/energy.json`` (every
    window, the measurement mode, codecarbon's warnings). Returns the full detail; a failure of the
    measurement is its ``reason``, never the run's end."""
    if energy.meter is None or not energy.meter.available:
        reason = "energy is not measured" if energy.meter is None else f"not measured: {energy.meter.reason}"
        detail: dict[str, Any] = {"available": False, "reason": reason}
    else:
        try:
            detail = measure_paired_energy(
                {DENSE: run_dir / "dense.onnx", PRUNED: run_dir / "model.onnx"}, data.input_shape, config.energy,
                energy.meter, intra_op_threads=config.latency.intra_op_threads, seed=config.latency.seed,
            )
        except Exception as error:  # noqa: BLE001  (a side measurement: the models are already written)
            detail = {"available": False, "reason": f"the inference energy measurement failed: {type(error).__name__}: {error}"}
    mode = None if energy.meter is None else energy.meter.mode()
    write_json(run_dir / DETAIL_FILE, json_safe({
        **detail,
        "country_iso_code": config.energy.country_iso_code,
        "mode": None if mode is None else mode.to_dict(),
        "note": None if mode is None else mode.note(),
        "codecarbon_warnings": [] if energy.meter is None else list(energy.meter.warnings),
    }))
    return detail


def _report_inference(detail: dict[str, Any] | None) -> dict[str, Any]:
    """The report's ``inference``: provider, threads and per batch size the per-1,000 figures and ratio."""
    if detail is None:
        return {"available": False, "reason": "the inference energy stage did not run"}
    if not detail.get("available"):
        return {"available": False, "reason": str(detail.get("reason") or "not measured")}
    return {
        "available": True,
        "provider": detail["provider"],
        "threads": detail["threads"],
        "by_batch": {
            batch: {
                **{name: {key: row[name][key] for key in _ROW_KEYS} for name in (DENSE, PRUNED)},
                **{key: row[key] for key in ("ratio_pruned_dense", "ratio_min", "ratio_max", "rounds")},
            }
            for batch, row in detail["by_batch"].items()
        },
    }
