"""The post-training stage of a real run: curves per criterion, their plot, the report's summary,
and a resume that keeps finished curves and recomputes missing ones identically."""
from __future__ import annotations

import json
import shutil

import matplotlib.image
import numpy as np

from bmrs.train.checkpoint import read_checkpoint
from pipeline.stages import steps
from pipeline.stages.post_training import post_training_stage
from pipeline.stages.resume import read_run_config

CRITERIA = ("bmrs_n", "l2")


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _channels = matplotlib.image.imread(path).shape
    assert height > 100 and width > 100


def farthest_from_chord(xs, ys):
    """Index of the point farthest from the line through the first and last points, both axes
    scaled to [0, 1]; None for fewer than three points or a straight curve."""
    if len(xs) < 3:
        return None
    scaled = []
    for values in (np.asarray(xs, float), np.asarray(ys, float)):
        span = values.max() - values.min()
        scaled.append((values - values.min()) / (span if span > 0 else 1.0))
    points = np.stack(scaled, axis=1)
    chord = points[-1] - points[0]
    if not np.hypot(*chord):
        return None
    offsets = points - points[0]
    distances = np.abs(chord[0] * offsets[:, 1] - chord[1] * offsets[:, 0]) / np.hypot(*chord)
    best = int(np.argmax(distances))
    return best if distances[best] > 1e-12 else None


def point_summary(points, index):
    return {"index": index, "removed": points[index]["removed"], "compression": points[index]["compression"],
            "accuracy": points[index]["accuracy"]}  # fmt: skip


def test_curves_plot_and_report_summary(seed_group):
    run_dir = seed_group.group_dir / "seed0"
    folder = run_dir / "post_training"
    report = json.loads((run_dir / "report.json").read_text())
    summary = report["post_training"]
    assert set(summary["criteria"]) == set(CRITERIA)
    for criterion in CRITERIA:
        curve = json.loads((folder / f"{criterion}.json").read_text())
        points = curve["points"]
        assert curve["criterion"] == criterion and len(points) >= 3  # unpruned + post_training.steps=2
        assert points[0]["removed"] == 0 and points[0]["compression"] == 0.0
        removed = [p["removed"] for p in points]
        compression = [p["compression"] for p in points]
        assert removed == sorted(set(removed)) and compression == sorted(compression) and compression[-1] > 0.5
        assert all(0.0 <= p["accuracy"] <= 1.0 and p["nll"] > 0 for p in points)
        row = summary["criteria"][criterion]
        assert row["path"] == str((folder / f"{criterion}.json").relative_to(seed_group.cwd))
        # The knee, found here from the points alone (numpy, not the library's code).
        knee = farthest_from_chord([p["compression"] for p in points], [p["accuracy"] for p in points])
        assert row["knee"] == (None if knee is None else point_summary(points, knee))
        # BMRS's own stop: a measured point that removes no more than the dF >= 0 boundary allows
        # (fewer where a layer's last structure is protected), reported as measured.
        if curve["bmrs_boundary"] is None:
            assert row["bmrs_stop"] is None
        else:
            stop = row["bmrs_stop"]
            assert 0 <= stop["removed"] <= curve["bmrs_boundary"]
            assert stop == point_summary(points, stop["index"])
        assert row["unpruned_accuracy"] == points[0]["accuracy"] and row["max_compression"] == compression[-1]
    # Only BMRS criteria have a point where BMRS itself would stop.
    assert json.loads((folder / "l2.json").read_text())["bmrs_boundary"] is None
    assert summary["criteria"]["l2"]["bmrs_stop"] is None
    assert isinstance(json.loads((folder / "bmrs_n.json").read_text())["bmrs_boundary"], int)
    assert summary["criteria"]["bmrs_n"]["bmrs_stop"] is not None
    assert_png(folder / "curves.png")
    assert summary["plot"] == str((folder / "curves.png").relative_to(seed_group.cwd))
    assert_png(run_dir / "train" / "curve.png")
    assert report["training_curve"] == str((run_dir / "train" / "curve.png").relative_to(seed_group.cwd))

    # The curves start from a noisy model trained without pruning, whatever train.criterion is.
    history = json.loads((folder / "history.json").read_text())
    assert [h["phase"] for h in history] == ["train"] and history[0]["compression"] == 0.0
    assert summary["epochs"] == 1 and summary["unpruned_val_accuracy"] == history[-1]["val_accuracy"]
    assert list(history[0]["alive"].values()) == [24]  # the one 24-wide hidden layer, nothing removed
    meta = read_checkpoint(folder / "checkpoint.pt").meta
    assert meta["finished"] and meta["fingerprint"]["train"]["criterion"] is None


def test_resume_keeps_finished_curves_and_recomputes_missing_ones(seed_group, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(seed_group.group_dir / "seed0", run_dir)
    folder = run_dir / "post_training"
    original_l2 = json.loads((folder / "l2.json").read_text())
    checkpoint_bytes = (folder / "checkpoint.pt").read_bytes()
    # An interruption after bmrs_n's curve: l2's and the plot are missing. The marker shows whether
    # the finished curve is reused rather than recomputed.
    finished = json.loads((folder / "bmrs_n.json").read_text())
    (folder / "bmrs_n.json").write_text(json.dumps({**finished, "marker": "kept"}))
    (folder / "l2.json").unlink()
    (folder / "curves.png").unlink()

    monkeypatch.chdir(seed_group.cwd)  # data.root is relative to where the run started
    monkeypatch.setenv("BMRS_COMPILE", seed_group.env["BMRS_COMPILE"])  # the run's kernels, for equal results
    config = read_run_config(run_dir)
    summary = post_training_stage(config, steps.load_data(config), run_dir, resume=True)

    assert json.loads((folder / "bmrs_n.json").read_text())["marker"] == "kept"
    assert json.loads((folder / "l2.json").read_text()) == original_l2  # same model, same seeds
    assert (folder / "checkpoint.pt").read_bytes() == checkpoint_bytes  # finished training only loaded
    assert_png(folder / "curves.png")
    knee = original_l2["knee_index"]
    expected_knee = None if knee is None else {"index": knee, **{k: original_l2["points"][knee][k] for k in ("removed", "compression", "accuracy")}}
    assert summary["criteria"]["l2"]["knee"] == expected_knee
    assert summary["criteria"]["bmrs_n"]["bmrs_stop"]["index"] == finished["bmrs_stop_index"]
