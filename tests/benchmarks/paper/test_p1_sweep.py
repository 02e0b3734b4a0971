from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.paper import p1_sweep, runner
from benchmarks.paper.p1_sweep import check_p1, main
from benchmarks.paper.runner import (
    FLOWS,
    Failure,
    Task,
    criterion_overrides,
    paper_config,
    run_all,
)
from bmrs.train import KLWeighting

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"Fashion-MNIST is not installed at {FMNIST}")
TINY = ["--model", "mlp", "--seeds", "0", "--epochs", "1", "--finetune-epochs", "1", "--set", "data.max_train_examples=256"]


def test_set_values_are_typed_by_the_flow_schema_on_top_of_the_paper_budget():
    sets = ["train.kl_weighting=layer_mean", "train.lr=1e-3", "train.kl_scale=2", "train.seed=3", "noise.init_mu=-15"]
    config = paper_config(FLOWS, "mlp", "fashion_mnist", [*sets, *criterion_overrides("bmrs_u", {"p1": 4})])
    assert (config.train.kl_weighting, config.train.lr, config.train.seed, config.noise.init_mu) == (KLWeighting.LAYER_MEAN, 1e-3, 3, -15.0)
    assert isinstance(config.train.kl_scale, float) and config.train.kl_scale == 2.0
    assert config.train.batch_size == 128 and config.model.options() == {"hidden_width": 150, "hidden_layers": 1}
    assert config.train.criterion.p1 == 4.0


def test_run_all_in_worker_processes_keeps_results_when_one_fails():
    tasks = [Task("four", math.sqrt, (4.0,)), Task("negative", math.sqrt, (-1.0,)), Task("nine", math.sqrt, (9.0,))]
    results, failures = run_all(tasks, jobs=2)
    assert results == {"four": 2.0, "nine": 3.0}
    assert failures == [Failure("negative", "ValueError: math domain error")]
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        run_all(tasks, jobs=0)
    with pytest.raises(ValueError, match="used twice"):
        run_all([tasks[0], tasks[0]], jobs=1)


def test_p1_values_are_checked_before_training(capsys):
    assert check_p1([4, 8.5]) == [4.0, 8.5]
    with pytest.raises(ValueError, match="listed twice"):
        check_p1([4, 4.0])
    with pytest.raises(ValueError, match="no p1 values"):
        check_p1([])
    # Each value is checked by BMRS_U itself under the run's noise prior, when its config is loaded.
    for arguments, message in ((["--p1", "23"], "0 <= p1 < p2"), (["--p1", "4", "--set", "noise.log_a=-10"], "noise.log_a")):
        with pytest.raises(SystemExit) as stopped:
            main(["--model", "mlp", *arguments, "--out", "/nonexistent/never-written"])
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and err.count("\n") == 1 and "train.criterion: criterion 'bmrs_u'" in err and message in err


@needs_fmnist
def test_sweep_writes_summary_reuses_cache_and_reports_failures(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BMRS_COMPILE", "0")
    out = tmp_path / "sweep"
    arguments = [*TINY, "--p1", "4", "8", "--set", "train.kl_weighting=layer_mean", "--out", str(out)]
    assert main(arguments) == 0
    raw = json.loads((out / "raw" / "fashion_mnist-mlp-p1_8-seed0.json").read_text())
    assert raw["spec"]["train"]["criterion"] == "bmrs_u" and raw["spec"]["train"]["criterion_settings"]["p1"] == 8.0
    assert raw["spec"]["train"]["kl_weighting"] == "layer_mean" and raw["spec"]["train"]["batch_size"] == 128
    report = json.loads((out / "fashion_mnist-mlp.json").read_text())
    assert [row["p1"] for row in report["rows"]] == [4.0, 8.0]
    assert report["command"] == "python -m benchmarks.paper.p1_sweep " + " ".join(arguments)
    row = report["rows"][1]
    assert row["accuracy_pct"] == {"mean": pytest.approx(100.0 * raw["test"]["accuracy"]), "std": 0.0}
    assert row["compression_pct"]["mean"] == pytest.approx(100.0 * raw["test"]["compression"])
    for name in ("fashion_mnist-mlp-accuracy.png", "fashion_mnist-mlp-compression.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "| 8 | 1 |" in (out / "fashion_mnist-mlp.md").read_text()
    capsys.readouterr()

    def broken(config):
        raise RuntimeError(f"no training in this test (p1={config.train.criterion.p1})")

    monkeypatch.setattr(p1_sweep, "train_and_measure", broken)
    # p1 = 4 comes from its cached file; p1 = 6 has none, fails, and is reported without losing it.
    assert main([*TINY, "--p1", "4", "6", "--set", "train.kl_weighting=layer_mean", "--out", str(out)]) == 1
    assert "FAILED p1=6 seed=0: RuntimeError: no training in this test (p1=6.0)" in capsys.readouterr().err
    partial = json.loads((out / "fashion_mnist-mlp.json").read_text())
    assert partial["rows"][0]["accuracy_pct"] == report["rows"][0]["accuracy_pct"]
    assert partial["rows"][1]["accuracy_pct"] is None and "| 6 | 0 | n/a | n/a |" in (out / "fashion_mnist-mlp.md").read_text()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--p1", "4", "4"], "listed twice"),
        (["--p1", "30"], "p1 < p2"),
        (["--set", "train.criterion={name: bmrs_u, p1: 2}"], "the sweep trains bmrs_u"),
        (["--set", "train.finetune_epochs=2"], "use --finetune-epochs"),
        (["--set", "noise.bogus=1"], "mlp_fmnist_paper.noise.bogus: unknown setting; valid settings of"),
        (["--set", "train.batch_size=2.5"], "mlp_fmnist_paper.train.batch_size: expected an integer, got 2.5"),
        (["--set", "noise={init_mu: -20}"], "set one setting at a time"),
        (["--finetune-epochs", "-1"], "finetune_epochs must be >= 0"),
    ],
)
def test_bad_input_is_refused_before_training_in_one_line(arguments, message, capsys, monkeypatch):
    monkeypatch.setattr(runner, "load_data", lambda config: pytest.fail("the data was loaded for bad input"))
    with pytest.raises(SystemExit) as stopped:
        main(["--model", "mlp", *arguments, "--out", "/nonexistent/never-written"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("p1_sweep: error: ") and err.count("\n") == 1 and message in err
