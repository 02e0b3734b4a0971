"""The numbers a report shows, taken out of one run's report.json.

Every accessor tolerates older reports: a section that is absent (no ``energy`` before energy was
measured, no throughput before it was recorded, no ``torch-*`` latency rows) yields None, which the
text prints as ``n/a`` or ``not measured``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.reporting.text import number, settings_text

DENSE_METHOD = "none"  # FlowConfig.method of a run without a criterion (pipeline.config.schema.DENSE_METHOD)
TORCH_PREFIX = "torch-"  # latency rows of PyTorch eager ("torch-cpu", "torch-cuda"); the others are ORT providers
TRAINING_STAGES = ("training", "fine_tuning", "sparsify")  # sparsify: BMR on weights, when it ran
DENSE_TRAINING_STAGES = ("baseline_training",)
MODELS = ("dense", "pruned")


def section(report: Mapping[str, Any], *keys: str) -> Any:
    """``report[k0][k1]...``; None as soon as a level is missing or not a mapping."""
    node: Any = report
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def criterion_settings(report: Mapping[str, Any]) -> dict[str, Any]:
    settings = section(report, "settings", "criterion_settings")
    return dict(settings) if isinstance(settings, Mapping) else {}


PER_LAYER = "per layer"  # what a label shows for layer_ratios, the per-layer fractions of another run


def comparable_settings(report: Mapping[str, Any]) -> dict[str, Any]:
    """``criterion_settings`` as a comparison groups and labels runs: per-layer ratios (``bmrs
    compare``'s l2, grad and snr_ratio, at another method's fractions of the same seed) stand as ``per layer``,
    so one method at each seed's own fractions is one group, and a label stays one line."""
    settings = criterion_settings(report)
    if isinstance(settings.get("layer_ratios"), Mapping):
        settings["layer_ratios"] = PER_LAYER
    return settings


def method_label(report: Mapping[str, Any]) -> str:
    """The method and the criterion settings it changed from their defaults, e.g. ``bmrs_u (p1=4)``
    or ``l2 (layer_ratios=per layer)``."""
    method = str(report.get("method") or "unknown method")
    settings = comparable_settings(report)
    return f"{method} ({settings_text(settings)})" if settings else method


def is_dense_method(report: Mapping[str, Any]) -> bool:
    return report.get("method") == DENSE_METHOD


def is_sparsified(report: Mapping[str, Any]) -> bool:
    """Whether BMR on weights ran (``bmr_weights``, ``<criterion>+bmr_weights``): the report's
    ``sparsify`` section is its stage's summary."""
    return isinstance(report.get("sparsify"), Mapping)


def ort_runtime(latency: Any) -> str | None:
    """The first ONNX Runtime provider timed (the report's headline runtime); None without one."""
    if not isinstance(latency, Mapping):
        return None
    return next((str(name) for name in latency if not str(name).startswith(TORCH_PREFIX)), None)


def runtime_short(runtime: str) -> str:
    """``CPUExecutionProvider`` -> ``ORT CPU``; ``torch-cuda`` -> ``PyTorch CUDA``."""
    if runtime.startswith(TORCH_PREFIX):
        return "PyTorch " + runtime[len(TORCH_PREFIX):].upper()
    return "ORT " + runtime.removesuffix("ExecutionProvider")


def batch_sizes(latency: Any, runtime: str | None) -> list[int]:
    rows = section(latency, runtime) if runtime is not None else None
    if not isinstance(rows, Mapping):
        return []
    return sorted(int(batch) for batch in rows if str(batch).isdigit())


def latency_value(report: Mapping[str, Any], runtime: str | None, batch: int, key: str) -> float | None:
    """One figure of a latency row, e.g. ``pruned_p50_ms`` or ``speedup_p50``. Throughput, which older
    reports lack, is batch / p50 by its definition (report.json's units) and derived from it then."""
    if runtime is None:
        return None
    row = section(report, "latency", runtime, str(batch))
    if not isinstance(row, Mapping):
        return None
    value = number(row.get(key))
    if value is None and key.endswith("_throughput_per_s"):
        p50 = number(row.get(key.removesuffix("_throughput_per_s") + "_p50_ms"))
        value = None if not p50 else batch * 1000.0 / p50
    return value


MISSING = object()  # a report written before energy was measured has no ``energy`` key at all


def energy(report: Mapping[str, Any]) -> Any:
    """The report's ``energy`` section: a dict, None (measurement disabled) or ``MISSING`` (older report)."""
    return report.get("energy", MISSING)


def energy_available(report: Mapping[str, Any]) -> bool:
    section_ = energy(report)
    return isinstance(section_, Mapping) and bool(section_.get("available", True))


def energy_not_measured(report: Mapping[str, Any], part: Any = None) -> str:
    """Why there is no energy figure: the report predates energy, it was disabled, or the reason given."""
    section_ = energy(report)
    if section_ is MISSING:
        return "not measured (this report predates energy measurement)"
    if section_ is None:
        return "not measured (energy measurement was disabled for this run)"
    for candidate in (part, section_):
        if isinstance(candidate, Mapping) and candidate.get("available") is False:
            return f"not measured ({candidate.get('reason') or 'no reason recorded'})"
    return "not measured"


