"""`bmrs run --seeds`: one run per train.seed, summarised as mean +- std; failed seeds reported."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bmrs.train.metrics import mean_std
from pipeline import cli
from pipeline.stages import steps
from pipeline.seeds import check_seeds, write_summary

REPO_FLOWS = Path(__file__).resolve().parents[2] / "flows.yaml"


def reports(group_dir, seeds):
    return [json.loads((group_dir / f"seed{seed}" / "report.json").read_text()) for seed in seeds]


def test_summary_is_the_mean_and_std_over_seed_reports(seed_group):
    group_dir = seed_group.group_dir
    assert str(group_dir.relative_to(seed_group.cwd)) in seed_group.result.stdout
    configs = [json.loads((group_dir / f"seed{seed}" / "config.json").read_text()) for seed in (0, 1)]
    assert [c["train"]["seed"] for c in configs] == [0, 1]
    assert configs[0]["data"] == configs[1]["data"]  # the split stays fixed; only training varies

    summary = json.loads((group_dir / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["completed"] == [0, 1] and summary["failed"] == []
    runs = reports(group_dir, (0, 1))
    # What a seed reproduces on: the torch build and the CPU kernels' instruction set.
    assert {(run["torch_version"], run["cpu_capability"]) for run in runs} == {(torch.__version__, torch.backends.cpu.get_cpu_capability())}
    metrics = summary["metrics"]
    for section, key in [("pruned", "accuracy"), ("dense", "accuracy"), ("pruned", "nll"), ("dense", "ece"),
                         ("pruned", "compression"), ("pruned", "params"), ("dense", "flops"),
                         ("pruned", "structured_compression"), ("pruned", "weight_sparsity"), ("pruned", "total_removed")]:  # fmt: skip
        values = [run[section][key] for run in runs]
        mean, std = mean_std(values)
        assert metrics[f"{section}.{key}"] == {"mean": pytest.approx(mean), "std": pytest.approx(std), "n": 2, "values": values}
    speedups = [run["latency"]["CPUExecutionProvider"]["1"]["speedup_p50"] for run in runs]
    assert metrics["latency.CPUExecutionProvider.1.speedup_p50"]["mean"] == pytest.approx(mean_std(speedups)[0])
    # A seed whose curve has no knee contributes nothing; the others are summarised, none invented.
    knees = [run["post_training"]["criteria"]["l2"]["knee"] for run in runs]
    knee_accuracies = [knee["accuracy"] for knee in knees if knee is not None]
    entry = metrics.get("post_training.criteria.l2.knee.accuracy")
    if knee_accuracies:
        assert entry["values"] == knee_accuracies and entry["n"] == len(knee_accuracies)
    else:
        assert entry is None
    # Different seeds train different models: the spread is real, not zero.
    assert metrics["pruned.nll"]["std"] > 0
    table = (group_dir / "summary.md").read_text()
    assert "2 of 2 seeds completed" in table
    nll = metrics["pruned.nll"]
    assert f"| pruned.nll | {nll['mean']:.4f} ± {nll['std']:.4f} | 2 |" in table


def test_resuming_one_seed_directory_refreshes_the_summary(seed_group):
    group_dir, seed_dir = seed_group.group_dir, seed_group.group_dir / "seed1"
    (seed_dir / "report.json").unlink()
    steps.set_status(seed_dir, "failed", "interrupted by the test")
    assert write_summary(group_dir)["failed"] == [
        {"seed": 1, "run_dir": str(seed_dir), "state": "failed", "error": "interrupted by the test"}
    ]
    assert "seed 1 (failed" in (group_dir / "summary.md").read_text()

    resumed = seed_group.bmrs("resume", str(seed_dir.relative_to(seed_group.cwd)))
    assert resumed.returncode == 0, resumed.stderr
    assert (seed_dir / "report.json").is_file()
    summary = json.loads((group_dir / "summary.json").read_text())
    assert summary["completed"] == [0, 1] and summary["failed"] == []


def test_a_crashed_seed_is_reported_without_losing_the_others(seed_group, tmp_path, monkeypatch, capsys):
    group_dir = tmp_path / "group"
    shutil.copytree(seed_group.group_dir, group_dir)
    group = json.loads((group_dir / "group.json").read_text())
    (group_dir / "group.json").write_text(json.dumps({**group, "seeds": [0, 1, 7]}))
    finished = {seed: (group_dir / f"seed{seed}" / "report.json").read_bytes() for seed in (0, 1)}
    started = []

    def crash(config, run_dir, *, resume):
        started.append((config.train.seed, run_dir.name, resume))
        steps.set_status(run_dir, "failed", "RuntimeError: simulated crash")  # as cli._execute records one
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(cli, "_execute", crash)
    monkeypatch.chdir(seed_group.cwd)  # data.root is relative to where the run started
    assert cli.main(["resume", str(group_dir)]) == cli.EXIT_SEED_FAILED
    assert started == [(7, "seed7", False)]  # finished seeds are not rerun
    assert {seed: (group_dir / f"seed{seed}" / "report.json").read_bytes() for seed in (0, 1)} == finished
    summary = json.loads((group_dir / "summary.json").read_text())
    assert summary["completed"] == [0, 1] and summary["metrics"]["pruned.accuracy"]["n"] == 2
    assert summary["failed"] == [
        {"seed": 7, "run_dir": str(group_dir / "seed7"), "state": "failed", "error": "RuntimeError: simulated crash"}
    ]
    assert "seed 7 (failed" in (group_dir / "summary.md").read_text()
    err = capsys.readouterr().err
    assert "seed 7 failed" in err and f"bmrs resume {group_dir}" in err


def test_seed_list_is_checked_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", str(REPO_FLOWS), "--seeds", "0", "1", "0"]) == cli.EXIT_BAD_INPUT
    assert "seed 0 twice" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert check_seeds([2, 0]) == [2, 0]
    with pytest.raises(ValueError, match="at least one seed"):
        check_seeds([])
