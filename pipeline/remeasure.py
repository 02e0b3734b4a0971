"""Time a finished run's shipped files again: ``bmrs report RUN_DIR ... --remeasure-latency``.

A run's latency is measured once, while the run ends, under whatever else the machine was doing
then: the other runs of a ``--workers`` sweep, a CI job. Re-measuring it later, on a quiet machine
or one like the deployment target, is the latency stage again (``steps.latency_stage``: the run's
own ``dense.onnx`` and ``model.onnx`` through ONNX Runtime, the PyTorch modules they were exported
from, dense and pruned interleaved, under the run's own ``config.json``) and nothing else: the
models, their accuracies and the energy figures stay as they are.

Nothing measured is lost: the previous ``bench/latency.json`` is kept as
``bench/latency-<time>.json`` and ``report.json`` lists every re-measurement under
``latency_remeasured`` (when, and where the figures it replaced are). ``report.md`` is rebuilt by
the caller, ``bmrs report``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bmrs.artifacts import write_json
from pipeline.stages import steps
from pipeline.stages.resume import exclusive_run, read_run_config

REMEASURED_KEY = "latency_remeasured"
_NEEDED = ("report.json", "dense.onnx", "model.onnx")


def check_remeasurable(run_dir: Path) -> None:
    """ValueError naming the run and the fix when ``run_dir`` is not a finished run with its files."""
    missing = [name for name in _NEEDED if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(f"--remeasure-latency: {str(run_dir)!r} lacks {', '.join(missing)}, so it is not a finished run "
                         f"whose files can be timed again; finish it first (`bmrs resume {run_dir}`) or leave it out")  # fmt: skip
    read_run_config(run_dir)  # its own words when config.json is missing or from other code


def remeasure_latency(run_dir: Path) -> dict[str, Any]:
    """Re-run the latency stage of the finished run ``run_dir`` and write its figures into the run's
    ``report.json`` (keeping the previous ones, see the module docstring); returns the new section."""
    run_dir = Path(run_dir)
    check_remeasurable(run_dir)
    config = read_run_config(run_dir)
    data = steps.load_data(config)
    with exclusive_run(run_dir):  # a `bmrs resume` of the same run must not write beside it
        report_path, bench = run_dir / "report.json", run_dir / "bench"
        report = json.loads(report_path.read_text())
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = None
        if (bench / "latency.json").is_file():
            kept = bench / f"latency-{stamp}.json"
            (bench / "latency.json").rename(kept)
        latency = steps.latency_stage(config, data, run_dir)  # writes a new bench/latency.json
        history = list(report.get(REMEASURED_KEY) or [])
        history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "previous_latency_file": None if kept is None else str(kept.relative_to(run_dir)),
                        "previous_latency": report.get("latency")})  # fmt: skip
        report.update(latency=latency, **{REMEASURED_KEY: history})
        write_json(report_path, report)
    return latency
