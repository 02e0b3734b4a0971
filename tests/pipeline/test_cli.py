"""`bmrs run` and `bmrs resume` end to end on real Fashion-MNIST (a subset), and exit code 2 for bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from prefect_env import prefect_environment

from bmrs.train.checkpoint import read_checkpoint
from pipeline.cli import main
from pipeline.config import ConfigError, FlowConfig, load_flow
from pipeline.config import flow_config_from_dict
from pipeline.stages.resume import LOCK_FILE, exclusive_run

REPO = Path(__file__).resolve().parents[2]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="apt-get install -y dataset-fashion-mnist"
)


def environment(tmp_path: Path) -> dict[str, str]:
    """A private Prefect home and cache; the noise kernels compiled as in production."""
    env = prefect_environment(tmp_path)
    env.pop("BMRS_COMPILE")
    return env


def bmrs(tmp_path: Path, *args: str, cwd: Path | None = None, command: str = "run") -> subprocess.CompletedProcess:
    """``bmrs run flows.yaml ARGS`` (or ``bmrs resume ARGS``) in ``cwd`` (default ``tmp_path``)."""
    head = ["run", str(REPO / "flows.yaml")] if command == "run" else [command]
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *head, *args], cwd=cwd or tmp_path,
                          env=environment(tmp_path), capture_output=True, text=True, timeout=600)  # fmt: skip


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
    result = bmrs(tmp_path, "--flow", "default", *QUICK, "--set", "train.criterion={name: l2, ratio: 0.3}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dirs = list((tmp_path / "runs" / "default").iterdir())
    assert len(run_dirs) == 1 and str(run_dirs[0].relative_to(tmp_path)) in result.stdout
    report = json.loads((run_dirs[0] / "report.json").read_text())
    assert report["dataset"] == "fashion_mnist" and report["model"] == "lenet5" and report["method"] == "l2"
    dense, pruned = report["dense"], report["pruned"]
    for section in (dense, pruned):
        assert section["params"] > 0 and section["flops"] > 0 and 0.3 < section["accuracy"] <= 1.0
        assert 0.0 < section["nll"] and 0.0 <= section["ece"] <= 1.0
    # l2 at ratio 0.3 removes round(0.3 * width) structures of every noise layer, for good; the
    # default flow spares the input layer (model.noise_on_first_layer: false), so conv1 keeps 6.
    assert pruned["widths"] == {"features.0": 6, "features.3": 11, "classifier.1": 84, "classifier.3": 59, "classifier.5": 10}
    assert pruned["params"] < dense["params"] and pruned["flops"] < dense["flops"]
    assert pruned["compression"] == pytest.approx(1 - pruned["params"] / dense["params"])
    assert pruned["accuracy"] == pytest.approx(pruned["masked_accuracy"], abs=2e-4)
    onnx_path = Path(report["onnx"]["path"])
    onnx_path = onnx_path if onnx_path.is_absolute() else tmp_path / onnx_path
    onnx.checker.check_model(str(onnx_path))
    assert 0 <= report["onnx"]["max_abs_diff"] <= 1e-4
    assert report["onnx"]["largest_output"] > 0  # the scale the parity bound was judged against
    # ORT and PyTorch eager (the modules the files came from), each row with its throughput.
    assert {"CPUExecutionProvider", "torch-cpu"} <= set(report["latency"])
    for runtime in ("CPUExecutionProvider", "torch-cpu"):
        for batch in ("1", "16"):
            row = report["latency"][runtime][batch]
            assert row["dense_p50_ms"] > 0 and row["pruned_p50_ms"] > 0
            for name in ("dense", "pruned"):
                assert row[f"{name}_throughput_per_s"] == pytest.approx(int(batch) / (row[f"{name}_p50_ms"] / 1e3))
    bench = json.loads((run_dirs[0] / "bench" / "latency.json").read_text())
    assert bench["by_provider"].keys() == {"CPUExecutionProvider"} and "torch-cpu" in bench["torch_eager"]["by_provider"]
    assert bench["torch_eager"]["torch"]["intra_op_threads"] >= 1
    assert bench["torch_eager"]["models"]["pruned"].startswith("LeNet5")
    assert json.loads((run_dirs[0] / "status.json").read_text())["state"] == "completed"
    history = json.loads((run_dirs[0] / "train" / "history.json").read_text())
    assert [h["phase"] for h in history] == ["train", "train", "finetune"]
    # The report a person reads, its key line in the terminal, and the run's energy per stage.
    markdown = (run_dirs[0] / "report.md").read_text()
    assert "## Results" in markdown and "| dense reference |" in markdown and "| l2 (ratio=0.3) |" in markdown
    assert f"l2 (ratio=0.3): {100 * pruned['compression']:.1f}% of parameters removed" in result.stdout
    energy = report["energy"]
    assert set(energy["stages"]) == {"training", "fine_tuning", "baseline_training", "slicing_export", "benchmarking"}
    assert energy["note"] and (energy["available"] or energy["reason"])


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--flow", "nope"], "unknown flow 'nope'"),
        (["--set", "model.name=resnet"], "unknown model 'resnet'"),
        (["--set", "train.criterion=magic"], "unknown pruning criterion 'magic'"),
        (["--set", "train.epochz=1"], "unknown setting"),
        (["--set", "data.root=/no/such/dir"], "apt-get install -y dataset-fashion-mnist"),
        # Layer paths are resolved against the model, which needs the data's shape.
        pytest.param(["--set", "noise.start_on=[featurez]"], "start_on names 'featurez', which holds no noise layer", marks=needs_fmnist),
        pytest.param(["--set", "train.prune_start_by_layer={classifierz: 2}"], "prune_start_by_layer names 'classifierz'", marks=needs_fmnist),
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
    # A KL weight of 1e38 overflows the loss to inf at the first step (a learning rate large enough
    # to do that is refused as a setting).
    result = bmrs(tmp_path, *QUICK, "--set", "train.epochs=3", "--set", "train.kl_weighting=layer_mean",
                  "--set", "train.kl_scale=1.0e+38")
    assert result.returncode == 2
    assert "train.kl_scale" in result.stderr and "loss became" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("bmrs: error:")]
    assert len(errors) == 1
    (run_dir,) = (tmp_path / "runs" / "default").iterdir()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    assert not (run_dir / "report.json").exists()


def start_and_kill_after_first_checkpoint(tmp_path: Path, cwd: Path, *args: str) -> Path:
    """Start ``bmrs run`` and SIGKILL it (and the Prefect server it started) once its first
    training checkpoint exists: a crash at an epoch boundary, as abrupt as a power cut."""
    cwd.mkdir()
    command = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "flows.yaml"), *args]
    process = subprocess.Popen(command, cwd=cwd, env=environment(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while not list(cwd.glob("runs/*/*/train/checkpoint.pt")):
            if process.poll() is not None:
                pytest.fail(f"bmrs run ended (exit {process.returncode}) before its first checkpoint: {process.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within 300 s")
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # its own process group: this run and its Prefect server only
        process.wait()
        process.stderr.close()
    (run_dir,) = cwd.glob("runs/*/*")
    return run_dir


# Gradient pruning: which structures go depends on every step's gradients. No baseline, fewer
# examples: each of the three processes below pays about 10 s of start-up (imports, Prefect server).
RESUMABLE = [*QUICK, "--set", "data.max_train_examples=1500", "--set", "baseline.enabled=false",
             "--set", "train.criterion={name: grad, ratio: 0.3}"]  # fmt: skip


@needs_fmnist
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    run_dir = start_and_kill_after_first_checkpoint(tmp_path, tmp_path / "killed", *RESUMABLE)
    interrupted = read_checkpoint(run_dir / "train" / "checkpoint.pt").meta
    assert 1 <= interrupted["epoch"] < 3 and not interrupted["finished"]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"  # nobody could record the crash

    resumed = bmrs(tmp_path, str(run_dir), command="resume")
    assert resumed.returncode == 0, resumed.stderr
    assert str(run_dir) in resumed.stdout and "report.json" in resumed.stdout
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"

    (tmp_path / "straight").mkdir()
    straight = bmrs(tmp_path, *RESUMABLE, cwd=tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    (straight_dir,) = (tmp_path / "straight").glob("runs/*/*")

    reports = [json.loads((d / "report.json").read_text()) for d in (run_dir, straight_dir)]
    for report in reports:
        report["pruned"].pop("onnx", None)
    assert reports[0]["pruned"] == reports[1]["pruned"]  # params, FLOPs, accuracy, NLL, ECE, widths
    assert reports[0]["pruned"]["compression"] > 0.2
    assert reports[0]["dense"]["params"] == reports[1]["dense"]["params"]
    checkpoints = [read_checkpoint(d / "train" / "checkpoint.pt") for d in (run_dir, straight_dir)]
    for key, tensor in checkpoints[1].state_dict.items():
        assert torch.equal(checkpoints[0].state_dict[key], tensor), key
    histories = [json.loads((d / "train" / "history.json").read_text()) for d in (run_dir, straight_dir)]
    for history in histories:
        for record in history:
            record.pop("seconds")
    assert histories[0] == histories[1] and len(histories[0]) == 3

    # A completed run is reported as such, and nothing is redone.
    report_bytes = (run_dir / "report.json").read_bytes()
    again = bmrs(tmp_path, str(run_dir), command="resume")
    assert again.returncode == 0 and "already completed" in again.stdout, again.stderr
    assert (run_dir / "report.json").read_bytes() == report_bytes


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bmrs: error: "), lines
    return lines[0]


def test_resume_refuses_a_bad_run_dir_with_one_line_and_exit_2(tmp_path, capsys):
    assert main(["resume", str(tmp_path / "absent")]) == 2
    assert "does not exist" in one_error_line(capsys)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["resume", str(empty)]) == 2
    assert "no config.json" in one_error_line(capsys)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert main(["resume", str(broken)]) == 2
    assert "not readable JSON" in one_error_line(capsys)

    (broken / "config.json").write_text(json.dumps({**FlowConfig(name="default").to_dict(), "train": {"epochz": 3}}))
    assert main(["resume", str(broken)]) == 2
    assert "train.epochz: unknown setting" in one_error_line(capsys)

    run_dir = tmp_path / "corrupt"
    (run_dir / "train").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(FlowConfig(name="default").to_dict()))
    (run_dir / "status.json").write_text('{"state": "running"}')
    (run_dir / "train" / "checkpoint.pt").write_bytes(b"\x00" * 64)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main(["resume", str(run_dir)]) == 2
    line = one_error_line(capsys)
    assert "checkpoint.pt" in line and "corrupt" in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before, "nothing changed or deleted"


@needs_fmnist
def test_a_run_dir_another_process_works_in_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pipeline.cli._prefect_environment", lambda: None)  # refused before Prefect is needed
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(FlowConfig(name="default").to_dict()))
    (run_dir / "status.json").write_text('{"state": "running"}')
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; lock = open(sys.argv[1], 'w'); fcntl.flock(lock, fcntl.LOCK_EX); "
         "lock.write('4242'); lock.flush(); print('held', flush=True); time.sleep(120)", str(run_dir / LOCK_FILE)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["resume", str(run_dir)]) == 2
        line = one_error_line(capsys)
        assert "another bmrs process (pid 4242)" in line and f"bmrs resume {run_dir}" in line
        assert json.loads((run_dir / "status.json").read_text()) == {"state": "running"}
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE, "config.json", "status.json"]
    finally:
        holder.kill()  # as abrupt as kill -9: the operating system releases the lock
        holder.wait()
        holder.stdout.close()
    with exclusive_run(run_dir):
        assert (run_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_run_config_round_trips_through_config_json():
    config = load_flow(REPO / "flows.yaml", "default", ["train.criterion=null", "latency.batch_sizes=[1, 64]",
                                                       "model.name=mlp"])  # fmt: skip
    assert flow_config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    named = load_flow(REPO / "flows.yaml", "mlp_fmnist_bmrs_u8")
    assert flow_config_from_dict(json.loads(json.dumps(named.to_dict()))) == named
    with pytest.raises(ConfigError, match="name"):
        flow_config_from_dict({"train": {}})
