from __future__ import annotations

import json
import math

import numpy as np

import onnxruntime as ort
import pytest
import torch

from benchmarks.latency import (
    LatencyConfig,
    LatencyStats,
    Provider,
    TorchDevice,
    available_providers,
    available_torch_devices,
    measure_latency,
    measure_torch_latency,
)

STAT_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "runs", "throughput_per_s"}
CPU = Provider.CPU.value
TORCH_CPU = TorchDevice.CPU.value


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
    assert d["machine"]["vector_isa"] in ("AVX-512", "AVX2", "older than AVX2", "unknown")


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
    stats = LatencyStats(p50_ms=math.nan, p90_ms=math.inf, p99_ms=1.0, mean_ms=-math.inf, runs=3, throughput_per_s=math.inf)
    assert stats.to_dict() == {
        "p50_ms": None, "p90_ms": None, "p99_ms": 1.0, "mean_ms": None, "runs": 3, "throughput_per_s": None
    }  # fmt: skip


def test_throughput_is_examples_per_second_at_the_median(report):
    for batch_size, entry in report.to_dict()["by_provider"][CPU].items():
        for name in ("dense", "pruned"):
            stats = entry[name]
            assert stats["throughput_per_s"] == pytest.approx(int(batch_size) / (stats["p50_ms"] / 1e3))
    samples = np.array([2_000_000, 4_000_000, 6_000_000])  # ns: p50 of 4 ms
    assert LatencyStats.from_ns(samples, 8).throughput_per_s == pytest.approx(2000.0)


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


# --- PyTorch eager -----------------------------------------------------------------------------


def _mlp(hidden: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))


@pytest.fixture(scope="module")
def modules() -> dict[str, torch.nn.Module]:
    # Training mode on purpose: the benchmark must time copies in evaluation mode.
    return {"dense": _mlp(64), "pruned": _mlp(16)}


@pytest.fixture(scope="module")
def torch_report(modules, input_shape):
    config = LatencyConfig(batch_sizes=(1, 8), warmup=2, repeats=15, record_schedule=True,
                           torch_devices=(TorchDevice.CPU,))  # fmt: skip
    return measure_torch_latency(modules, input_shape, config)


def test_torch_cpu_rows_have_the_ort_rows_keys(torch_report):
    d = torch_report.to_dict()
    assert set(d["by_provider"]) == {TORCH_CPU}
    assert set(d["by_provider"][TORCH_CPU]) == {"1", "8"}
    for batch_size, entry in d["by_provider"][TORCH_CPU].items():
        assert set(entry) == {"dense", "pruned", "speedup_p50"}
        for name in ("dense", "pruned"):
            stats = entry[name]
            assert set(stats) == STAT_KEYS and stats["runs"] == 15
            assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
            assert stats["throughput_per_s"] == pytest.approx(int(batch_size) / (stats["p50_ms"] / 1e3))
        assert entry["speedup_p50"] == pytest.approx(entry["dense"]["p50_ms"] / entry["pruned"]["p50_ms"])
    assert torch_report.batch(8, TORCH_CPU).stats("pruned").runs == 15
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_torch_report_records_version_threads_and_device(torch_report):
    d = torch_report.to_dict()
    assert "onnxruntime_version" not in d and d["thread_spinning"] is None
    assert d["torch"]["torch_version"] == torch.__version__
    assert d["torch"]["intra_op_threads"] == torch.get_num_threads() >= 1
    assert d["torch"]["devices"] == {TORCH_CPU: d["machine"]["processor"]}
    assert d["models"] == {"dense": "Sequential (2762 parameters)", "pruned": "Sequential (698 parameters)"}
    assert "inference_mode" in d["timer"] and (d["warmup"], d["repeats"], d["seed"]) == (2, 15, 0)


def test_torch_runs_are_interleaved_like_ort(torch_report, report):
    torch_schedule = torch_report.to_dict()["schedule"]
    ort_schedule = report.to_dict()["schedule"]
    assert all(run["provider"] == TORCH_CPU for run in torch_schedule)
    strip = lambda schedule: [(run["batch_size"], run["model"]) for run in schedule]  # noqa: E731
    assert strip(torch_schedule) == strip(ort_schedule) == [(1, "dense"), (1, "pruned")] * 15 + [(8, "dense"), (8, "pruned")] * 15


def test_callers_modules_keep_their_mode_and_threads_are_restored(modules, input_shape):
    threads = torch.get_num_threads()
    config = LatencyConfig(batch_sizes=(2,), warmup=0, repeats=2, intra_op_threads=1, torch_devices=("cpu",))
    d = measure_torch_latency(modules, input_shape, config).to_dict()
    assert d["torch"]["intra_op_threads"] == 1 and d["intra_op_threads"] == 1
    assert torch.get_num_threads() == threads
    assert all(m.training for m in modules.values())


