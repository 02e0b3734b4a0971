"""Dense and pruned energy per 1,000 inferences, measured in alternating windows of one tracker."""
from __future__ import annotations

import json

import pytest

from benchmarks.energy_pair import EnergyRunConfig, check_energy_config, measure_paired_energy
from benchmarks.stage_energy import EnergyMeter

ROW = {"j_per_1k", "g_co2_per_1k", "seconds", "examples"}


def test_alternating_windows_give_per_thousand_figures_and_a_ratio(onnx_models, input_shape):
    config = EnergyRunConfig(batch_sizes=(8, 32), rounds=2, window_s=0.3)
    meter = EnergyMeter("DNK")
    with meter.measure("benchmarking") as whole:
        detail = measure_paired_energy(onnx_models, input_shape, config, meter, intra_op_threads=1)
    meter.close()

    assert detail["available"] and detail["provider"] == "CPUExecutionProvider" and detail["threads"] == 1
    assert json.loads(json.dumps(detail, allow_nan=False)) == detail
    windows = detail["windows"]
    # Two rounds per batch size, the order flipped in the second: dense, pruned, pruned, dense.
    assert [(w["batch_size"], w["round"], w["model"]) for w in windows] == [
        (b, r, m) for b in (8, 32) for r, order in enumerate((("dense", "pruned"), ("pruned", "dense"))) for m in order
    ]
    for window in windows:
        assert window["available"] and window["energy_kwh"] > 0 and window["examples"] == window["calls"] * window["batch_size"]
        assert window["duration_s"] >= 0.3
    for batch in ("8", "32"):
        row = detail["by_batch"][batch]
        assert row["rounds"] == 2
        for name in ("dense", "pruned"):
            mine = [w for w in windows if w["batch_size"] == int(batch) and w["model"] == name]
            assert ROW <= set(row[name])
            assert row[name]["examples"] == sum(w["examples"] for w in mine)
            joules = sum(w["energy_kwh"] for w in mine) * 3.6e6
            assert row[name]["j_per_1k"] == pytest.approx(joules / row[name]["examples"] * 1000)
            grams = sum(w["emissions_kg_co2"] for w in mine) * 1000
            assert row[name]["g_co2_per_1k"] == pytest.approx(grams / row[name]["examples"] * 1000)
        assert row["ratio_pruned_dense"] == pytest.approx(row["pruned"]["j_per_1k"] / row["dense"]["j_per_1k"])
        assert row["ratio_min"] <= row["ratio_max"] and len(row["ratio_by_round"]) == 2
        assert row["ratio_min"] == min(row["ratio_by_round"]) and row["ratio_max"] == max(row["ratio_by_round"])
    # Both models ran in every window (which gets through more is a speed claim: benchmarks/ measure it).
    assert detail["by_batch"]["32"]["pruned"]["examples"] > 0 and detail["by_batch"]["32"]["dense"]["examples"] > 0
    # The windows are pieces of the span around them.
    assert whole.figure.energy_kwh >= sum(w["energy_kwh"] for w in windows) * 0.999


def test_a_failing_window_makes_the_measurement_unavailable(onnx_models, input_shape):
    class BreaksOnStop:
        def start_task(self, name):
            self._active_task = name

        def stop_task(self, name=None):
            raise PermissionError("energy counter not readable")

    meter = EnergyMeter("DNK", tracker_factory=BreaksOnStop)
    detail = measure_paired_energy(onnx_models, input_shape, EnergyRunConfig(window_s=0.05, rounds=3), meter)
    meter.close()
    assert detail["available"] is False and "energy counter not readable" in detail["reason"]
    assert len(detail["windows"]) == 1  # it stops at the first window it cannot measure


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"country_iso_code": "dnk"}, "'dnk'"),
        ({"batch_sizes": ()}, "non-empty"),
        ({"batch_sizes": (0,)}, "integers >= 1"),
        ({"batch_sizes": (8, 8)}, "twice"),
        ({"rounds": 0}, "rounds"),
        ({"window_s": 0.0}, "window_s"),
        ({"window_s": float("nan")}, "window_s"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_config_rejects_bad_values_naming_them(kwargs, fragment):
    with pytest.raises((ValueError, TypeError), match=fragment):
        EnergyRunConfig(**kwargs)


def test_unknown_country_is_one_line_with_examples():
    with pytest.raises(ValueError) as error:
        check_energy_config(EnergyRunConfig(country_iso_code="XYZ"))
    message = str(error.value)
    assert "energy.country_iso_code 'XYZ'" in message and "'DEU'" in message and "'USA'" in message
    assert "\n" not in message
    check_energy_config(EnergyRunConfig(country_iso_code="DEU"))
    check_energy_config(EnergyRunConfig(enabled=False, country_iso_code="XYZ"))  # not measured: not checked
