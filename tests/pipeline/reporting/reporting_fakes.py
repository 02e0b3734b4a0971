"""Run directories for the reporting tests, built from a real finished run of the default flow with
the method, seed, figures and an energy section changed as each test needs.

``real_run/`` holds that run's report.json, config.json, status.json, train/history.json and
bench/latency.json as ``bmrs run`` wrote them (runs/default/20261129-232906-169a; runs/ itself is
not in git); its models and checkpoints are left out, and its curve.png is a stand-in file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

REAL_RUN = Path(__file__).resolve().parent / "real_run"
CO2_G_PER_J = 4e-5  # a made-up grid intensity; only the tests' arithmetic depends on it

_KEEP = ("report.json", "config.json", "status.json", "train/history.json", "bench/latency.json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stage(kwh: float) -> dict[str, Any]:
    return {"available": True, "energy_kwh": kwh, "emissions_kg_co2": kwh * 0.15, "duration_s": 100.0, "attempts": 1}


def energy_section(dense_j: float, pruned_j: float, *, estimated: bool = True, batch: int = 256) -> dict[str, Any]:
    """The ``energy`` section in the form the energy helper writes it."""
    ratio = pruned_j / dense_j
    return {
        "available": True, "reason": None, "country_iso_code": "DNK",
        "mode": {"cpu_method": "cpu_load" if estimated else "intel_rapl", "cpu_measured": not estimated,
                 "cpu_tdp_w": 225.0 if estimated else None, "estimated": estimated,
                 "summary": "CPU: cpu_load (estimated, TDP 225.0 W); RAM: RAM model; GPU: not tracked; scope: machine"},
        # As benchmarks.codecarbon_offline.MeasurementMode.note() writes it.
        "note": ("estimated: codecarbon found no RAPL counter and multiplied CPU load by an assumed TDP of 225.0 W "
                 "(RAM RAM model; scope: the whole machine's draw, other processes included); compare models "
                 "measured the same way, not absolute values."),
        "stages": {"training": stage(0.002), "fine_tuning": stage(0.0005), "baseline_training": stage(0.0015),
                   "slicing_export": {"available": False, "reason": "shorter than one power sample"},
                   "benchmarking": stage(0.0001)},
        "inference": {"available": True, "provider": "CPUExecutionProvider", "threads": 2, "by_batch": {str(batch): {
            "dense": {"j_per_1k": dense_j, "g_co2_per_1k": dense_j * CO2_G_PER_J, "seconds": 5.0, "examples": 25600},
            "pruned": {"j_per_1k": pruned_j, "g_co2_per_1k": pruned_j * CO2_G_PER_J, "seconds": 3.0, "examples": 25600},
            "ratio_pruned_dense": ratio, "ratio_min": ratio - 0.02, "ratio_max": ratio + 0.02, "rounds": 3}}},
    }  # fmt: skip


def make_run(
    run_dir: Path,
    *,
    method: str = "bmrs_n",
    seed: int = 0,
    accuracy: float = 0.876,
    compression: float = 0.621,
    speedup: float = 2.9,
    settings: dict[str, Any] | None = None,
    energy: Any = "measured",  # "measured": an energy section; None: disabled; "missing": an older report
    pruned_j: float | None = None,
    degraded: str | None = None,  # the warning of a failed check
    edit=None,  # a last change to the report dict
) -> Path:
    """A finished run in ``run_dir``. The pruned model's p50 at batch 256 is the real dense p50 / ``speedup``."""
    run_dir.mkdir(parents=True)
    for name in _KEEP:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL_RUN / name, run_dir / name)
    (run_dir / "train" / "curve.png").write_bytes(PNG_MAGIC)  # the report links it; nothing reads it
    report = json.loads((run_dir / "report.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    report.update(method=method, run_dir=str(run_dir))
    report["settings"]["criterion_settings"] = dict(settings or {})
    report["pruned"].update(accuracy=accuracy, compression=compression)
    row = report["latency"]["CPUExecutionProvider"]["256"]
    row.update(speedup_p50=speedup, pruned_p50_ms=row["dense_p50_ms"] / speedup)
    if energy == "measured":
        report["energy"] = energy_section(1.2, 1.2 / speedup if pruned_j is None else pruned_j)
    elif energy is None:
        report["energy"] = None
    if degraded is not None:
        report["checks"].update(passed=False, warning=degraded)
    if edit is not None:
        edit(report)
    config["train"]["seed"] = seed
    (run_dir / "report.json").write_text(json.dumps(report))
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "status.json").write_text(json.dumps({"state": "degraded" if degraded else "completed", "error": degraded}))
    return run_dir


def make_failed_run(run_dir: Path, *, seed: int, error: str) -> Path:
    """A run that stopped before its report: config.json and a failed status.json only."""
    run_dir.mkdir(parents=True)
    config = json.loads((REAL_RUN / "config.json").read_text())
    config["train"]["seed"] = seed
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "status.json").write_text(json.dumps({"state": "failed", "error": error}))
    return run_dir


def make_group(group_dir: Path, seeds: list[int]) -> Path:
    """A seed group as pipeline.seeds lays it out: group.json and seed<k>/ run directories."""
    group_dir.mkdir(parents=True)
    config = json.loads((REAL_RUN / "config.json").read_text())
    (group_dir / "group.json").write_text(json.dumps({"flow": "default", "seeds": seeds, "config": config}))
    return group_dir


def strict_json(path: Path) -> Any:
    """Parse as strict JSON: NaN or Infinity in the file fails the test."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)
