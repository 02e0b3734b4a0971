from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.paper import p1_sweep
from benchmarks.paper.p1_sweep import check_p1, main
from benchmarks.paper.runner import Failure, Task, paper_spec, parse_overrides, run_all
from bmrs.models import NoiseInit
from bmrs.train import KLWeighting, TrainConfig

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"Fashion-MNIST is not installed at {FMNIST}")
TINY = ["--model", "mlp", "--seeds", "0", "--epochs", "1", "--finetune-epochs", "1", "--max-train-examples", "256"]


def test_overrides_are_typed_by_their_field():
    parsed = parse_overrides(
        ["kl_weighting=layer_mean", "lr=1e-3", "kl_scale=2", "batch_size=64", "criterion_settings={p1: 4}"],
        TrainConfig,
        flag="--train",
    )
    assert parsed == {"kl_weighting": KLWeighting.LAYER_MEAN, "lr": 1e-3, "kl_scale": 2.0, "batch_size": 64,
                      "criterion_settings": {"p1": 4}}  # fmt: skip
    assert isinstance(parsed["kl_scale"], float)
    assert parse_overrides(["log_a=-15"], NoiseInit, flag="--noise") == {"log_a": -15.0}
    spec = paper_spec("mlp", "fashion_mnist", train={"seed": 3, **parsed}, noise={"log_a": -15.0})
    assert (spec.train.batch_size, spec.train.lr, spec.train.seed, spec.noise.log_a) == (64, 1e-3, 3, -15.0)
    assert spec.model_options == {"hidden_width": 150, "hidden_layers": 1}


@pytest.mark.parametrize(
    "pair, error, message",
    [
        ("epochs", ValueError, "is not KEY=VALUE"),
        ("bogus=1", ValueError, "valid keys are ["),
        ("kl_weighting=tempered", ValueError, "not one of ['elbo', 'layer_mean']"),
        ("batch_size=2.5", TypeError, "must be an integer"),
        ("lr=fast", TypeError, "must be a number"),
        ("criterion=snr", ValueError, "cannot be overridden here: fixed by test"),
    ],
)
def test_bad_overrides_name_the_key_and_the_fix(pair, error, message):
    with pytest.raises(error) as raised:
        parse_overrides([pair], TrainConfig, flag="--train", fixed={"criterion": "fixed by test"})
    assert message in str(raised.value)
    if pair == "bogus=1":
        assert "criterion'" not in str(raised.value) and "'lr'" in str(raised.value)


def test_run_all_in_worker_processes_keeps_results_when_one_fails():
    tasks = [Task("four", math.sqrt, (4.0,)), Task("negative", math.sqrt, (-1.0,)), Task("nine", math.sqrt, (9.0,))]
    results, failures = run_all(tasks, jobs=2)
    assert results == {"four": 2.0, "nine": 3.0}
    assert failures == [Failure("negative", "ValueError: math domain error")]
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        run_all(tasks, jobs=0)
    with pytest.raises(ValueError, match="used twice"):
        run_all([tasks[0], tasks[0]], jobs=1)


def test_p1_values_are_checked_before_training():
    assert check_p1([4, 8.5], NoiseInit()) == [4.0, 8.5]
    with pytest.raises(ValueError, match="listed twice"):
        check_p1([4, 4.0], NoiseInit())
    with pytest.raises(ValueError, match="p1 < p2"):
        check_p1([23], NoiseInit())
    with pytest.raises(ValueError, match="must lie inside the prior"):
        check_p1([4], NoiseInit(log_a=-10.0))


@needs_fmnist
def test_sweep_writes_summary_reuses_cache_and_reports_failures(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BMRS_COMPILE", "0")
    out = tmp_path / "sweep"
    arguments = [*TINY, "--p1", "4", "8", "--train", "kl_weighting=layer_mean", "--out", str(out)]
    assert main(arguments) == 0
    raw = json.loads((out / "raw" / "fashion_mnist-mlp-p1_8-seed0.json").read_text())
    assert raw["spec"]["train"]["criterion"] == "bmrs_u" and raw["spec"]["train"]["criterion_settings"] == {"p1": 8.0}
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

    def broken(spec):
        raise RuntimeError(f"no training in this test (p1={spec.train.criterion_settings['p1']})")

    monkeypatch.setattr(p1_sweep, "train_and_measure", broken)
    # p1 = 4 comes from its cached file; p1 = 6 has none, fails, and is reported without losing it.
    assert main([*TINY, "--p1", "4", "6", "--train", "kl_weighting=layer_mean", "--out", str(out)]) == 1
    assert "FAILED p1=6 seed=0: RuntimeError: no training in this test (p1=6.0)" in capsys.readouterr().err
    partial = json.loads((out / "fashion_mnist-mlp.json").read_text())
    assert partial["rows"][0]["accuracy_pct"] == report["rows"][0]["accuracy_pct"]
    assert partial["rows"][1]["accuracy_pct"] is None and "| 6 | 0 | n/a | n/a |" in (out / "fashion_mnist-mlp.md").read_text()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--p1", "4", "4"], "listed twice"),
        (["--p1", "30"], "p1 < p2"),
        (["--train", "criterion_settings={p1: 2}"], "the sweep trains bmrs_u"),
        (["--train", "finetune_epochs=2"], "use --finetune-epochs"),
        (["--noise", "bogus=1"], "valid keys are"),
        (["--finetune-epochs", "-1"], "finetune_epochs must be >= 0"),
    ],
)
def test_bad_input_is_refused_before_training(arguments, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--model", "mlp", *arguments, "--out", "/nonexistent/never-written"])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
