"""``benchmarks.weight_sparsity --quick`` end to end on tiny synthetic images: every stage runs, the
report holds every method, and a second run reuses the stored results instead of training again."""
from __future__ import annotations

import json

import pytest
import torch

import benchmarks.weight_sparsity as bench
from bmrs.data import DataBundle, Split


def synthetic(num: int, seed: int) -> Split:
    """28x28 images of 10 classes, each a fixed random pattern under noise: learnable in one epoch."""
    patterns = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (num,), generator=generator)
    images = (patterns[labels] + 0.3 * torch.randn(num, 1, 28, 28, generator=generator)).clamp(0, 1)
    return Split(images, labels)


@pytest.fixture
def tiny_data() -> DataBundle:
    return DataBundle("synthetic", synthetic(256, 1), synthetic(128, 2), synthetic(128, 3), 10)


def test_quick_run_covers_every_stage_and_reuses_its_results(tiny_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BMRS_COMPILE", "0")  # compiling the noise kernels costs more than this tiny run
    args = ["--quick", "--models", "lenet5", "--seeds", "0", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    summary = bench.main(args, data=tiny_data)

    rows = {row["method"]: row for row in summary["rows"]}
    assert list(rows) == ["dense", "sparse", "structured", "combined"] and not summary["missing"]
    assert rows["dense"]["weight_sparsity"]["mean"] == 0.0
    assert 0.0 < rows["sparse"]["weight_sparsity"]["mean"] < 1.0 and "goal" in rows["sparse"]
    assert rows["sparse"]["prune_ms"]["n"] == 1 and rows["sparse"]["svi_epoch_s"]["n"] == 2  # 1 fit + 1 fine-tuning epoch

    raw = tmp_path / "out" / "raw"
    combined = json.loads((raw / "lenet5-seed0-combined.json").read_text())
    assert combined["spec"]["from"] == json.loads((raw / "lenet5-seed0-structured.json").read_text())["spec"]
    assert combined["total_removed"] == pytest.approx(1 - combined["nonzero_params"] / combined["dense_params"])

    files = summary["export"]["lenet5"]["files"]
    assert list(files) == ["dense", "sparse", "structured", "combined"]
    sparse = files["sparse"]
    # The file holds the removed weights as zeros: same bytes as the dense file, fewer when deflated.
    assert sparse["onnx_bytes"] == files["dense"]["onnx_bytes"] and sparse["onnx_zeros"] >= sparse["weights"] - sparse["nonzero_weights"]
    assert sparse["test_onnx"]["accuracy"] == pytest.approx(sparse["test_module"]["accuracy"])
    latency = summary["export"]["lenet5"]["latency"]["by_provider"]["CPUExecutionProvider"]
    assert set(latency) == {"1", "256"} and set(latency["1"]) == {"dense", "sparse", "structured", "combined"}
    report = (tmp_path / "out" / "weight_sparsity.md").read_text()
    assert "Structured BMRS + BMR on weights" in report and "p50 batch 256" in report

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage was computed again")

    for name in ("train_", "sparsify_", "sparse_export", "measure_latency"):
        monkeypatch.setattr(bench, name, refuse)
    again = bench.main(args, data=tiny_data)
    assert again["rows"] == summary["rows"] and again["export"] == summary["export"]


def test_a_changed_setting_recomputes_the_stages_that_depend_on_it(tiny_data, tmp_path, monkeypatch) -> None:
    base = ["--quick", "--models", "mlp", "--seeds", "0", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    bench.main([*base, "--no-export"], data=tiny_data)
    first = json.loads((tmp_path / "out" / "raw" / "mlp-seed0-sparse.json").read_text())
    bench.main([*base, "--no-export", "--dense-epochs", "2"], data=tiny_data)
    second = json.loads((tmp_path / "out" / "raw" / "mlp-seed0-sparse.json").read_text())
    assert first["spec"]["from"]["train"]["epochs"] == 1 and second["spec"]["from"]["train"]["epochs"] == 2
    bench.main([*base, "--no-export", "--dense-epochs", "2", "--svi-epochs", "2"], data=tiny_data)
    third = json.loads((tmp_path / "out" / "raw" / "mlp-seed0-sparse.json").read_text())
    assert third["spec"]["recipe"]["sparsify"]["epochs"] == 2 and len(third["epochs"]) > len(second["epochs"])


def test_each_model_gets_its_own_svi_fit_unless_one_is_given() -> None:
    recipe = bench.Recipe()
    assert recipe.sparsify_config("mlp").epochs == 10 and recipe.sparsify_config("lenet5").epochs == 30
    assert recipe.described("lenet5")["sparsify"]["epochs"] == 30
    given = bench.Recipe(svi_epochs=7)
    assert {given.sparsify_config(name).epochs for name in bench.MODELS} == {7}


def test_refuses_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="--seeds must be distinct"):
        bench.main(["--quick", "--seeds", "0", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--svi-epochs must be >= 1"):
        bench.main(["--quick", "--svi-epochs", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--dense-epochs must be >= 1"):
        bench.main(["--quick", "--dense-epochs", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--export-seed 3 is not one of --seeds"):
        bench.main(["--quick", "--seeds", "0", "--export-seed", "3", "--out", str(tmp_path)])
