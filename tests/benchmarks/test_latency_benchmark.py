from __future__ import annotations

import json
import math

import onnxruntime as ort
import pytest

from benchmarks.latency import (
    LatencyConfig,
    LatencyStats,
    Provider,
    available_providers,
    measure_latency,
)

STAT_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "runs"}
CPU = Provider.CPU.value


@pytest.fixture(scope="module")
def report(onnx_models, input_shape):
    config = LatencyConfig(batch_sizes=(1, 8), warmup=2, repeats=15, record_schedule=True)
    return measure_latency(onnx_models, input_shape, config)


def test_report_has_one_entry_per_provider_batch_and_model(report):
    by_provider = report.to_dict()["by_provider"]
    assert set(by_provider) == {CPU}
    assert set(by_provider[CPU]) == {"1", "8"}
    for entry in by_provider[CPU].values():
        assert set(entry) == {"dense", "pruned", "speedup_p50"}
        for name in ("dense", "pruned"):
            stats = entry[name]
            assert set(stats) == STAT_KEYS
            assert stats["runs"] == 15
            assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
            assert stats["mean_ms"] > 0
        assert entry["speedup_p50"] == pytest.approx(entry["dense"]["p50_ms"] / entry["pruned"]["p50_ms"])


def test_report_describes_how_it_was_measured(report):
    d = report.to_dict()
    assert d["onnxruntime_version"] == ort.__version__
    assert d["percentile_method"] == "linear"
    assert d["repeats"] == 15 and d["warmup"] == 2
    assert d["intra_op_threads"] is None
    assert d["input_shape"] == [32]
    assert d["machine"]["cpu_count"] >= 1
    assert d["machine"]["platform"] and d["machine"]["processor"]


def test_timed_runs_are_interleaved_round_robin(report):
    schedule = report.to_dict()["schedule"]
    assert len(schedule) == 2 * 15 * 2  # batch sizes * repeats * models
    for batch_size, block in ((1, schedule[:30]), (8, schedule[30:])):
        assert all(run["batch_size"] == batch_size and run["provider"] == CPU for run in block)
        assert [run["model"] for run in block] == ["dense", "pruned"] * 15


def test_round_robin_follows_mapping_order_for_any_names(onnx_models, input_shape):
    models = {"c": onnx_models["pruned"], "a": onnx_models["dense"], "b": onnx_models["pruned"]}
    config = LatencyConfig(batch_sizes=(2,), warmup=0, repeats=3, record_schedule=True)
    d = measure_latency(models, input_shape, config).to_dict()
    assert [run["model"] for run in d["schedule"]] == ["c", "a", "b"] * 3
    # No dense/pruned pair, so no speedup is claimed.
    assert set(d["by_provider"][CPU]["2"]) == {"a", "b", "c"}


def test_schedule_is_omitted_unless_requested(onnx_models, input_shape):
    config = LatencyConfig(batch_sizes=(1,), warmup=0, repeats=2, intra_op_threads=1)
    d = measure_latency(onnx_models, input_shape, config).to_dict()
    assert "schedule" not in d
    assert d["intra_op_threads"] == 1


def test_to_dict_survives_strict_json_round_trip(report):
    d = report.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_non_finite_statistics_become_none():
    stats = LatencyStats(p50_ms=math.nan, p90_ms=math.inf, p99_ms=1.0, mean_ms=-math.inf, runs=3)
    assert stats.to_dict() == {"p50_ms": None, "p90_ms": None, "p99_ms": 1.0, "mean_ms": None, "runs": 3}


def test_unavailable_provider_names_available_ones_and_the_fix(onnx_models, input_shape, monkeypatch):
    # Pretend to be a CPU-only build even where onnxruntime-gpu is installed.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    with pytest.raises(ValueError, match="onnxruntime-gpu") as err:
        measure_latency(onnx_models, input_shape, LatencyConfig(providers=(Provider.CUDA,)))
    assert CPU in str(err.value) and Provider.CUDA.value in str(err.value)
    assert Provider.CUDA not in available_providers()


def test_cpu_provider_is_always_available():
    assert Provider.CPU in available_providers()


def test_config_normalises_lists_and_provider_strings():
    config = LatencyConfig(batch_sizes=[4, 1], providers=[CPU])
    assert config.batch_sizes == (4, 1)
    assert config.providers == (Provider.CPU,)
    hash(config)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_sizes": ()}, TypeError, "batch_sizes"),
        ({"batch_sizes": (1, 1)}, ValueError, "duplicates"),
        ({"batch_sizes": (0,)}, ValueError, "batch_sizes item"),
        ({"batch_sizes": (True,)}, TypeError, "batch_sizes item"),
        ({"repeats": 0}, ValueError, "repeats"),
        ({"warmup": -1}, ValueError, "warmup"),
        ({"providers": ("TPUExecutionProvider",)}, ValueError, "Provider.CPU"),
        ({"intra_op_threads": 0}, ValueError, "intra_op_threads"),
        ({"record_schedule": "yes"}, TypeError, "record_schedule"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        LatencyConfig(**kwargs)


def test_input_shape_mismatch_is_explained(onnx_models):
    with pytest.raises(ValueError, match="input_shape"):
        measure_latency(onnx_models, (3, 32), LatencyConfig(batch_sizes=(1,), warmup=0, repeats=1))


def test_missing_model_file_is_reported(tmp_path, input_shape):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        measure_latency({"dense": tmp_path / "missing.onnx"}, input_shape)


def test_reserved_model_name_is_rejected(onnx_models, input_shape):
    with pytest.raises(ValueError, match="reserved"):
        measure_latency({"speedup_p50": onnx_models["dense"]}, input_shape)
