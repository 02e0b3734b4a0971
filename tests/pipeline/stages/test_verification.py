"""The run checks itself end to end: each shipped ONNX file is compared on real test data with the
PyTorch model whose accuracy is reported, and the report's accuracy is measured on the file itself;
a collapsed model ends `degraded` (exit 3) instead of passing for a success."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prefect_env import prefect_environment

from bmrs.train.checkpoint import read_checkpoint
from pipeline import cli
from pipeline.stages import steps
from pipeline.stages.checks import ChecksConfig, RunFacts, chance_accuracy, evaluate_checks
from pipeline.config import ConfigError, load_flow
from pipeline.stages.resume import read_run_config

REPO = Path(__file__).resolve().parents[3]
FLOWS = REPO / "flows.yaml"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="apt-get install -y dataset-fashion-mnist"
)

FAST = [
    "--no-progress",
    "--set", "model.name=mlp", "--set", "model.hidden_width=24",
    "--set", "train.epochs=1", "--set", "train.finetune_epochs=0", "--set", "train.lr=0.01",
    "--set", "latency.repeats=3", "--set", "latency.warmup=1", "--set", "latency.batch_sizes=[1]",
]  # fmt: skip


def write_npz(path: Path, *, learnable: bool, seed: int = 0) -> Path:
    """4 balanced classes of 8x8 images: Gaussian blobs around one centre per class (``learnable``),
    or pure noise whose labels nothing in the image predicts (no model can beat chance)."""
    generator = np.random.default_rng(seed)
    centres = generator.random((4, 8, 8)) if learnable else np.zeros((4, 8, 8))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 4
        return (centres[labels] + 0.5 * generator.standard_normal((n, 8, 8))).astype(np.float32), labels

    (x, y), (x_test, y_test) = split(480), split(1000)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def bmrs(cwd: Path, *args: str, python: tuple[str, ...] = ("-m", "pipeline.cli")) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python, *args], cwd=cwd, env=prefect_environment(cwd),
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def lines(stream: str, prefix: str) -> list[str]:
    return [line for line in stream.splitlines() if line.startswith(prefix)]


def only_run_dir(cwd: Path) -> Path:
    (run_dir,) = (cwd / "runs").glob("*/*")
    return run_dir


def ort_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy of an ONNX file, computed here without any of the pipeline's code."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = [session.run(["logits"], {"input": images[i : i + 64]})[0] for i in range(0, len(images), 64)]
    logits = np.concatenate(batches)
    return float(np.mean(logits.argmax(axis=1) == labels))


def test_reported_accuracy_is_that_of_the_onnx_file_on_the_whole_test_split(seed_group, monkeypatch):
    run_dir = seed_group.group_dir / "seed0"
    report = json.loads((run_dir / "report.json").read_text())
    monkeypatch.chdir(seed_group.cwd)  # data.root is relative to where the run started
    config = read_run_config(run_dir)
    test = steps.load_data(config).test
    images, labels = test.images.numpy(), test.labels.numpy()

    pruned, dense = report["pruned"], report["dense"]
    assert pruned["accuracy"] == pytest.approx(ort_accuracy(run_dir / "model.onnx", images, labels), abs=1e-12)
    assert dense["accuracy"] == pytest.approx(ort_accuracy(run_dir / "dense.onnx", images, labels), abs=1e-12)
    # The PyTorch models the files stand for: the masked model (also as masked_accuracy, which older
    # readers use) and the dense baseline. An exact export predicts the same classes.
    assert pruned["torch_accuracy"] == pruned["masked_accuracy"] == pytest.approx(pruned["accuracy"], abs=1e-12)
    assert dense["torch_accuracy"] == pytest.approx(dense["accuracy"], abs=1e-12)
    assert 0.0 <= pruned["sliced_accuracy"] <= 1.0

    for parity in (report["onnx"]["parity"], dense["onnx"]["parity"]):
        assert parity["examples"] == min(config.checks.parity_examples, len(labels)) == 200
        assert parity["bound"] == pytest.approx(config.export.tolerance + config.export.relative_tolerance * parity["largest_output"])
        assert 0.0 <= parity["max_abs_diff"] <= parity["bound"] and parity["largest_output"] > 0

    checks = report["checks"]
    assert checks["passed"] and checks["failed"] == [] and checks["warning"] is None
    assert checks["chance_accuracy"] == 0.25  # 4 balanced classes
    assert set(checks["bounds"]) == {"pruned_above_chance", "dense_above_chance", "pruned_drop_from_dense"}
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert json.loads((seed_group.group_dir / "summary.json").read_text())["degraded"] == []


def test_a_model_that_cannot_beat_chance_ends_degraded_with_exit_3(tmp_path):
    write_npz(tmp_path / "noise.npz", learnable=False)
    result = bmrs(tmp_path, "run", str(FLOWS), *FAST, "--set", "data.dataset=npz", "--set", "data.root=noise.npz")
    assert result.returncode == cli.EXIT_DEGRADED == 3, result.stderr
    assert "Traceback" not in result.stderr and not lines(result.stderr, "bmrs: error:"), result.stderr
    (warning,) = lines(result.stderr, "bmrs: warning:")
    assert "the recipe does not train on this data" in warning and "train.lr (0.01)" in warning, warning
    assert "checks.min_accuracy_over_chance (0.05)" in warning

    run_dir = only_run_dir(tmp_path)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "degraded" and f"bmrs: warning: {status['error']}" == warning
    report = json.loads((run_dir / "report.json").read_text())
    checks = report["checks"]
    assert not checks["passed"] and checks["warning"] in warning
    assert {"pruned_above_chance", "dense_above_chance"} <= set(checks["failed"])
    floor = checks["chance_accuracy"] + 0.05
    for name, model in (("pruned_above_chance", "pruned"), ("dense_above_chance", "dense")):
        bound = checks["bounds"][name]
        assert not bound["passed"] and bound["accuracy"] == report[model]["accuracy"] <= bound["min_accuracy"] == floor
    # The ONNX models are still written (verified: they compute what was measured).
    for name in ("model.onnx", "dense.onnx"):
        assert (run_dir / name).is_file()

    # A degraded run is finished: resuming it redoes nothing and says how it ended.
    report_bytes = (run_dir / "report.json").read_bytes()
    again = bmrs(tmp_path, "resume", str(run_dir))
    assert again.returncode == 3 and "already finished, degraded" in again.stdout, again.stderr
    assert lines(again.stderr, "bmrs: warning:") == [warning]
    assert (run_dir / "report.json").read_bytes() == report_bytes


def test_a_learning_rate_of_1e6_is_refused_before_anything_is_written(tmp_path):
    # The case: loss ~1e6, chance accuracy, "99.8% compression", and exit 0 with status completed.
    # Adam moves every weight by about lr per step, so such a rate is refused as a setting; a model that
    # collapses at a legal rate ends degraded (the unlearnable-labels test above).
    result = bmrs(tmp_path, "run", str(FLOWS), "--no-progress", "--set", "train.lr=1e6")
    assert result.returncode == 2, result.stderr
    (error,) = lines(result.stderr, "bmrs: error:")
    assert "train.lr 1e+06 is above 1" in error and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


# What an inexact slice does: the sliced model (and so the file, which matches it exactly) computes
# something other than the masked model. One class's logit moves by 0.5.
BROKEN_SLICER = textwrap.dedent("""
    import sys

    import torch

    from pipeline import cli
    from pipeline.stages import shipping

    real_slice = shipping.slice_model

    def inexact_slice(model, example_input, **options):
        result = real_slice(model, example_input, **options)
        last = [module for module in result.model.modules() if isinstance(module, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.bias[0] += 0.5
        return result

    shipping.slice_model = inexact_slice
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_an_export_that_differs_from_the_masked_model_fails_the_run_and_keeps_training(tmp_path):
    write_npz(tmp_path / "blobs.npz", learnable=True)
    args = ("run", str(FLOWS), *FAST, "--set", "data.dataset=npz", "--set", "data.root=blobs.npz",
            "--set", "baseline.enabled=false")  # fmt: skip
    result = bmrs(tmp_path, *args, python=("-c", BROKEN_SLICER))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (error,) = lines(result.stderr, "bmrs: error:")
    assert "model.onnx against the masked model in evaluation mode" in error and "parity bound" in error, error
    assert "bmrs resume" in error and "model.onnx was removed" in error
    run_dir = only_run_dir(tmp_path)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "parity bound" in status["error"]
    assert not (run_dir / "report.json").exists() and not (run_dir / "model.onnx").exists()
    checkpoint = run_dir / "train" / "checkpoint.pt"
    assert read_checkpoint(checkpoint).meta["finished"]
    trained = checkpoint.read_bytes()

    # Without the defect, resuming redoes only the stages after training.
    resumed = bmrs(tmp_path, "resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.read_bytes() == trained
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert json.loads((run_dir / "report.json").read_text())["onnx"]["parity"]["max_abs_diff"] < 1e-4


def test_a_degraded_seed_is_not_counted_as_succeeded(seed_group, tmp_path, monkeypatch, capsys):
    group_dir = tmp_path / "group"
    shutil.copytree(seed_group.group_dir, group_dir)
    # Seed 1 as a collapsed run leaves it: a report whose checks failed, status degraded.
    report_path = group_dir / "seed1" / "report.json"
    report = json.loads(report_path.read_text())
    warning = "the run is degraded: the l2 model collapsed"
    report["checks"] = {**report["checks"], "passed": False, "failed": ["pruned_above_chance"], "warning": warning}
    report_path.write_text(json.dumps(report))
    steps.set_status(group_dir / "seed1", steps.RunState.DEGRADED, warning)

    monkeypatch.chdir(seed_group.cwd)
    assert cli.main(["resume", str(group_dir)]) == cli.EXIT_DEGRADED
    summary = json.loads((group_dir / "summary.json").read_text())
    assert summary["completed"] == [0] and summary["failed"] == []
    assert summary["degraded"] == [
        {"seed": 1, "run_dir": str(group_dir / "seed1"), "pruned_accuracy": report["pruned"]["accuracy"], "warning": warning}
    ]
    assert summary["metrics"]["pruned.accuracy"]["n"] == 1  # the collapsed seed stays out of the means
    table = (group_dir / "summary.md").read_text()
    assert "1 of 2 seeds completed, 1 degraded" in table and warning in table
    assert f"bmrs: warning: seed 1: {warning}" in capsys.readouterr().err


def test_a_group_prints_each_degraded_seed_warning_once(tmp_path, monkeypatch, capsys):
    # Seed 0 degrades while this process runs it (its own run prints the warning); seed 1 had
    # degraded in an earlier process: only the group's summary can say so.
    from pipeline import seeds

    def fake_execute(config, run_dir, *, resume):
        print(f"bmrs: warning: own {run_dir.name}", file=sys.stderr)
        return cli.EXIT_DEGRADED

    def fake_run_group(config, seed_list, group_dir, execute):
        execute(config, seeds.seed_dir(group_dir, 0), False)
        rows = [{"seed": seed, "run_dir": str(seeds.seed_dir(group_dir, seed)), "warning": f"summary {seed}"} for seed in seed_list]
        return {"completed": [], "failed": [], "degraded": rows}

    monkeypatch.setattr(cli, "_execute", fake_execute)
    monkeypatch.setattr(seeds, "run_group", fake_run_group)
    assert cli._run_group(load_flow(FLOWS, "default", []), [0, 1], tmp_path) == cli.EXIT_DEGRADED
    assert lines(capsys.readouterr().err, "bmrs: warning:") == ["bmrs: warning: own seed0", "bmrs: warning: seed 1: summary 1"]


FACTS = RunFacts(train_examples=1400, steps_per_epoch=44, lr=1.4e-3, method="bmrs_n")


@pytest.mark.parametrize(
    "pruned, dense, best_val, failed, fragments",
    [
        (0.88, 0.89, 0.90, [], []),
        (0.88, None, None, [], []),
        # The from-prior recipe on 1,400 images: validation at chance every epoch, pruned to 6/1/1/1.
        (0.10, 0.728, 0.10, ["pruned_above_chance", "pruned_drop_from_dense"],
         ["the bmrs_n model never learned", "though the dense baseline reaches 72.8%", "44 optimiser steps per epoch",
          "noise.init_mu"]),
        (0.10, 0.85, 0.80, ["pruned_above_chance", "pruned_drop_from_dense"],
         ["pruning collapsed the bmrs_n model", "(85.0% dense)", "prune less or later"]),
        (0.10, None, 0.095, ["pruned_above_chance"], ["never learned", "train.lr (0.0014)", "baseline.enabled=true"]),
        (0.12, None, None, ["pruned_above_chance"], ["the bmrs_n model collapsed", "baseline.enabled=true"]),
        (0.11, 0.12, 0.11, ["pruned_above_chance", "dense_above_chance"], ["does not train on this data", "data's labels"]),
        (0.70, 0.85, 0.86, ["pruned_drop_from_dense"], ["pruning cost 15.0%", "checks.max_accuracy_drop (0.1)"]),
    ],
)  # fmt: skip
def test_bounds_and_the_warning_that_names_cause_and_fix(pruned, dense, best_val, failed, fragments):
    facts = replace(FACTS, best_val_accuracy=best_val)
    checks = evaluate_checks(ChecksConfig(), chance=0.10, pruned=pruned, dense=dense, facts=facts)
    assert checks["failed"] == failed and checks["passed"] == (not failed)
    assert ("pruned_drop_from_dense" in checks["bounds"]) == (dense is not None)
    if failed:
        assert checks["warning"].startswith("the run is degraded: ")
        for fragment in fragments:
            assert fragment in checks["warning"], checks["warning"]
    else:
        assert checks["warning"] is None


def test_chance_is_the_majority_class_rate_and_bounds_are_configurable():
    import torch

    assert chance_accuracy(torch.tensor([0, 0, 0, 1, 2, 2, 2, 2])) == 0.5
    # A drop bound of null compares with nothing; the chance margin is what the user sets.
    checks = evaluate_checks(ChecksConfig(min_accuracy_over_chance=0.3, max_accuracy_drop=None),
                             chance=0.5, pruned=0.75, dense=0.99, facts=FACTS)  # fmt: skip
    assert checks["failed"] == ["pruned_above_chance"] and "pruned_drop_from_dense" not in checks["bounds"]
    assert load_flow(FLOWS, "default", ["checks.max_accuracy_drop=null"]).checks.max_accuracy_drop is None


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("checks.max_accuracy_drop=1.5", "max_accuracy_drop must be an accuracy difference from 0 to 1"),
        ("checks.min_accuracy_over_chance=-0.1", "min_accuracy_over_chance must be"),
        ("checks.parity_examples=0", "parity_examples must be an integer >= 1"),
        ("checks.bound=1", "unknown setting"),
    ],
)
def test_bad_check_settings_are_refused_at_load(setting, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_flow(FLOWS, "default", [setting])
