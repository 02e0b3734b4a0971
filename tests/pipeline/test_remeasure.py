"""``bmrs report RUN_DIR --remeasure-latency``: a finished run's files timed again, nothing lost."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def _copy_of_seed(seed_group, tmp_path: Path) -> Path:
    # The shared run stays as other tests read it; the copy is timed again.
    run_dir = tmp_path / "run"
    shutil.copytree(seed_group.group_dir / "seed0", run_dir)
    return run_dir


def test_remeasure_latency_rewrites_the_latency_and_keeps_what_it_replaced(seed_group, tmp_path):
    run_dir = _copy_of_seed(seed_group, tmp_path)
    before = json.loads((run_dir / "report.json").read_text())
    old_file = (run_dir / "bench" / "latency.json").read_text()
    result = seed_group.bmrs("report", str(run_dir), "--remeasure-latency")
    assert result.returncode == 0, result.stderr
    assert f"timing {run_dir} again (1/1)" in result.stdout
    after = json.loads((run_dir / "report.json").read_text())
    # Only the latency changed: the models and their accuracies are the run's.
    assert {key: value for key, value in after.items() if key not in ("latency", "latency_remeasured")} == \
        {key: value for key, value in before.items() if key != "latency"}
    assert set(after["latency"]) == set(before["latency"]) and after["latency"] != before["latency"]
    (entry,) = after["latency_remeasured"]
    assert entry["previous_latency"] == before["latency"]
    assert (run_dir / entry["previous_latency_file"]).read_text() == old_file
    assert json.loads((run_dir / "bench" / "latency.json").read_text())["by_provider"]
    assert "Re-measured 1 time(s)" in (run_dir / "report.md").read_text()


def test_remeasure_latency_refuses_a_run_without_its_files_and_writes_nothing(seed_group, tmp_path):
    run_dir = _copy_of_seed(seed_group, tmp_path)
    (run_dir / "model.onnx").unlink()
    before = (run_dir / "report.json").read_text()
    result = seed_group.bmrs("report", str(run_dir), "--remeasure-latency")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "lacks model.onnx" in result.stderr and "Traceback" not in result.stderr
    assert (run_dir / "report.json").read_text() == before
    assert list((run_dir / "bench").glob("latency-*.json")) == []
