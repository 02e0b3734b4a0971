"""The Dask worker speed benchmark, end to end on LeNet5 with a few steps: the sweep's worker runs
without Dask's MALLOC_TRIM_THRESHOLD_, the default worker with it, and the table says so."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks.dask_worker_speed import DASK_DEFAULT_WORKER, HERE, SWEEP_WORKER, main


def test_three_places_timed_with_ratios_to_this_process(tmp_path, monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    out = tmp_path / "speed.json"
    assert main(["--model", "lenet5", "--batch", "4", "--steps", "3", "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["place"]: row for row in result["rows"]}
    assert list(rows) == [HERE, SWEEP_WORKER, DASK_DEFAULT_WORKER]
    assert rows[HERE]["malloc_trim"] is None and rows[SWEEP_WORKER]["malloc_trim"] is None
    assert rows[DASK_DEFAULT_WORKER]["malloc_trim"] == "65536"  # what the nanny adds unless told not to
    for row in rows.values():
        assert row["wall_ms_per_step"] > 0 and row["cpu_ms_per_step"] > 0
        assert row["wall_vs_this_process"] == pytest.approx(row["wall_ms_per_step"] / rows[HERE]["wall_ms_per_step"])
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # the nanny's write into this process undone
    assert "| Dask default worker | 65536 |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("argv, fragment", [(["--steps", "0"], "--steps must be at least 1"),
                                            (["--model", "nope"], "unknown --model 'nope'")])
def test_bad_arguments_are_one_line_and_exit_2(argv, fragment, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x.json")]) == 2
    assert fragment in capsys.readouterr().err and not (tmp_path / "x.json").exists()