def test_default_devices_are_cpu_plus_cuda_when_available(modules, input_shape, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_torch_devices() == (TorchDevice.CPU,)
    d = measure_torch_latency(modules, input_shape, LatencyConfig(batch_sizes=(1,), warmup=0, repeats=1)).to_dict()
    assert set(d["by_provider"]) == {TORCH_CPU}


def test_cuda_request_without_cuda_is_one_clear_error(modules, input_shape, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = LatencyConfig(batch_sizes=(1,), warmup=0, repeats=1, torch_devices=(TorchDevice.CPU, TorchDevice.CUDA))
    with pytest.raises(ValueError, match=r"\['torch-cuda'\] not available") as err:
        measure_torch_latency(modules, input_shape, config)
    assert "torch_devices=(TorchDevice.CPU,)" in str(err.value) and "torch.cuda.is_available() == False" in str(err.value)


def test_torch_devices_are_normalised_and_checked():
    assert LatencyConfig(torch_devices=["cpu", "torch-cuda"]).torch_devices == (TorchDevice.CPU, TorchDevice.CUDA)
    assert LatencyConfig(torch_devices=[]).torch_devices == ()
    assert LatencyConfig().torch_devices is None
    with pytest.raises(ValueError, match="duplicates"):
        LatencyConfig(torch_devices=("cpu", TorchDevice.CPU))
    with pytest.raises(ValueError, match="TorchDevice.CPU"):
        LatencyConfig(torch_devices=("tpu",))


def test_torch_timing_refuses_onnx_paths_and_an_empty_device_list(onnx_models, modules, input_shape):
    with pytest.raises(TypeError, match="measure_latency"):
        measure_torch_latency(onnx_models, input_shape)
    with pytest.raises(ValueError, match="nothing to time"):
        measure_torch_latency(modules, input_shape, LatencyConfig(torch_devices=()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of torch")
def test_torch_cuda_rows_name_the_gpu_and_leave_the_modules_on_the_cpu(modules, input_shape):
    config = LatencyConfig(batch_sizes=(1, 64), warmup=3, repeats=10, record_schedule=True, torch_devices=("cpu", "cuda"))
    d = measure_torch_latency(modules, input_shape, config).to_dict()
    assert list(d["by_provider"]) == [TORCH_CPU, TorchDevice.CUDA.value]
    assert d["torch"]["devices"][TorchDevice.CUDA.value] == torch.cuda.get_device_name(torch.cuda.current_device())
    for entry in d["by_provider"][TorchDevice.CUDA.value].values():
        assert set(entry) == {"dense", "pruned", "speedup_p50"} and entry["dense"]["p50_ms"] > 0
    assert [run["provider"] for run in d["schedule"]] == [TORCH_CPU] * 40 + [TorchDevice.CUDA.value] * 40
    assert all(p.device.type == "cpu" for m in modules.values() for p in m.parameters())


def test_block_speedups_are_the_p50_ratio_within_each_block_of_repeats():
    from benchmarks.latency_report import MIN_BLOCK_REPEATS, SPEEDUP_BLOCKS, block_speedups

    # Dense always takes twice the pruned time, but the machine slows down 3x halfway through:
    # every block still states 2x, and the blocks follow the repeats' order.
    repeats = SPEEDUP_BLOCKS * MIN_BLOCK_REPEATS
    load = np.where(np.arange(repeats) < repeats // 2, 1.0, 3.0)
    pruned = (1_000_000 * load).astype(np.int64)
    ratios = block_speedups({"dense": 2 * pruned, "pruned": pruned})
    assert ratios == pytest.approx([2.0] * SPEEDUP_BLOCKS)
    # One block with a slow pruned model shows as that block's ratio alone.
    skewed = pruned.copy()
    skewed[:MIN_BLOCK_REPEATS] *= 2
    assert block_speedups({"dense": 2 * pruned, "pruned": skewed}) == pytest.approx([1.0] + [2.0] * (SPEEDUP_BLOCKS - 1))
    # Too few repeats for two blocks, or no dense/pruned pair: no range is stated.
    assert block_speedups({"dense": pruned[: 2 * MIN_BLOCK_REPEATS - 1], "pruned": pruned[: 2 * MIN_BLOCK_REPEATS - 1]}) == ()
    assert block_speedups({"a": pruned, "b": pruned}) == ()


def test_report_states_the_speedups_range_over_blocks(onnx_models, input_shape):
    config = LatencyConfig(batch_sizes=(4,), warmup=1, repeats=20)
    report = measure_latency(onnx_models, input_shape, config)
    entry = report.to_dict()["by_provider"][CPU]["4"]
    assert set(entry) == {"dense", "pruned", "speedup_p50", "speedup_p50_min", "speedup_p50_max", "speedup_p50_blocks"}
    assert len(entry["speedup_p50_blocks"]) == 2
    assert entry["speedup_p50_min"] == min(entry["speedup_p50_blocks"]) <= entry["speedup_p50_max"] == max(entry["speedup_p50_blocks"])
    assert report.batch(4).speedup_p50_range == (entry["speedup_p50_min"], entry["speedup_p50_max"])
    with pytest.raises(ValueError, match="reserved"):
        measure_latency({"speedup_p50_min": onnx_models["dense"]}, input_shape, config)
