"""The flow's post-training stage (paper section 5): accuracy-vs-compression curves per criterion.

One noisy model is trained without pruning into ``<run>/post_training/`` (checkpointed and resumed
exactly as the ``train`` stage), then every criterion in ``post_training.criteria`` prunes a copy of
it progressively (``bmrs.train.post_training.post_training_prune``). Each curve is written to
``<criterion>.json`` as soon as it is finished, so a resumed run only computes the missing ones;
``curves.png`` plots them all.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.plots import Series, line_plot
from bmrs.artifacts import write_json
from bmrs.criteria import criterion_name
from bmrs.data import DataBundle
from bmrs.train.post_training import post_training_prune
from export.slicing import parameter_compression
from pipeline.stages import steps
from pipeline.config import FlowConfig

FOLDER = "post_training"


def post_training_stage(config: FlowConfig, data: DataBundle, run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train the unpruned noisy model, write one curve per criterion and their plot; returns the
    report's ``post_training`` summary (per criterion: the BMRS stop point and the knee)."""
    section = config.post_training
    folder = Path(run_dir) / FOLDER
    checkpoint, history = steps.train_into(
        folder, config, data, section.train_config(config.train), noisy=True, resume=resume
    )
    model = steps.restore(config, data, checkpoint, noisy=True)
    sample = steps.example_input(data)
    curves: dict[str, dict[str, Any]] = {}
    for criterion in section.criteria:
        name = criterion_name(criterion)
        path = folder / f"{name}.json"
        finished = _read_curve(path, name) if resume else None
        if finished is None:
            curve = post_training_prune(
                model, data, section.for_criterion(criterion, config.train),
                compression=lambda m: parameter_compression(m, sample),
            )  # fmt: skip
            finished = curve.to_dict()
            write_json(path, finished)
        curves[name] = finished
    plot = plot_curves(folder / "curves.png", curves, title=f"{config.name}: post-training pruning")
    return {
        "epochs": len(history),
        "unpruned_val_accuracy": history[-1]["val_accuracy"],
        "checkpoint": str(checkpoint),
        "plot": str(plot),
        "criteria": {name: _summary(curve, folder / f"{name}.json") for name, curve in curves.items()},
    }


def _read_curve(path: Path, criterion: str) -> dict[str, Any] | None:
    """A curve an earlier, interrupted attempt finished; None when there is none to reuse.
    ``write_json`` is atomic, so an existing file is complete unless edited by hand."""
    if not path.is_file():
        return None
    try:
        curve = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(curve, dict) or curve.get("criterion") != criterion or not curve.get("points"):
        return None
    return curve


def _point(curve: dict[str, Any], index: int | None) -> dict[str, Any] | None:
    if index is None:
        return None
    point = curve["points"][index]
    return {"index": index, "removed": point["removed"], "compression": point["compression"], "accuracy": point["accuracy"]}


def _summary(curve: dict[str, Any], path: Path) -> dict[str, Any]:
    return {
        "bmrs_stop": _point(curve, curve["bmrs_stop_index"]),
        "knee": _point(curve, curve["knee_index"]),
        "unpruned_accuracy": curve["points"][0]["accuracy"],
        "max_compression": curve["points"][-1]["compression"],
        "path": str(path),
    }


def plot_curves(path: Path, curves: dict[str, dict[str, Any]], *, title: str) -> Path:
    """Test accuracy against compression (both in percent), one line per criterion, with its knee
    and (BMRS criteria) the point where BMRS would stop marked."""
    series = []
    for name, curve in curves.items():
        points = curve["points"]
        marks = {
            mark: index
            for mark, index in (("knee", curve["knee_index"]), ("bmrs_stop", curve["bmrs_stop_index"]))
            if index is not None
        }
        series.append(Series(
            name,
            [100.0 * p["compression"] for p in points],
            [None if p["accuracy"] is None else 100.0 * p["accuracy"] for p in points],
            marks=marks,
        ))  # fmt: skip
    return line_plot(path, series, xlabel="compression (% of parameters removed)", ylabel="test accuracy (%)", title=title)

