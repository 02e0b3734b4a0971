"""The speed-up against MACs benchmark, end to end on LeNet5 with a tiny batch and few repeats."""
from __future__ import annotations

import json

import pytest

from benchmarks.speedup_vs_macs import main

ROUNDINGS = (4, 8)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("speedup") / "speedup.json"
    code = main(["--models", "lenet5", "--round-to", *map(str, ROUNDINGS), "--batch", "2", "--warmup", "0",
                 "--repeats", "3", "--threads", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert out.with_suffix(".md").is_file()
    return json.loads(out.read_text()), out.with_suffix(".md").read_text()


def test_one_row_per_rounding_with_sizes_latencies_and_the_ratio(result):
    data, _ = result
    assert data["batch_size"] == 2 and data["repeats"] == 3 and data["threads"] == 1
    assert data["provider"] == "CPUExecutionProvider" and "processor" in data["machine"]
    rows = data["rows"]
    assert [(row["model"], row["round_to"]) for row in rows] == [("lenet5", None)] + [("lenet5", r) for r in ROUNDINGS]
    for row in rows:
        assert row["macs_dense"] > row["macs_pruned"] > 0
        assert row["macs_reduction"] == pytest.approx(row["macs_dense"] / row["macs_pruned"])
        assert 0.0 < row["compression"] < 1.0
        assert row["dense_p50_ms"] > 0 and row["pruned_p50_ms"] > 0
        assert row["speedup"] == pytest.approx(row["dense_p50_ms"] / row["pruned_p50_ms"])
        assert row["ratio"] == pytest.approx(row["speedup"] / row["macs_reduction"])
    unrounded, *rounded = rows
    # Rounding keeps channels back, never removes more; a coarser rounding keeps at least as many.
    for finer, coarser in zip([unrounded, *rounded], rounded):
        assert coarser["macs_pruned"] >= finer["macs_pruned"]
    for row in rounded:
        assert row["compression_unrounded"] == pytest.approx(unrounded["compression"])


@pytest.mark.parametrize("index", range(len(ROUNDINGS)))
def test_rounded_widths_are_multiples_of_round_to_or_full(result, index):
    data, _ = result
    rounded = data["rows"][1 + index]
    full = rounded["widths_dense"]
    assert set(rounded["widths_pruned"]) == set(full)
    for path, width in rounded["widths_pruned"].items():
        assert width % ROUNDINGS[index] == 0 or width == full[path], (path, width, full[path])
    # Not vacuous: some layer was narrowed to a multiple below its full width.
    assert any(width < full[path] for path, width in rounded["widths_pruned"].items())


def test_markdown_says_what_the_ratio_means_and_that_masks_are_random(result):
    _, table = result
    assert "speed-up / MACs reduction" in table and "random" in table
    assert "| lenet5 | off |" in table and all(f"| lenet5 | {r} |" in table for r in ROUNDINGS)


def test_a_rounding_below_two_is_refused_in_one_line(tmp_path, capsys):
    assert main(["--models", "lenet5", "--round-to", "8", "1", "--out", str(tmp_path / "x.json")]) == 2
    error = capsys.readouterr().err
    assert "--round-to" in error and "[1]" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
