"""Bad settings found before anything is written (issue 10, point 6): criteria, paths, user
models, the export opset, flow names, flows.yaml itself, a refused resume; and a killed `bmrs`
leaves no Prefect server behind.

Every refusal is one ``bmrs: error:`` line and exit code 2, with no run directory created: the
checks run through ``pipeline.cli.main`` in this process, with ``_execute`` replaced by a failure,
so a bad setting that slipped through to a run fails the test instead of training.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_data import write_blobs
from prefect_env import prefect_environment

from bmrs.train.checkpoint import CheckpointError, read_checkpoint
from pipeline.stages import steps
from pipeline.cli import main
from pipeline.config import ConfigError, load_flow

REPO = Path(__file__).resolve().parents[3]
FLOWS = REPO / "flows.yaml"
# A tiny MLP on synthetic blobs: loading and building it takes well under a second.
TINY = [
    "--no-progress",
    "--set", "data.dataset=npz", "--set", "data.root=blobs.npz",
    "--set", "model.name=mlp", "--set", "model.hidden_width=8",
    "--set", "train.epochs=1", "--set", "train.finetune_epochs=0", "--set", "baseline.enabled=false",
]  # fmt: skip


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """``tmp_path`` as the current directory, holding blobs.npz; a run that starts fails the test."""
    write_blobs(tmp_path / "blobs.npz", train=64, test=32)
    monkeypatch.chdir(tmp_path)

    def no_run(*args, **kwargs):
        raise AssertionError("a run was started for input that should have been refused")

    monkeypatch.setattr("pipeline.cli._execute", no_run)
    return tmp_path


def refused(capsys, *argv: str) -> str:
    """Run ``bmrs ARGV``; it must exit 2 with one ``bmrs: error:`` line and leave no runs/ folder."""
    assert main(list(argv)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bmrs: error: "), lines
    assert not Path("runs").exists()
    return lines[0]


def refused_run(capsys, *args: str, flows: Path = FLOWS) -> str:
    return refused(capsys, "run", str(flows), *TINY, *args)


# --- criterion settings: checked at load, naming the setting and what it may be ----------------


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train.criterion={name: bmrs_u, p1: abc}"], ["p1", "'abc'", "number"]),
        (["train.criterion={name: bmrs_u, p1: -3}"], ["p1", "-3", "0 <= p1 < p2"]),
        (["train.criterion={name: bmrs_u, p1: 30}"], ["p1", "0 <= p1 < p2"]),
        # 2^-40 lies below the prior's lower bound e^-20: the reduced prior would not fit inside it.
        (["train.criterion={name: bmrs_u, p2: 40}"], ["p2", "noise.log_a"]),
        (["train.criterion={name: bmrs_n, sigma_p: 0}"], ["sigma_p", "> 0"]),
        (["train.criterion={name: bmrs_n, mu_p: [1]}"], ["mu_p", "null"]),
        (["train.criterion={name: snr, threshold: -1}"], ["threshold", ">= 0"]),
        (["train.criterion={name: l2, ratio: half}"], ["ratio", "[0, 1)"]),
        (["post_training.enabled=true", "post_training.criteria=[{name: bmrs_u, p1: abc}]"], ["post_training", "p1", "'abc'"]),
        (["post_training.enabled=true", "post_training.criteria=[{name: bmrs_u, p1: -3}]"], ["post_training", "p1"]),
        # The prior check runs on post-training criteria too.
        (["post_training.enabled=true", "post_training.criteria=[{name: bmrs_u, p2: 40}]"], ["post_training.criteria[0]", "p2", "noise.log_a"]),
        (["train.criterion={name: bmrs_u, p1: 4}", "noise.log_b=-4"], ["p1 = 4", "noise.log_b"]),
    ],
)
def test_criterion_settings_are_checked_at_load(workdir, capsys, args, fragments):
    sets = [item for arg in args for item in ("--set", arg)]
    line = refused_run(capsys, *sets)
    for fragment in fragments:
        assert fragment in line, line


def test_good_criterion_settings_still_load():
    from bmrs.criteria import BMRSLogNormal, BMRSLogUniform

    config = load_flow(FLOWS, "default", ["train.criterion={name: bmrs_u, p1: 4, p2: 20}"])
    assert config.train.criterion == BMRSLogUniform(p1=4, p2=20)
    # YAML reads 1e-6 (no dot) as a string; a criterion takes it as the number it spells.
    criterion = load_flow(FLOWS, "default", ["train.criterion={name: bmrs_n, sigma_p: 1e-6}"]).train.criterion
    assert criterion == BMRSLogNormal(sigma_p=1e-6)


# --- paths ------------------------------------------------------------------------------------


def test_runs_dir_that_is_a_file_is_refused(workdir, capsys):
    (workdir / "a_file").write_text("not a folder")
    line = refused_run(capsys, "--set", f"output.runs_dir={workdir / 'a_file'}")
    assert "output.runs_dir" in line and "not a directory" in line
    line = refused_run(capsys, "--set", f"output.runs_dir={workdir / 'a_file' / 'below'}")
    assert "output.runs_dir" in line and "a_file" in line and "not a directory" in line
    assert (workdir / "a_file").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_runs_dir_that_cannot_be_written_is_refused(workdir, capsys):
    locked = workdir / "locked"
    locked.mkdir(mode=0o500)
    line = refused_run(capsys, "--set", f"output.runs_dir={locked / 'runs'}")
    assert "output.runs_dir" in line and "cannot" in line


# --- user models ------------------------------------------------------------------------------

FACTORIES = '''
import torch

def returns_a_dict(input_shape, num_classes):
    return {"layers": 3}

def raises(input_shape, num_classes):
    raise RuntimeError("no GPU here")
'''


@pytest.mark.parametrize(
    "spec, fragments",
    [
        ("math:sqrt", ["'math:sqrt'", "input_shape", "num_classes"]),
        ("builtins:dict", ["'builtins:dict'", "returned a dict", "torch.nn.Module"]),
        ("factories:returns_a_dict", ["returned a dict", "torch.nn.Module"]),
        ("factories:raises", ["'factories:raises'", "RuntimeError: no GPU here"]),
    ],
)
def test_user_model_factory_failures_are_one_line(workdir, capsys, spec, fragments):
    (workdir / "factories.py").write_text(FACTORIES)
    line = refused_run(capsys, "--set", f"model.name={spec}", "--set", "model.hidden_width=null")
    for fragment in fragments:
        assert fragment in line, line


# --- latency runtimes the machine lacks: refused before training ---------------------------------


def test_a_runtime_this_machine_lacks_is_refused_before_training(workdir, capsys):
    import onnxruntime
    import torch

    if torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    line = refused_run(capsys, "--set", "latency.torch_devices=[cuda]")
    assert "torch-cuda" in line and "--set latency.torch_devices=[cpu]" in line, line
    line = refused_run(capsys, "--set", "latency.providers=[CUDAExecutionProvider]")
    assert "CUDAExecutionProvider" in line and "onnxruntime-gpu" in line, line
    assert not (workdir / "runs").exists()  # nothing written


def test_training_on_a_gpu_this_machine_lacks_is_refused_before_training(workdir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = refused_run(capsys, "--set", "train.device=cuda")
    assert "train.device" in line and "'cuda'" in line and "'cpu'" in line, line
    assert not (workdir / "runs").exists()
    line = refused_run(capsys, "--set", "train.device=gpu0")
    assert "train.device 'gpu0' is not a device name" in line, line


# --- export opset -----------------------------------------------------------------------------


def test_opset_beyond_what_the_exporter_supports_is_refused_at_load(workdir, capsys):
    import onnx

    newest = onnx.defs.onnx_opset_version()
    line = refused_run(capsys, "--set", "export.opset=1000")
    assert "export" in line and "1000" in line and f"18 to {newest}" in line
    refused_run(capsys, "--set", f"export.opset={newest + 1}")
    assert load_flow(FLOWS, "default", [f"export.opset={newest}"]).export.opset == newest


# --- flows.yaml and flow names ----------------------------------------------------------------


def test_flows_file_that_is_not_utf8_is_named(workdir, capsys):
    path = workdir / "flows.yaml"
    path.write_bytes(b"flows:\n  default:\n    train: {epochs: 1}  # caf\xe9\n")
    line = refused(capsys, "run", str(path))
    assert str(path) in line and "UTF-8" in line


@pytest.mark.parametrize("name", ["..", ".", "../../x", "a/b", "", "x y"])
def test_flow_names_must_be_one_safe_path_component(workdir, capsys, name):
    path = workdir / "flows.yaml"
    path.write_text(json.dumps({"flows": {name: {}, "default": {}}}))
    line = refused(capsys, "run", str(path), "--flow", name)
    assert repr(name) in line and "[A-Za-z0-9_.-]" in line


def test_a_bad_flow_name_is_refused_even_when_another_flow_runs(workdir, capsys):
    path = workdir / "flows.yaml"
    path.write_text(json.dumps({"flows": {"..": {}, "default": {}}}))
    assert "'..'" in refused(capsys, "run", str(path), "--flow", "default")


@pytest.mark.parametrize(
    "text, key, line_number",
    [
        ("flows:\n  default:\n    train: {epochs: 1}\n    train: {epochs: 2}\n", "train", 4),
        ("flows:\n  default:\n    train:\n      epochs: 1\n      epochs: 2\n", "epochs", 5),
        ("flows:\n  default: {}\n  default: {}\n", "default", 3),
        ("flows: {}\nflows:\n  default: {}\n", "flows", 2),
    ],
)
def test_duplicate_keys_are_refused_with_key_and_line(workdir, capsys, text, key, line_number):
    path = workdir / "flows.yaml"
    path.write_text(text)
    line = refused(capsys, "run", str(path))
    assert f"duplicate key {key!r}" in line and f"line {line_number}" in line and str(path) in line, line


def test_duplicate_keys_in_a_set_value_are_refused(workdir, capsys):
    line = refused_run(capsys, "--set", "train.criterion={name: bmrs_n, margin: 1, margin: 2}")
    assert "duplicate key 'margin'" in line


@pytest.mark.parametrize("where", ["--set", "flows.yaml"])
def test_name_is_not_a_setting(workdir, capsys, where):
    if where == "--set":
        line = refused_run(capsys, "--set", "name=other")
    else:
        path = workdir / "flows.yaml"
        path.write_text("flows:\n  default:\n    name: other\n")
        line = refused(capsys, "run", str(path))
    assert "name" in line and "--flow" in line


def test_name_is_not_listed_among_the_settings():
    with pytest.raises(ConfigError) as error:
        load_flow(FLOWS, "default", ["nonsense.x=1"])
    assert "'name'" not in str(error.value) and "'train'" in str(error.value)


# --- a refused resume changes nothing ---------------------------------------------------------


def _interrupted_run(workdir: Path, *overrides: str) -> tuple[Path, object]:
    """A run directory whose train/ checkpoint was written under ``overrides`` (no Prefect)."""
    sets = [TINY[i + 1] for i in range(len(TINY)) if TINY[i] == "--set"] + ["train.progress=false", *overrides]
    config = load_flow(FLOWS, "default", sets)
    run_dir = steps.start_run_dir(config, workdir / "runs" / "default" / "r1")
    data = steps.load_data(config)
    steps.train_stage(config, data, run_dir, baseline=False)
    return run_dir, config


def test_refused_resume_leaves_every_file_byte_identical(workdir, capsys, monkeypatch):
    run_dir, written = _interrupted_run(workdir, "train.lr=0.01")
    changed = load_flow(FLOWS, "default", [TINY[i + 1] for i in range(len(TINY)) if TINY[i] == "--set"]
                        + ["train.progress=false", "train.lr=0.02"])  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps(changed.to_dict()))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    # The real _execute, with the flow's training stage run directly (no Prefect in this process).
    monkeypatch.undo()
    monkeypatch.chdir(workdir)
    monkeypatch.setattr("pipeline.cli._prefect_environment", lambda: None)
    monkeypatch.setattr(
        "pipeline.flow.compress_flow",
        lambda config, run_dir, resume: steps.train_stage(config, steps.load_data(config), run_dir, baseline=False, resume=resume),
    )
    assert main(["resume", str(run_dir)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "different settings" in lines[0] and "train.lr" in lines[0], lines
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_resume_check_accepts_the_settings_a_checkpoint_was_written_with(workdir):
    from dataclasses import replace

    from pipeline.stages.resume import check_resumable

    run_dir, config = _interrupted_run(workdir, "baseline.enabled=true")
    steps.train_stage(config, steps.load_data(config), run_dir, baseline=True)
    check_resumable(config, run_dir, steps.load_data(config))  # train/ and baseline/ both fit
    with pytest.raises(CheckpointError, match=r"train/checkpoint.pt.*different settings.*batch_size"):
        check_resumable(replace(config, train=replace(config.train, batch_size=7)), run_dir, steps.load_data(config))


# --- checkpoint errors give our advice, not the library's -------------------------------------


def test_checkpoint_errors_do_not_pass_on_torch_advice(tmp_path):
    import numpy as np
    import torch

    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {}, "meta": "{}", "x": np.zeros(3)}, path)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "corrupt or not a bmrs checkpoint" in message and "numpy" in message
    for advice in ("weights_only", "safe_globals", "allowlist", "trust", "Please"):
        assert advice not in message, message
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert "weights_only" not in str(error.value) and "corrupt" in str(error.value)
    # A pickle torch did not write: torch warns, asking for an issue to be filed; only our line is shown.
    import pickle
    import warnings

    path.write_bytes(pickle.dumps({"weights": [1, 2]}, protocol=4))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(CheckpointError, match="corrupt"):
        warnings.simplefilter("always")
        read_checkpoint(path)
    assert not caught, [str(w.message) for w in caught]


# --- a killed bmrs leaves no Prefect server behind --------------------------------------------


def _start_training(tmp_path: Path) -> tuple[subprocess.Popen, list]:
    """``bmrs run`` on blobs in its own session, once its first epoch is checkpointed; returns the
    process and every process of its tree at that moment (the Prefect server among them). Its
    stderr goes to ``tmp_path/stderr.txt``."""
    psutil = pytest.importorskip("psutil")
    write_blobs(tmp_path / "blobs.npz", train=480, test=64)
    command = [sys.executable, "-m", "pipeline.cli", "run", str(FLOWS), *TINY, "--set", "train.epochs=500"]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, env=prefect_environment(tmp_path), stdout=subprocess.DEVNULL,
                                   stderr=stderr, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("runs/*/*/train/checkpoint.pt")):
        if process.poll() is not None:
            pytest.fail(f"bmrs run ended (exit {process.returncode}) before its first checkpoint: {(tmp_path / 'stderr.txt').read_text()}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("no checkpoint within 300 s")
        time.sleep(0.05)
    tree = psutil.Process(process.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(child.cmdline()) for child in tree), "no Prefect server was started"
    return process, tree


def _survivors(tree: list, seconds: float = 10.0) -> list:
    """The processes of ``tree`` still running after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    alive = tree
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if p.is_running() and p.status() != "zombie"]
    return alive


