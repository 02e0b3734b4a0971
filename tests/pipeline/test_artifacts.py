"""Prefect artifacts: what a run publishes, that NaN/inf never reach them, and that a refusal does
not fail a run."""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

from pipeline import artifacts

REAL_RUN = Path(__file__).resolve().parent / "reporting" / "real_run"


def test_keys_are_what_prefect_accepts():
    assert artifacts.artifact_key("Mine_Flow v2", "model.onnx") == "mine-flow-v2-model-onnx"
    assert artifacts.artifact_key("--", "") == "bmrs"


def test_nan_and_infinity_become_none_at_any_depth():
    cleaned = artifacts.finite({"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": "x", 3: 2})
    assert cleaned == {"a": None, "b": [1.0, None, {"c": None}], "d": "x", "3": 2}
    json.dumps(cleaned, allow_nan=False)


def test_run_rows_hold_both_models_figures():
    report = json.loads((REAL_RUN / "report.json").read_text())
    report["pruned"]["nll"] = math.nan
    report["energy"] = {"inference": {"by_batch": {"256": {"dense": {"j_per_1k": 1.5, "g_co2_per_1k": 0.2},
                                                           "pruned": {"j_per_1k": math.inf, "g_co2_per_1k": 0.1}}}}}  # fmt: skip
    dense, pruned = artifacts.run_metric_rows(report)
    assert dense["model"] == "dense reference" and pruned["model"] == report["method"]
    assert dense["accuracy"] == report["dense"]["accuracy"] and pruned["compression"] == report["pruned"]["compression"]
    assert pruned["nll"] is None and pruned["J per 1k inferences batch 256"] is None
    assert dense["J per 1k inferences batch 256"] == 1.5
    assert pruned["onnx_bytes"] == report["onnx"]["bytes"] and dense["onnx_bytes"] == report["dense"]["onnx"]["bytes"]
    assert pruned["p50_ms CPUExecutionProvider batch 1"] == report["latency"]["CPUExecutionProvider"]["1"]["pruned_p50_ms"]
    json.dumps([dense, pruned], allow_nan=False)


def test_comparison_rows_take_mean_and_std():
    comparison = {"groups": [{"label": "bmrs_n", "n": 3, "metrics": {"accuracy": {"mean": 0.88, "std": math.nan, "n": 3}}}]}
    assert artifacts.comparison_rows(comparison) == [{"method": "bmrs_n", "seeds": 3, "accuracy": 0.88, "accuracy std": None}]


def test_a_refused_artifact_is_one_line_not_a_failure(monkeypatch, capsys):
    def refuse(**_):
        raise RuntimeError("no API")

    monkeypatch.setattr("prefect.artifacts.create_markdown_artifact", refuse)
    assert artifacts.publish("flow", markdown="# x", table=[], links=[], what="run x") is False
    assert "Prefect artifacts of run x were not published (RuntimeError: no API)" in capsys.readouterr().err


def test_every_run_publishes_its_report_metrics_and_files(seed_group):
    database = Path(seed_group.env["PREFECT_HOME"]) / "prefect.db"
    with sqlite3.connect(database) as connection:
        rows = connection.execute("select key, type, data from artifact where key is not null").fetchall()
    by_key = {key: (kind, json.loads(data)) for key, kind, data in rows}
    assert by_key["default-report"][0] == "markdown" and by_key["default-report"][1].startswith("# default:")
    kind, table = by_key["default-metrics"]
    assert kind == "table" and [row["model"] for row in json.loads(table)] == ["dense reference", "l2"]
    links = {key: data for key, (kind, data) in by_key.items() if key.endswith("-onnx")}
    assert set(links) == {"default-model-onnx", "default-dense-onnx"}
    assert all("file://" in data and "seed" in data for data in links.values())
