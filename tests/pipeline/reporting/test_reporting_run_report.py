"""A run's report.md and key line, from report.json files as runs write them (old and new)."""
from __future__ import annotations

import json
import math

import pytest
from reporting_fakes import make_failed_run, make_run

from pipeline.reporting import key_line, write_run_report


def smaller(report):
    report["pruned"].update(params=23_384, flops=101_250)
    report["onnx"]["bytes"] = 98_765


def test_the_results_table_has_a_dense_and_a_method_row_with_the_reports_numbers(tmp_path):
    run_dir = make_run(tmp_path / "run", method="bmrs_u", settings={"p1": 4.0}, accuracy=0.876, compression=0.621,
                       speedup=2.9, edit=smaller)
    text = write_run_report(run_dir).read_text()
    assert (run_dir / "report.md").is_file()
    assert text.startswith("# default: lenet5 on fashion_mnist, bmrs_u (p1=4)\n")
    assert "criterion settings p1=4 (the others at their defaults)" in text and "train.seed 0" in text
    assert "**State: completed**" in text
    # The real run's dense model (p50 0.1234 and 5.257 ms) and the edited pruned one at batch 256.
    pruned_p50 = 5.256542 / 2.9
    assert ("| dense reference | 88.23% | 0.3241 | 0.0250 | 0.0% | 61,706 | 435,850 | 264,554 | 0.1234 | 5.257 "
            "| 48,701 | 1.2 | 4.80e-05 |") in text
    assert (f"| bmrs_u (p1=4) | 87.60% | 0.3252 | 0.0289 | 62.1% | 23,384 | 101,250 | 98,765 | 0.118 (1.05x) "
            f"| {pruned_p50:.4g} (2.9x) | {256_000 / pruned_p50:,.0f} | 0.414 | 1.66e-05 |") in text
    assert "![validation accuracy and compression per epoch](train/curve.png)" in text
    assert "6 epochs (1 of them fine-tuning); best validation accuracy 89.39% at epoch 5" in text


def test_energy_is_reported_per_batch_and_stage_with_its_measurement_mode_in_words(tmp_path):
    text = write_run_report(make_run(tmp_path / "run", speedup=2.0)).read_text()
    assert "| 256 | 1.2 | 0.6 | 0.500 (0.480-0.520) | 4.80e-05 | 2.40e-05 | 3 |" in text
    assert "| training (pruned model) | 0.002 | 3.00e-04 | 100.0 | 1 |" in text
    assert "| slicing and ONNX export | not measured (shorter than one power sample) | n/a | n/a | n/a |" in text
    how = text.split("## How measured")[1]
    assert "These energy figures are an estimate (a power model, not a hardware energy counter)." in how
    assert "Estimated: codecarbon found no RAPL counter and multiplied CPU load by an assumed TDP of 225.0 W" in how
    assert "compare models measured the same way, not absolute values. codecarbon: CPU: cpu_load" in how
    assert "Machine: AMD EPYC, 2 usable CPUs" in how
    assert "intra-op threads: the runtime default" in how


@pytest.mark.parametrize(
    ("energy", "words"),
    [("missing", "not measured (this report predates energy measurement)"),
     (None, "not measured (energy measurement was disabled for this run)")],
)
def test_reports_without_energy_say_not_measured(tmp_path, energy, words):
    run_dir = make_run(tmp_path / "run", energy=energy)
    text = write_run_report(run_dir).read_text()
    assert "Energy and CO2 per 1k inferences: " + words in text
    assert f"- Energy: {words}." in text
    assert "| 1.2 |" not in text and "nan" not in text.lower() and "None" not in text
    assert key_line(json.loads((run_dir / "report.json").read_text())).endswith(", energy not measured")


def test_an_unavailable_energy_section_gives_its_reason(tmp_path):
    def unavailable(report):
        report["energy"] = {"available": False, "reason": "codecarbon is not installed"}

    text = write_run_report(make_run(tmp_path / "run", edit=unavailable)).read_text()
    assert "Energy and CO2 per 1k inferences: not measured (codecarbon is not installed)." in text
    assert "Not measured (codecarbon is not installed)." in text