def energy_estimated(report: Mapping[str, Any]) -> bool | None:
    """True: a model's estimate (e.g. TDP times load); False: read from a hardware counter; None: unknown."""
    mode = section(report, "energy", "mode")
    if not isinstance(mode, Mapping):
        return None
    if isinstance(mode.get("estimated"), bool):
        return mode["estimated"]
    if isinstance(mode.get("cpu_measured"), bool):
        return not mode["cpu_measured"]
    return None


def energy_tag(report: Mapping[str, Any]) -> str:
    """One word for the key line: ``estimate``, ``measured`` or ``method unknown``."""
    return {True: "estimate", False: "measured", None: "method unknown"}[energy_estimated(report)]


def energy_mode_words(report: Mapping[str, Any]) -> str:
    """How the energy figures were obtained, in a sentence a reader can weigh them by."""
    if not energy_available(report):
        return energy_not_measured(report) + "."
    estimated = energy_estimated(report)
    kind = {
        True: "These energy figures are an estimate (a power model, not a hardware energy counter)",
        False: "These energy figures were measured with a hardware energy counter",
        None: "How these energy figures were obtained was not recorded",
    }[estimated]
    note = section(report, "energy", "note")
    summary = section(report, "energy", "mode", "summary")
    country = section(report, "energy", "country_iso_code")
    words = [kind + "."]
    if note:
        note = str(note).strip().rstrip(".")
        words.append(note[:1].upper() + note[1:] + ".")
    if summary:
        words.append(f"codecarbon: {summary}.")
    if country:
        words.append(f"CO2 from the grid carbon intensity of {country}.")
    return " ".join(words)


def inference_energy_batches(report: Mapping[str, Any]) -> list[int]:
    by_batch = section(report, "energy", "inference", "by_batch")
    if not isinstance(by_batch, Mapping):
        return []
    return sorted(int(batch) for batch in by_batch if str(batch).isdigit())


def inference_energy(report: Mapping[str, Any], model: str, key: str, batch: int | None = None) -> float | None:
    """``j_per_1k`` or ``g_co2_per_1k`` of ``model`` ("dense", "pruned") at ``batch`` (default: the
    largest batch measured)."""
    batches = inference_energy_batches(report)
    if not batches:
        return None
    batch = batches[-1] if batch is None else batch
    return number(section(report, "energy", "inference", "by_batch", str(batch), model, key))


def stage_energy(report: Mapping[str, Any], stages: tuple[str, ...], key: str = "energy_kwh") -> float | None:
    """The sum over ``stages``; a stage the run did not have (no fine-tuning epochs) adds nothing, but
    one that ran unmeasured makes the sum unknown (None), rather than quietly short."""
    total, found = 0.0, False
    for stage in stages:
        entry = section(report, "energy", "stages", stage)
        if entry is None:
            continue
        value = number(section(entry, key)) if section(entry, "available") is not False else None
        if value is None:
            return None
        total, found = total + value, True
    return total if found else None


def model_figures(report: Mapping[str, Any], model: str, runtime: str | None, batches: list[int]) -> dict[str, float | None]:
    """The figures of one model ("dense" or "pruned") of a run, flat, as comparisons aggregate them.
    Latency keys carry the batch size: ``p50_ms_b256``, ``throughput_per_s_b256``, ``speedup_p50_b256``
    (and its run's own range, ``speedup_p50_min_b256`` / ``speedup_p50_max_b256``, when stated)."""
    part = section(report, model) or {}
    onnx = section(report, "onnx") if model == "pruned" else section(report, "dense", "onnx")
    figures: dict[str, float | None] = {
        "accuracy": number(part.get("accuracy")),
        "nll": number(part.get("nll")),
        "ece": number(part.get("ece")),
        "compression": number(part.get("compression")) if model == "pruned" else 0.0,
        # Structures sliced away, the shipped weights that are exactly 0, and every parameter removed;
        # reports older than BMR on weights lack them (None). The dense model's weights are not counted.
        "structured_compression": number(part.get("structured_compression")) if model == "pruned" else 0.0,
        "weight_sparsity": number(part.get("weight_sparsity")) if model == "pruned" else None,
        "total_removed": number(part.get("total_removed")) if model == "pruned" else 0.0,
        "params": number(part.get("params")),
        "flops": number(part.get("flops")),
        "onnx_bytes": number(section(onnx, "bytes")),
    }
    for batch in batches:
        figures[f"p50_ms_b{batch}"] = latency_value(report, runtime, batch, f"{model}_p50_ms")
        figures[f"throughput_per_s_b{batch}"] = latency_value(report, runtime, batch, f"{model}_throughput_per_s")
        if model == "pruned":
            figures[f"speedup_p50_b{batch}"] = latency_value(report, runtime, batch, "speedup_p50")
            for end in ("min", "max"):  # the run's own spread, over blocks of its repeats
                figures[f"speedup_p50_{end}_b{batch}"] = latency_value(report, runtime, batch, f"speedup_p50_{end}")
    figures["energy_j_per_1k"] = inference_energy(report, model, "j_per_1k")
    figures["co2_g_per_1k"] = inference_energy(report, model, "g_co2_per_1k")
    figures["training_energy_kwh"] = stage_energy(report, TRAINING_STAGES if model == "pruned" else DENSE_TRAINING_STAGES)
    return figures
