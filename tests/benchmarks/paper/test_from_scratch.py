from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.paper import from_scratch
from benchmarks.paper.experiment import run_record
from benchmarks.paper.from_scratch import main, parse_widths, width_overrides
from benchmarks.paper.runner import FLOWS, paper_config
from bmrs.models import build_model
from export.slicing import count_params

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"Fashion-MNIST is not installed at {FMNIST}")
TINY = ["--seeds", "0", "--epochs", "2", "--finetune-epochs", "0", "--set", "data.max_train_examples=1024"]


def test_widths_are_parsed_per_model():
    assert parse_widths("mlp", ["10", "32"]) == [(10,), (32,)]
    assert parse_widths("lenet5", ["6,10,20,20"]) == [(6, 10, 20, 20)]
    with pytest.raises(ValueError, match=r"not 4 positive integer\(s\).*conv1,conv2,fc1,fc2"):
        parse_widths("lenet5", ["6,10,20"])
    with pytest.raises(ValueError, match="listed twice"):
        parse_widths("mlp", ["10", "10"])
    with pytest.raises(ValueError, match="not 1 positive integer"):
        parse_widths("mlp", ["0"])


@pytest.mark.parametrize("dataset, layers", [("fashion_mnist", 1), ("mnist", 7)])
def test_an_mlp_width_keeps_the_paper_preset_depth(dataset, layers):
    base = paper_config(FLOWS, "mlp", dataset, ["train.criterion=null"])
    config = paper_config(FLOWS, "mlp", dataset, ["train.criterion=null", *width_overrides(base, (10,))])
    assert config.model.options() == {"hidden_width": 10, "hidden_layers": layers}
    assert run_record(config)["noise"] is None and run_record(config)["train"]["criterion"] is None


@needs_fmnist
@pytest.mark.parametrize("model, widths", [("mlp", "10"), ("lenet5", "4,8,12,10")])
def test_trains_the_dense_network_of_those_widths(tmp_path, monkeypatch, model, widths):
    monkeypatch.setenv("BMRS_COMPILE", "0")
    out = tmp_path / "scratch"
    arguments = ["--model", model, "--widths", widths, *TINY, "--out", str(out)]
    assert main(arguments) == 0
    report = json.loads((out / f"fashion_mnist-{model}.json").read_text())
    row = report["rows"][0]
    numbers = [int(w) for w in widths.split(",")]
    options = {"hidden_width": numbers[0]} if model == "mlp" else {"widths": numbers}
    assert row["params"] == count_params(build_model(model, (1, 28, 28), 10, **options))
    assert report["paper_params"] == count_params(build_model(model, (1, 28, 28), 10))
    assert row["compression_pct"] == pytest.approx(100 * (1 - row["params"] / report["paper_params"]))
    raw = json.loads(next((out / "raw").glob("*.json")).read_text())
    assert raw["spec"]["noise"] is None and raw["spec"]["train"]["criterion"] is None
    assert row["accuracy"]["mean"] == pytest.approx(100 * raw["test"]["accuracy"]) and raw["test"]["accuracy"] > 0.15  # above chance: it trained
    assert report["command"] == "python -m benchmarks.paper.from_scratch " + " ".join(arguments)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--model", "lenet5", "--widths", "6,16"], "conv1,conv2,fc1,fc2"),
        (["--model", "mlp", "--widths", "10", "--set", "noise.init_mu=-20"], "train without noise layers"),
        (["--model", "mlp", "--widths", "10", "--set", "train.criterion=bmrs_n"], "nothing is pruned"),
        (["--model", "mlp", "--widths", "10", "--set", "model.hidden_width=20"], "set by --widths"),
        (["--model", "mlp", "--widths", "10", "--set", "train.lr=-1"], "mlp_fmnist_paper.train: train.lr must be a positive number"),
    ],
)
def test_bad_input_is_refused_before_training(arguments, message, capsys, monkeypatch):
    monkeypatch.setattr(from_scratch, "load_data", lambda config: pytest.fail("the data was loaded for bad input"))
    with pytest.raises(SystemExit) as stopped:
        main([*arguments, "--out", "/nonexistent/never-written"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("from_scratch: error: ") and err.count("\n") == 1 and message in err