def test_torch_latency_rows_get_their_own_tables_and_missing_ones_say_not_measured(tmp_path):
    def with_torch_cpu(report):
        report["latency"]["torch-cpu"] = {"256": {"dense_p50_ms": 8.0, "pruned_p50_ms": 4.0, "speedup_p50": 2.0,
                                                  "dense_throughput_per_s": 32_000.0, "pruned_throughput_per_s": 64_000.0}}

    text = write_run_report(make_run(tmp_path / "run", edit=with_torch_cpu)).read_text()
    section = text.split("### PyTorch CPU (torch-cpu)")[1].split("\n\n", 2)[1]
    assert "| 256 | 8 | 4 | n/a | n/a | n/a | n/a | 2.0x | 32,000 | 64,000 |" in section
    assert "PyTorch eager (torch-cuda): not measured in this run" in text
    assert "torch-cpu, torch-cuda): not measured" not in text
    # The headline table stays on the first ONNX Runtime provider.
    assert "through ORT CPU (CPUExecutionProvider)" in text


def test_nan_and_missing_figures_print_as_na(tmp_path):
    def holes(report):
        report["pruned"]["nll"] = math.nan
        report["pruned"]["ece"] = None
        del report["dense"]["onnx"]

    text = write_run_report(make_run(tmp_path / "run", edit=holes)).read_text()
    dense_row = next(line for line in text.splitlines() if line.startswith("| dense reference"))
    method_row = next(line for line in text.splitlines() if line.startswith("| bmrs_n"))
    assert dense_row.split(" | ")[7] == "n/a"  # ONNX bytes
    assert method_row.split(" | ")[2:4] == ["n/a", "n/a"]  # NLL, ECE
    assert "nan" not in text.lower()


def test_a_degraded_run_states_its_warning(tmp_path):
    warning = "pruned accuracy 10.0% is within 5 points of chance (10.0%): the model collapsed"
    text = write_run_report(make_run(tmp_path / "run", accuracy=0.1, degraded=warning)).read_text()
    assert f"**State: degraded**: {warning}" in text


def test_the_key_line_says_what_was_gained_at_what_cost(tmp_path):
    run_dir = make_run(tmp_path / "run", accuracy=0.876, compression=0.621, speedup=2.9, pruned_j=0.41)
    report = json.loads((run_dir / "report.json").read_text())
    report["dense"]["accuracy"] = 0.882
    assert key_line(report) == ("bmrs_n: 62.1% of parameters removed, accuracy 87.6% vs dense 88.2% (-0.6 pt), "
                                "p50 batch 256 2.9x faster (ORT CPU), energy per 1k inferences 0.41 J vs 1.20 J (estimate)")
    report["latency"]["CPUExecutionProvider"]["256"]["speedup_p50"] = 0.5
    report["energy"]["mode"]["estimated"] = False
    assert "p50 batch 256 2.0x slower (ORT CPU)" in key_line(report)
    assert key_line(report).endswith("(measured)")


def test_a_dense_method_run_without_a_baseline(tmp_path):
    def dense_only(report):
        report["dense"].update(accuracy=None, nll=None, ece=None, torch_accuracy=None)
        report["pruned"]["compression"] = 0.0

    run_dir = make_run(tmp_path / "run", method="none", speedup=1.0, edit=dense_only)
    text = write_run_report(run_dir).read_text()
    report = json.loads((run_dir / "report.json").read_text())
    assert key_line(report).startswith("none (dense model): accuracy 87.6% (no dense baseline trained), p50 batch 256 5.26 ms")
    assert "(no criterion: the dense model)" in text
    assert "The dense baseline was not trained (baseline.enabled: false)" in text
    assert "| dense reference | n/a | n/a | n/a | 0.0% | 61,706 |" in text


def test_a_run_without_a_report_is_refused_with_its_directory(tmp_path):
    run_dir = make_failed_run(tmp_path / "run", seed=0, error="training diverged")
    with pytest.raises(ValueError, match=f"{run_dir}.*has no report.json yet \\(state failed\\).*bmrs resume"):
        write_run_report(run_dir)


def test_rounded_widths_fp16_and_the_sliced_model_are_stated_beside_the_table(tmp_path):
    def exported(report):
        report["pruned"].update(round_to=8, compression=0.55, compression_unrounded=0.621, sliced_model="sliced/sliced.json")
        report["pruned"]["onnx"] = {"dtype": "float16"}
        report["latency"]["torch-cpu"] = report["latency"]["CPUExecutionProvider"]

    text = write_run_report(make_run(tmp_path / "run", edit=exported)).read_text()
    assert "Widths rounded up to multiples of 8 (export.round_to): 55.0% removed, against 62.1% without rounding." in text
    assert "model.onnx computes in float16" in text
    assert "PyTorch eager latency is of the float32 modules" in text
    assert "The sliced PyTorch model: `sliced/sliced.json`" in text
    plain = write_run_report(make_run(tmp_path / "plain")).read_text()
    assert "export.round_to" not in plain and "float16" not in plain and "float32 modules" not in plain
