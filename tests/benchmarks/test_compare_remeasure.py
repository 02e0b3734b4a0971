"""The re-measurement's pure logic on made-up numbers: the within-spread rule, the stated figures
(comparison report first, runs' reports otherwise) and the table. Nothing is measured."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.compare_remeasure import (
    ENERGY_RATIO,
    _check_paths,
    markdown,
    method_row,
    run_stated,
    speedup_key,
    stated_figures,
    stated_group,
    stated_range,
    within_spread,
)

RUNTIME = "CPUExecutionProvider"
NAMES = [speedup_key(1), speedup_key(256), ENERGY_RATIO]


def _report(speedup_b1: float, speedup_b256: float, ratio: float, low: float, high: float) -> dict:
    return {
        "latency": {RUNTIME: {"1": {"speedup_p50": speedup_b1}, "256": {"speedup_p50": speedup_b256}}},
        "energy": {"inference": {"by_batch": {"256": {"ratio_pruned_dense": ratio, "ratio_min": low, "ratio_max": high}}}},
    }


def test_within_uses_twice_the_std_when_it_is_the_wider():
    verdict = within_spread(2.0, 0.1, 0.05, 2.19)
    assert verdict["tolerance"] == pytest.approx(0.2)
    assert verdict["within"] is True
    assert within_spread(2.0, 0.1, 0.05, 2.21)["within"] is False


def test_within_uses_the_stated_range_when_it_is_the_wider():
    verdict = within_spread(0.9, 0.01, 0.3, 0.65)
    assert verdict["tolerance"] == pytest.approx(0.3)
    assert (verdict["low"], verdict["high"]) == pytest.approx((0.6, 1.2))
    assert verdict["within"] is True


def test_no_spread_stated_gives_no_verdict():
    verdict = within_spread(1.3, 0.0, 0.0, 1.3)
    assert verdict["within"] is None
    assert "no spread" in verdict["why"]
    assert within_spread(1.3, 0.1, 0.0, None)["within"] is None
    assert within_spread(None, None, 0.0, 1.0)["why"] == "no stated figure"


def test_stated_range_is_the_far_end_of_each_runs_own_range():
    entries = [{"value": 0.9, "low": 0.74, "high": 1.07}, {"value": 1.0, "low": 0.95, "high": 1.02}, {"value": 1.1, "low": None, "high": None}]
    assert stated_range(entries) == pytest.approx(0.17)
    assert stated_range([{"value": 1.2, "low": None, "high": None}]) == 0.0


def test_stated_figures_from_the_runs_when_there_is_no_comparison_report():
    per_run = [run_stated(_report(1.2, 1.1, 0.9, 0.8, 1.0), RUNTIME, [1, 256]),
               run_stated(_report(1.4, 1.3, 1.1, 1.0, 1.15), RUNTIME, [1, 256])]
    stated = stated_figures(per_run, None, NAMES)
    assert stated[speedup_key(1)]["mean"] == pytest.approx(1.3)
    assert stated[speedup_key(1)]["std"] == pytest.approx(0.1414213, rel=1e-5)
    assert stated[speedup_key(1)]["range"] == 0.0  # runs measured before speed-ups stated a range
    assert stated[ENERGY_RATIO]["mean"] == pytest.approx(1.0)
    assert stated[ENERGY_RATIO]["range"] == pytest.approx(0.1)
    assert stated[ENERGY_RATIO]["source"] == "runs' report.json"


def test_a_runs_speedup_range_is_its_blocks_min_and_max():
    report = _report(1.2, 1.1, 0.9, 0.8, 1.0)
    report["latency"][RUNTIME]["256"].update(speedup_p50_min=1.02, speedup_p50_max=1.25)
    stated = run_stated(report, RUNTIME, [1, 256])
    assert stated[speedup_key(256)] == {"value": 1.1, "low": 1.02, "high": 1.25}
    assert stated_figures([stated], None, NAMES)[speedup_key(256)]["range"] == pytest.approx(0.15)


def test_stated_figures_prefer_the_comparison_group(tmp_path: Path):
    run_dir = tmp_path / "etheta" / "seed0"
    comparison = {"groups": [{"label": "none", "run_dirs": [str(tmp_path / "none" / "seed0")], "metrics": {}},
                             {"label": "etheta", "run_dirs": [str(run_dir)],
                              "metrics": {speedup_key(1): {"mean": 1.5, "std": 0.2, "n": 3, "values": [1.3, 1.5, 1.7]}}}]}
    group = stated_group(comparison, [run_dir])
    assert group["label"] == "etheta"
    stated = stated_figures([run_stated(_report(9.0, 1.1, 0.9, 0.8, 1.0), RUNTIME, [1, 256])], group, NAMES)
    assert stated[speedup_key(1)]["mean"] == 1.5
    assert stated[speedup_key(1)]["source"] == "comparison report.json"
    assert stated[speedup_key(256)]["source"] == "runs' report.json"  # a figure the group lacks
    assert stated[ENERGY_RATIO]["mean"] == pytest.approx(0.9)
    assert stated_group(comparison, [tmp_path / "snr" / "seed0"]) is None


def test_method_row_and_markdown_table():
    per_run = [run_stated(_report(1.2, 1.1, 0.9, 0.7, 1.0), RUNTIME, [1, 256]),
               run_stated(_report(1.4, 1.3, 1.1, 1.0, 1.15), RUNTIME, [1, 256])]
    remeasured = [{speedup_key(1): 1.25, speedup_key(256): 2.0, ENERGY_RATIO: 1.0},
                  {speedup_key(1): 1.35, speedup_key(256): 2.2, ENERGY_RATIO: None}]
    row = method_row("etheta", stated_figures(per_run, None, NAMES), remeasured)
    ratios = row["ratios"]
    assert ratios[speedup_key(1)]["within"] is True
    assert ratios[speedup_key(256)]["within"] is False  # 2.1 against 1.2 ± 0.28
    assert ratios[ENERGY_RATIO]["remeasured"]["n"] == 1
    assert ratios[ENERGY_RATIO]["within"] is True  # 1.0 against 1.0 ± max(0.28, 0.2)
    result = {"compare_dir": "runs/x/compare", "ratios": NAMES, "methods": [row], "runtime": RUNTIME, "rule": "r",
              "overrides_text": "", "skipped": [{"label": "snr", "seed": 0, "why": "running"}], "command": "cmd"}
    text = markdown(result)
    assert "| etheta | 1.300 ± 0.141 (2) | 1.300 ± 0.071 (2) | yes (±0.283) |" in text
    assert "**no**" in text
    assert "speed-up b256 stated (n)" in text and "energy ratio within" in text
    assert "Skipped: running: snr seed 0." in text


def test_check_paths_refuses_writing_inside_the_comparison(tmp_path: Path):
    compare_dir = tmp_path / "compare"
    compare_dir.mkdir()
    with pytest.raises(ValueError, match="has no compare.json"):
        _check_paths(compare_dir, tmp_path / "out.json", None)
    (compare_dir / "compare.json").write_text("{}")
    with pytest.raises(ValueError, match="--out FILE is needed"):
        _check_paths(compare_dir, None, None)
    with pytest.raises(ValueError, match="--scratch"):
        _check_paths(compare_dir, tmp_path / "out.json", compare_dir / "none")
    assert _check_paths(compare_dir, tmp_path / "out.json", tmp_path / "scratch") == tmp_path / "out.json"
