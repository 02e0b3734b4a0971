"""`bmrs run` end to end on real Fashion-MNIST (a subset), and its exit code 2 for bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

REPO = Path(__file__).resolve().parents[2]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="apt-get install -y dataset-fashion-mnist"
)


def bmrs(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        BMRS_CACHE_DIR=str(tmp_path / "cache"),
    )
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "flows.yaml"), *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


QUICK = [
    "--no-progress",
    "--set", "data.max_train_examples=3000",
    "--set", "train.epochs=2",
    "--set", "train.finetune_epochs=1",
    "--set", "latency.repeats=5",
    "--set", "latency.warmup=2",
    "--set", "latency.batch_sizes=[1, 16]",
]  # fmt: skip


@needs_fmnist
def test_default_flow_writes_a_complete_report(tmp_path):
    result = bmrs(tmp_path, "--flow", "default", *QUICK, "--set", "train.criterion=l2",
                  "--set", "train.criterion_settings={ratio: 0.3}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dirs = list((tmp_path / "runs" / "default").iterdir())
    assert len(run_dirs) == 1 and str(run_dirs[0].relative_to(tmp_path)) in result.stdout
    report = json.loads((run_dirs[0] / "report.json").read_text())
    assert report["dataset"] == "fashion_mnist" and report["model"] == "lenet5" and report["method"] == "l2"
    dense, pruned = report["dense"], report["pruned"]
    for section in (dense, pruned):
        assert section["params"] > 0 and section["flops"] > 0 and 0.3 < section["accuracy"] <= 1.0
        assert 0.0 < section["nll"] and 0.0 <= section["ece"] <= 1.0
    # l2 at ratio 0.3 removes round(0.3 * width) structures of every noise layer, for good.
    assert pruned["widths"] == {"features.0": 4, "features.3": 11, "classifier.1": 84, "classifier.3": 59, "classifier.5": 10}
    assert pruned["params"] < dense["params"] and pruned["flops"] < dense["flops"]
    assert pruned["compression"] == pytest.approx(1 - pruned["params"] / dense["params"])
    assert pruned["accuracy"] == pytest.approx(pruned["masked_accuracy"], abs=2e-4)
    onnx_path = Path(report["onnx"]["path"])
    onnx_path = onnx_path if onnx_path.is_absolute() else tmp_path / onnx_path
    onnx.checker.check_model(str(onnx_path))
    assert 0 <= report["onnx"]["max_abs_diff"] <= 1e-4
    for batch in ("1", "16"):
        row = report["latency"]["CPUExecutionProvider"][batch]
        assert row["dense_p50_ms"] > 0 and row["pruned_p50_ms"] > 0
    assert json.loads((run_dirs[0] / "status.json").read_text())["state"] == "completed"
    history = json.loads((run_dirs[0] / "train" / "history.json").read_text())
    assert [h["phase"] for h in history] == ["train", "train", "finetune"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--flow", "nope"], "unknown flow 'nope'"),
        (["--set", "model.name=resnet"], "unknown model 'resnet'"),
        (["--set", "train.criterion=magic"], "unknown method 'magic'"),
        (["--set", "train.epochz=1"], "unknown setting"),
        (["--set", "data.root=/no/such/dir"], "apt-get install -y dataset-fashion-mnist"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, args, fragment):
    result = bmrs(tmp_path, *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()


@needs_fmnist
def test_nan_loss_fails_clearly_and_keeps_finished_epochs(tmp_path):
    result = bmrs(tmp_path, *QUICK, "--set", "train.epochs=3", "--set", "train.lr=1.0e+30")
    assert result.returncode == 2
    assert "train.lr" in result.stderr and "loss became" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("bmrs: error:")]
    assert len(errors) == 1
    (run_dir,) = (tmp_path / "runs" / "default").iterdir()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    assert not (run_dir / "report.json").exists()
