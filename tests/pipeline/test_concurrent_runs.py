"""Two `bmrs run` of one flow started at the same instant into one runs directory: each gets a run
directory of its own (atomic ``mkdir``, a suffix when the ids collide) and writes an intact report,
also on a fresh Prefect home whose database both servers would otherwise migrate at once.

The last test runs two real `bmrs run` processes of a 24-wide MLP on synthetic blobs for one epoch
(about 40 s on 2 busy cores); the others run in this process in milliseconds.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import yaml
from pipeline_data import write_blobs
from prefect_env import prefect_environment

from pipeline.config import load_flow
from pipeline.stages import steps

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "data": {"dataset": "npz", "root": "blobs.npz"},
    "model": {"name": "mlp", "hidden_width": 24},
    "train": {"epochs": 1, "finetune_epochs": 0, "lr": 0.01, "criterion": {"name": "l2", "ratio": 0.3}},
    "latency": {"repeats": 2, "warmup": 1, "batch_sizes": [1], "torch_devices": []},
    "energy": {"enabled": False},
}


def test_runs_started_in_the_same_second_with_the_same_random_id_get_separate_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "new_run_id", lambda: "20260101-000000-abcd")  # the worst case: every id the same
    made: list[Path] = []
    start = threading.Barrier(12)

    def make() -> None:
        start.wait()
        made.append(steps.new_unique_dir(tmp_path / "runs" / "tiny"))

    threads = [threading.Thread(target=make) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 12 and all(path.is_dir() for path in made)
    assert sorted(path.name for path in made) == sorted(["20260101-000000-abcd"] + [f"20260101-000000-abcd-{n}" for n in range(2, 13)])


def test_new_run_dir_never_writes_into_a_directory_another_run_took(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "new_run_id", lambda: "20260101-000000-abcd")
    (tmp_path / "flows.yaml").write_text(yaml.safe_dump({"flows": {"tiny": {**TINY, "output": {"runs_dir": str(tmp_path / "runs")}}}}))
    config = load_flow(tmp_path / "flows.yaml", "tiny")
    taken = tmp_path / "runs" / "tiny" / "20260101-000000-abcd"
    taken.mkdir(parents=True)
    (taken / "config.json").write_text("another run's\n")
    run_dir = steps.new_run_dir(config)
    assert run_dir.name == "20260101-000000-abcd-2" and (taken / "config.json").read_text() == "another run's\n"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"


def test_two_runs_started_at_once_both_complete_into_their_own_directories(tmp_path):
    write_blobs(tmp_path / "blobs.npz")
    (tmp_path / "flows.yaml").write_text(yaml.safe_dump({"flows": {"tiny": TINY}}))
    env = prefect_environment(tmp_path)  # a new Prefect home: both servers start on a database not yet made
    command = [sys.executable, "-m", "pipeline.cli", "run", "flows.yaml", "--flow", "tiny", "--no-progress"]
    processes = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]  # neither the server start nor the run stumbled
    run_dirs = sorted((tmp_path / "runs" / "tiny").iterdir())
    assert len(run_dirs) == 2
    printed = sorted(line.rsplit("-> ", 1)[1] for out, _ in outputs for line in out.splitlines() if " -> runs/tiny/" in line)
    assert printed == [str(run_dir.relative_to(tmp_path)) for run_dir in run_dirs]
    for run_dir in run_dirs:
        report = json.loads((run_dir / "report.json").read_text())
        assert Path(report["run_dir"]).name == run_dir.name and report["pruned"]["accuracy"] > 0
        assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
        assert (run_dir / "report.md").read_text().startswith("#")
        assert (run_dir / "model.onnx").is_file() and (run_dir / "dense.onnx").is_file()
