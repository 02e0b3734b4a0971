"""report.md, the key line, the comparison and the artifact rows of runs that sparsified (BMR on
weights): structures and weights removed apart and together, the dense-with-zeros file beside its
sparse sizes, and the latency ratio next to them."""
from __future__ import annotations

import json

import pytest
from reporting_fakes import make_run

from pipeline.artifacts import run_metric_rows
from pipeline.reporting import key_line, write_comparison
from pipeline.reporting.run_report import write_run_report

SIZES = {"onnx_bytes": 250_000, "deflate_bytes": 60_000, "csr_bytes": 40_000, "dense_weight_bytes": 240_000,
         "sparse_model_bytes": 41_000, "weights": 60_000, "nonzero_weights": 5_000, "onnx_zeros": 55_000}  # fmt: skip


def sparsified(structured: float, weight_sparsity: float, total: float):
    def edit(report):
        report["pruned"].update(structured_compression=structured, weight_sparsity=weight_sparsity, total_removed=total,
                                compression=total, nonzero_params=6_000, sparse_encoding=SIZES)  # fmt: skip
        report["settings"]["sparsify"] = {"enabled": True, "epochs": 10, "finetune_epochs": 3, "max_rounds": 2,
                                          "init_std": 0.001, "lr": 0.001}  # fmt: skip
        report["sparsify"] = {"rounds": 2, "epochs": 16, "removed_per_round": [50_000, 1_200], "stopped_early": False,
                              "df_step_seconds": [0.004, 0.003], "epoch_seconds_mean": 9.5, "val_accuracy": 0.871,
                              "structured_compression": structured}  # fmt: skip
        report["energy"]["stages"]["sparsify"] = {"available": True, "energy_kwh": 0.001, "emissions_kg_co2": 0.00015,
                                                  "duration_s": 150.0, "attempts": 1}  # fmt: skip

    return edit


def test_a_weights_only_run_says_the_file_is_dense_with_zeros_and_gives_its_sizes_and_latency(tmp_path):
    run_dir = make_run(tmp_path / "run", method="bmr_weights", compression=0.9, speedup=1.02,
                       edit=sparsified(0.0, 0.917, 0.9))  # fmt: skip
    text = write_run_report(run_dir).read_text()
    report = json.loads((run_dir / "report.json").read_text())
    assert key_line(report).startswith("bmr_weights: 90.0% of parameters removed (91.7% of the weights exactly 0), accuracy")
    assert "Method `bmr_weights` (no criterion: BMR on the dense model's weights)" in text
    assert "BMR on weights epochs=10, finetune_epochs=3, max_rounds=2, init_std=0.001, lr=0.001 (sparsify section)" in text
    assert "## Weight sparsity (BMR on individual weights)" in text
    assert "| 0.0% | 91.7% | 90.0% |" in text
    assert "| 250,000 | 60,000 | 41,000 | 240,000 | 40,000 |" in text
    assert "model.onnx is dense-with-zeros" in text and "55,000 zero entries" in text
    assert "no structure was removed, so no speed-up is to be expected: the measured p50 speed-up" in text
    assert "1.02x at batch 256" in text
    assert "BMR ran 2 dF rounds after its SVI fit (16 SVI epochs in all; weights removed per round: 50,000, 1,200)" in text
    assert "each dF step took 4, 3 ms" in text and "| sparsification (BMR on weights) |" in text


def test_a_combined_run_names_slicing_first(tmp_path):
    run_dir = make_run(tmp_path / "run", method="bmrs_u", settings={"p1": 8.0}, compression=0.95, speedup=1.3,
                       edit=sparsified(0.6, 0.875, 0.95))  # fmt: skip
    report = json.loads((run_dir / "report.json").read_text())
    report["method"] = "bmrs_u+bmr_weights"
    assert "95.0% of parameters removed (60.0% by slicing, then 87.5% of the weights exactly 0)" in key_line(report)
    text = write_run_report(run_dir).read_text()
    assert "any speed-up comes from the structures sliced away" in text
    plain = write_run_report(make_run(tmp_path / "plain")).read_text()
    assert "Weight sparsity" not in plain and "dense-with-zeros" not in plain


def test_the_comparison_and_the_artifacts_carry_the_new_figures(tmp_path):
    runs = [make_run(tmp_path / f"w{seed}", method="bmr_weights", seed=seed, compression=0.9, speedup=1.0,
                     edit=sparsified(0.0, sparsity, 0.9)) for seed, sparsity in ((0, 0.91), (1, 0.93))]  # fmt: skip
    runs.append(make_run(tmp_path / "n0", compression=0.6, edit=lambda r: r["pruned"].update(
        structured_compression=0.6, weight_sparsity=0.0, total_removed=0.6)))
    text = write_comparison(runs, tmp_path / "cmp").read_text()
    data = json.loads((tmp_path / "cmp" / "report.json").read_text())
    groups = {group["label"]: group["metrics"] for group in data["groups"]}
    assert groups["bmr_weights"]["weight_sparsity"]["mean"] == pytest.approx(0.92)
    assert groups["bmr_weights"]["training_energy_kwh"]["mean"] == pytest.approx(0.0035)  # training, fine-tuning, sparsify
    row = next(line for line in text.splitlines() if line.startswith("| bmr_weights |"))
    assert "| 90.0 ± 0.0% | 0.0 ± 0.0% | 92.0 ± 1.4% | 90.0 ± 0.0% |" in row
    assert "| 60.0% | 60.0% | 0.0% | 60.0% |" in next(line for line in text.splitlines() if line.startswith("| bmrs_n |"))
    dense, pruned = run_metric_rows(json.loads((runs[0] / "report.json").read_text()))
    assert (pruned["weight_sparsity"], pruned["total_removed"], pruned["structured_compression"]) == (0.91, 0.9, 0.0)
    assert dense["total_removed"] == 0.0 and dense["weight_sparsity"] is None
