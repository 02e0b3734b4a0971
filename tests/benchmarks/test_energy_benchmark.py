from __future__ import annotations

import json
import logging
import math

import pytest

from benchmarks.energy import EnergyConfig, TrackingMode, measure_energy
from benchmarks.latency import Provider

NUMBERS = ("duration_s", "energy_kwh", "cpu_energy_kwh", "ram_energy_kwh", "gpu_energy_kwh",
           "emissions_kg_co2", "energy_per_inference_j", "energy_per_sample_j")




def test_short_real_run_reports_finite_energy_and_its_method(onnx_models, input_shape, no_network):
    import codecarbon  # noqa: F401  (configures its logger on import; snapshot after that)

    logger = logging.getLogger("codecarbon")
    before = (logger.level, list(logger.handlers))

    report = measure_energy(onnx_models["dense"], input_shape, EnergyConfig(duration_s=1.5, batch_size=4))

    assert no_network == []
    assert (logger.level, list(logger.handlers)) == before
    d = report.to_dict()
    for key in NUMBERS:
        assert math.isfinite(d[key]) and d[key] >= 0, key
    assert d["energy_kwh"] > 0
    assert d["inferences"] >= 1 and d["batch_size"] == 4
    assert d["duration_s"] >= 1.5
    assert d["country_iso_code"] == "DNK" and d["provider"] == Provider.CPU.value
    mode = d["mode"]
    assert mode["cpu_method"] not in ("", "unknown")
    assert isinstance(mode["cpu_measured"], bool)
    assert mode["ram_method"] not in ("", "unknown")
    assert mode["tracking_mode"] == TrackingMode.MACHINE.value
    assert mode["hardware"] and mode["summary"].startswith("CPU: ")
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_repeats_mode_runs_exactly_that_many_and_writes_csv_when_asked(
    onnx_models, input_shape, tmp_path, no_network
):
    out = tmp_path / "codecarbon"
    config = EnergyConfig(repeats=50, batch_size=2, warmup=0, output_dir=out)
    report = measure_energy(onnx_models["pruned"], input_shape, config)
    assert no_network == []
    assert report.inferences == 50
    assert (out / "emissions.csv").is_file()
    assert report.mode.cpu_method not in ("", "unknown")


def test_unknown_country_is_rejected_before_running(onnx_models, input_shape):
    with pytest.raises(ValueError, match="XYZ"):
        measure_energy(onnx_models["dense"], input_shape, EnergyConfig(country_iso_code="XYZ"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"duration_s": 1.0, "repeats": 5}, ValueError, "not both"),
        ({"duration_s": 0}, ValueError, "duration_s"),
        ({"duration_s": math.inf}, ValueError, "duration_s"),
        ({"repeats": 0}, ValueError, "repeats"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"country_iso_code": "dk"}, ValueError, "DNK"),
        ({"provider": "CPUExecutionProvider"}, TypeError, "Provider.CPU"),
        ({"tracking_mode": "machine"}, TypeError, "TrackingMode.MACHINE"),
    ],
)
def test_config_rejects_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        EnergyConfig(**kwargs)
