from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from scipy import stats

from benchmarks.paper import rank_correlation, runner
from benchmarks.paper.rank_correlation import (
    average_ranks,
    main,
    scored_criteria,
    spearman,
    spearman_matrix,
)
from bmrs.criteria import CRITERIA, Decision, LayerView, criterion_settings

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason=f"Fashion-MNIST is not installed at {FMNIST}")
TINY = ["--model", "mlp", "--seeds", "0", "--epochs", "1", "--set", "data.max_train_examples=256"]


def test_average_ranks_and_spearman_match_scipy_on_data_with_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (4, 50), generator=generator).double()  # many ties
    scores[3] = torch.randn(50, generator=generator, dtype=torch.float64)
    for row in scores:
        assert torch.allclose(average_ranks(row), torch.from_numpy(stats.rankdata(row.numpy())))
    expected = stats.spearmanr(scores.numpy(), axis=1).statistic
    assert torch.allclose(spearman_matrix(scores), torch.from_numpy(expected), atol=1e-12)
    assert spearman(scores[0], scores[1]) == pytest.approx(stats.spearmanr(scores[0], scores[1]).statistic, abs=1e-12)
    assert spearman(scores[0], -scores[0]) == pytest.approx(-1.0)


def test_all_tied_scores_have_no_correlation_and_bad_shapes_are_refused():
    matrix = spearman_matrix(torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]]))
    assert torch.isnan(matrix[0]).all() and torch.isnan(matrix[:, 0]).all()
    assert float(matrix[1, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 structures"):
        spearman_matrix(torch.ones(3, 1))
    assert average_ranks(torch.empty(0)).numel() == 0
    with pytest.raises(ValueError, match="NaN"):
        average_ranks(torch.tensor([1.0, float("nan")]))


def test_every_registered_criterion_is_scored_and_bmrs_u_twice(monkeypatch):
    @dataclass(frozen=True)
    class Constant:
        needs_gradients: ClassVar[bool] = False

        def decide(self, layer: LayerView) -> Decision:
            ones = torch.ones(layer.noise.num_structures, dtype=torch.float64)
            return Decision(ones, ~layer.noise.mask)

    monkeypatch.setitem(CRITERIA, "constant_for_test", Constant)
    entries = {entry.label: entry for entry in scored_criteria()}
    # snr_ratio ranks as snr: scored once, as snr.
    assert set(entries) == (set(CRITERIA) - {"bmrs_u", "snr_ratio"}) | {"bmrs_u-8", "bmrs_u-4"}
    assert entries["bmrs_u-4"].settings == {"p1": 4.0, "p2": 23.0}
    assert entries["l2"].settings == criterion_settings("l2")
    assert entries["constant_for_test"].settings == {}


@needs_fmnist
def test_scores_are_cached_and_a_new_criterion_only_costs_scoring(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BMRS_COMPILE", "0")
    out = tmp_path / "rc"
    assert main([*TINY, "--out", str(out)]) == 0
    report = json.loads((out / "fashion_mnist-mlp.json").read_text())
    labels = report["labels"]
    assert report["command"] == "python -m benchmarks.paper.rank_correlation " + " ".join([*TINY, "--out", str(out)])
    assert labels == [entry.label for entry in scored_criteria()]
    index = {label: i for i, label in enumerate(labels)}
    for i in range(len(labels)):
        assert report["mean"][i][i] == pytest.approx(1.0)
    assert report["mean"][index["bmrs_u-8"]][index["bmrs_u-4"]] == report["mean"][index["bmrs_u-4"]][index["bmrs_u-8"]]
    raw = json.loads((out / "raw" / "fashion_mnist-mlp-seed0.json").read_text())
    assert raw["spec"]["train"]["criterion"] is None and raw["spec"]["train"]["finetune_epochs"] == 0
    assert raw["spec"]["noise"] == {"init_mu": 0.0, "init_log_sigma": -5.0, "log_a": -20.0, "log_b": 0.0}, "unpruned, but noisy"
    assert (raw["spec"]["train"]["batch_size"], raw["spec"]["train"]["lr"]) == (128, 1.5e-3)
    pooled = torch.tensor([[v for layer in raw["scores"][label].values() for v in layer] for label in labels])
    assert report["per_seed"][0]["pooled"][index["snr"]][index["l2"]] == pytest.approx(
        stats.spearmanr(pooled[index["snr"]], pooled[index["l2"]]).statistic, abs=1e-12
    )
    assert set(report["per_layer_mean"]) == {"1.noise"} and report["settings"]["structures"] == {"1.noise": 150}
    assert (out / "fashion_mnist-mlp.png").read_bytes()[:4] == b"\x89PNG"
    assert "| bmrs_u-8 |" in (out / "fashion_mnist-mlp.md").read_text()
    assert "| bmrs_n |" in capsys.readouterr().out

    def no_training(*args, **kwargs):
        raise AssertionError("a cached seed was retrained")

    monkeypatch.setattr(rank_correlation, "train_and_measure", no_training)
    assert main([*TINY, "--out", str(out)]) == 0
    assert json.loads((out / "fashion_mnist-mlp.json").read_text())["mean"] == report["mean"]

    # A newly registered criterion is scored from the stored weights, without retraining.
    @dataclass(frozen=True)
    class Negated:
        needs_gradients: ClassVar[bool] = False
        registry_name: ClassVar[str] = "negated_snr_for_test"  # what register_criterion sets

        def decide(self, layer: LayerView) -> Decision:
            return Decision(-layer.noise.snr().detach().double(), ~layer.noise.mask)

    monkeypatch.setitem(CRITERIA, "negated_snr_for_test", Negated)
    assert main([*TINY, "--out", str(out)]) == 0
    rescored = json.loads((out / "raw" / "fashion_mnist-mlp-seed0.json").read_text())
    assert rescored["scores"]["bmrs_n"] == raw["scores"]["bmrs_n"]
    assert rescored["scores"]["grad"] == raw["scores"]["grad"]
    updated = json.loads((out / "fashion_mnist-mlp.json").read_text())
    assert updated["mean"][updated["labels"].index("negated_snr_for_test")][index["snr"]] == pytest.approx(-1.0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--seeds", "0", "0"], "--seeds lists seed 0 twice"),
        (["--set", "train.criterion=snr"], "trained without pruning"),
        (["--set", "train.epochs=3"], "use --epochs"),
        (["--set", "train.bogus=1"], "mlp_fmnist_paper.train.bogus: unknown setting; valid settings of"),
        (["--set", "noise.log_a=minus"], "mlp_fmnist_paper.noise.log_a: expected a finite number, got 'minus'"),
        (["--set", "data.max_train_examples=0"], "data.max_train_examples must be >= 1 or null"),
        (["--set", "model.name=lenet5"], "the model is chosen with --model"),
        (["--set", "train.lr=[1"], "the value is not valid YAML"),
    ],
)
def test_bad_input_is_refused_before_training(arguments, message, capsys, monkeypatch):
    monkeypatch.setattr(runner, "load_data", lambda config: pytest.fail("the data was loaded for bad input"))
    with pytest.raises(SystemExit) as stopped:
        main(["--model", "mlp", *arguments, "--out", "/nonexistent/never-written"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("rank_correlation: error: ") and err.count("\n") == 1 and message in err