def _kill(processes: list) -> None:
    for process in processes:
        try:
            process.kill()
        except Exception:  # noqa: BLE001  (gone meanwhile)
            pass


def test_sigkill_of_bmrs_leaves_no_prefect_server(tmp_path):
    process, tree = _start_training(tmp_path)
    survivors = []
    try:
        os.kill(process.pid, signal.SIGKILL)  # the bmrs process alone, as the OOM killer does
        process.wait(timeout=30)
        survivors = _survivors(tree)
        assert not survivors, [" ".join(p.cmdline()) for p in survivors]
    finally:
        _kill(survivors)


def test_sigterm_ends_the_run_cleanly(tmp_path):
    process, tree = _start_training(tmp_path)
    survivors = []
    try:
        os.kill(process.pid, signal.SIGTERM)  # as a scheduler does at the end of a job's time
        process.wait(timeout=120)
        stderr = (tmp_path / "stderr.txt").read_text()
        survivors = _survivors(tree)
        assert not survivors, [" ".join(p.cmdline()) for p in survivors]
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert "Traceback" not in stderr, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("bmrs: error:")]
        assert len(errors) == 1 and "SIGTERM" in errors[0] and "bmrs resume" in errors[0], stderr
        (run_dir,) = tmp_path.glob("runs/*/*")
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "failed" and "SIGTERM" in status["error"]
    finally:
        _kill(survivors)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
