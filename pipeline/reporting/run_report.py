"""One run's ``report.md``, written from its report.json (with status.json, config.json,
train/history.json and bench/latency.json when present), and the one-line summary ``bmrs run`` prints."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.reporting import figures as fig
from pipeline.reporting.load import Run, load_run
from pipeline.reporting.text import NA, count, decimal, number, percent, settings_text, significant, table, short_decimal, times

STAGE_NAMES = {
    "training": "training (pruned model)",
    "fine_tuning": "fine-tuning",
    "sparsify": "sparsification (BMR on weights)",
    "baseline_training": "training (dense baseline)",
    "slicing_export": "slicing and ONNX export",
    "benchmarking": "benchmarking",
}


def write_run_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md``; ValueError naming the directory when the run has no report yet."""
    run = load_run(Path(run_dir))
    if not run.finished:
        raise ValueError(f"{str(run.run_dir)!r} has no report.json yet (state {run.state}); "
                         f"finish the run with `bmrs resume {run.run_dir}` first")
    return _write_text(run.run_dir / "report.md", run_markdown(run))


def write_run_report_or_warn(run_dir: Path) -> Path | None:
    """``write_run_report`` at the end of a run. ``report.md`` is a view of files already written: a
    rendering error leaves the finished run (its models, report.json, status) as it is and prints
    how to retry, rather than failing a run whose models were measured and written."""
    try:
        return write_run_report(run_dir)
    except Exception as error:  # noqa: BLE001 - see the docstring
        print(f"bmrs: report.md was not written ({type(error).__name__}: {error}); `bmrs report {run_dir}` retries")
        return None


def _write_text(path: Path, text: str) -> Path:
    partial = path.with_name(f".{path.name}.partial")  # never a half-written report
    partial.write_text(text)
    os.replace(partial, path)
    return path


def key_line(report: dict) -> str:
    """E.g. ``bmrs_n: 62.1% of parameters removed, accuracy 87.6% vs dense 88.2% (-0.6 pt), p50 batch
    256 2.9x faster (ORT CPU), energy per 1k inferences 0.41 J vs 1.20 J (estimate)``."""
    label = fig.method_label(report)
    pruned, dense = fig.section(report, "pruned") or {}, fig.section(report, "dense") or {}
    parts = []
    if fig.is_dense_method(report):
        label += " (dense model)"
    elif fig.is_sparsified(report):
        parts.append(f"{percent(pruned.get('compression'))} of parameters removed ({_removed_how(pruned)})")
    else:
        parts.append(f"{percent(pruned.get('compression'))} of parameters removed")
    accuracy, dense_accuracy = number(pruned.get("accuracy")), number(dense.get("accuracy"))
    if dense_accuracy is None:
        parts.append(f"accuracy {percent(accuracy)} (no dense baseline trained)")
    else:
        drop = NA if accuracy is None else f"{100.0 * (accuracy - dense_accuracy):+.1f} pt"
        parts.append(f"accuracy {percent(accuracy)} vs dense {percent(dense_accuracy)} ({drop})")
    runtime = fig.ort_runtime(report.get("latency"))
    batches = fig.batch_sizes(report.get("latency"), runtime)
    if batches:
        batch = batches[-1]
        speedup = fig.latency_value(report, runtime, batch, "speedup_p50")
        if fig.is_dense_method(report) or speedup is None:
            p50 = fig.latency_value(report, runtime, batch, "pruned_p50_ms")
            parts.append(f"p50 batch {batch} {significant(p50, 3)} ms ({fig.runtime_short(runtime)})")
        else:
            faster = f"{times(speedup)} faster" if speedup >= 1 else f"{times(1.0 / speedup)} slower"
            parts.append(f"p50 batch {batch} {faster} ({fig.runtime_short(runtime)})")
    else:
        parts.append("latency not measured")
    joules = fig.inference_energy(report, "pruned", "j_per_1k")
    if joules is None:
        parts.append("energy not measured")
    else:
        dense_joules = fig.inference_energy(report, "dense", "j_per_1k")
        versus = "" if fig.is_dense_method(report) else f" vs {short_decimal(dense_joules)} J"
        parts.append(f"energy per 1k inferences {short_decimal(joules)} J{versus} ({fig.energy_tag(report)})")
    return f"{label}: " + ", ".join(parts)


def _removed_how(pruned: Mapping[str, Any]) -> str:
    """How a sparsified model's parameters were removed: ``91.2% of the weights exactly 0`` and, when
    structures went first, ``41.0% by slicing`` before it."""
    zeros = f"{percent(pruned.get('weight_sparsity'))} of the weights exactly 0"
    structured = number(pruned.get("structured_compression"))
    return zeros if not structured else f"{percent(structured)} by slicing, then {zeros}"


def run_markdown(run: Run) -> str:
    report = run.report or {}
    runtime = fig.ort_runtime(report.get("latency"))
    batches = fig.batch_sizes(report.get("latency"), runtime)
    lines = [f"# {report.get('flow', 'run')}: {report.get('model', '?')} on {report.get('dataset', '?')}, "
             f"{fig.method_label(report)}", ""]
    lines += [_settings_line(run), ""]
    state = f"**State: {run.state}**"
    lines += [state + (f": {run.warning}" if run.warning else ""), "", f"`{key_line(report)}`", ""]
    lines += _results(report, runtime, batches)
    lines += _weight_sparsity(report, runtime, batches)
    lines += _latency(report)
    lines += _energy(report)
    lines += _training(run)
    lines += _how_measured(run, runtime)
    return "\n".join(lines).rstrip() + "\n"


def _settings_line(run: Run) -> str:
    report = run.report or {}
    settings = fig.criterion_settings(report)
    method = f"Method `{report.get('method', '?')}`"
    if fig.is_dense_method(report):
        method += " (no criterion: the dense model)"
    elif report.get("method") == "bmr_weights":
        method += " (no criterion: BMR on the dense model's weights)"
    elif settings:
        method += f", criterion settings {settings_text(settings)} (the others at their defaults)"
    else:
        method += ", criterion settings at their defaults"
    other = fig.section(report, "settings") or {}
    words = [method]
    if "kl_weighting" in other:
        words.append(f"KL weighting {other['kl_weighting']}")
    if "finetune_noise" in other:
        words.append(f"fine-tuning noise {other['finetune_noise']}")
    sparsify = other.get("sparsify")
    if isinstance(sparsify, Mapping):
        shown = {key: sparsify[key] for key in ("epochs", "finetune_epochs", "max_rounds", "init_std", "lr") if key in sparsify}
        words.append(f"BMR on weights {settings_text(shown)} (sparsify section)")
    if run.seed is not None:
        words.append(f"train.seed {run.seed}")
    return "; ".join(words) + "."


def _export_notes(report: Mapping[str, Any]) -> list[str]:
    """What the shipped files are beyond the table: widths rounded up (and what that cost), the
    ONNX number type, and where the sliced PyTorch model is."""
    pruned = report.get("pruned") or {}
    notes = []
    round_to, unrounded = pruned.get("round_to"), number(pruned.get("compression_unrounded"))
    if round_to and round_to > 1 and unrounded is not None:
        notes.append(f"Widths rounded up to multiples of {round_to} (export.round_to): {percent(pruned.get('compression'))} "
                     f"removed, against {percent(unrounded)} without rounding.")
    dtype = fig.section(report, "pruned", "onnx", "dtype")
    if dtype and dtype != "float32":
        notes.append(f"model.onnx computes in {dtype}; its parity with the evaluated model is judged by the fp16 bound.")
        if any(str(runtime).startswith("torch") for runtime in report.get("latency") or {}):
            # PyTorch has no fp16 CPU kernels worth timing: eager timing stays on the float32 modules.
            notes.append("PyTorch eager latency is of the float32 modules the ONNX files were exported from.")
    if pruned.get("sliced_model"):
        notes.append(f"The sliced PyTorch model: `{pruned['sliced_model']}` (`export.saved.load_sliced`).")
    return [" ".join(notes), ""] if notes else []


def _results(report: Mapping[str, Any], runtime: str | None, batches: list[int]) -> list[str]:
    energy_batches = fig.inference_energy_batches(report)
    energy_batch = energy_batches[-1] if energy_batches else None
    largest = batches[-1] if batches else None
    header = ["model", "accuracy", "NLL", "ECE", "compression", "params", "MACs", "ONNX bytes"]
    header += [f"p50 batch {batch} (ms)" for batch in batches]
    header += [f"throughput batch {largest} (/s)" if largest else "throughput (/s)",
               "energy per 1k inferences (J)", "CO2 per 1k inferences (g)"]
    rows = []
    for model, name in (("dense", "dense reference"), ("pruned", fig.method_label(report))):
        values = fig.model_figures(report, model, runtime, batches)
        row = [name, percent(values["accuracy"], 2), decimal(values["nll"]), decimal(values["ece"]),
               percent(values["compression"]), count(values["params"]), count(values["flops"]), count(values["onnx_bytes"])]
        for batch in batches:
            cell = significant(values[f"p50_ms_b{batch}"])
            speedup = values.get(f"speedup_p50_b{batch}")
            row.append(cell if speedup is None or model == "dense" else f"{cell} ({times(speedup)})")
        row.append(NA if largest is None else significant(values[f"throughput_per_s_b{largest}"]))
        row += [significant(values["energy_j_per_1k"], 3), significant(values["co2_g_per_1k"], 3)]
        rows.append(row)
    lines = ["## Results", "", *table(header, rows), ""]
    lines += _export_notes(report)
    if number(fig.section(report, "dense", "accuracy")) is None:
        lines += ["The dense baseline was not trained (baseline.enabled: false): its row gives its size only.", ""]
    if runtime is None:
        lines += ["Latency: not measured.", ""]
    else:
        lines += [f"Latency: median (p50) per batch through {fig.runtime_short(runtime)} ({runtime}); in brackets "
                  "the speed-up, dense p50 / pruned p50, both timed interleaved in this run.", ""]
    if energy_batch is None:
        why = fig.energy_not_measured(report, fig.section(report, "energy", "inference"))
        lines += [f"Energy and CO2 per 1k inferences: {why}.", ""]
    else:
        provider = fig.section(report, "energy", "inference", "provider") or "ONNX Runtime"
        lines += [f"Energy and CO2 per 1,000 inferences at batch {energy_batch} through {provider}: "
                  f"{fig.energy_tag(report)} (see How measured).", ""]
    return lines


def _weight_sparsity(report: Mapping[str, Any], runtime: str | None, batches: list[int]) -> list[str]:
    """Structures and weights removed, apart and together; what the dense-with-zeros file and a sparse
    encoding of it weigh; and the measured speed-up beside them (only for runs that sparsified)."""
    if not fig.is_sparsified(report):
        return []
    pruned = fig.section(report, "pruned") or {}
    sizes = pruned.get("sparse_encoding") if isinstance(pruned.get("sparse_encoding"), Mapping) else {}
    stage = report.get("sparsify") or {}
    lines = ["## Weight sparsity (BMR on individual weights)", "",
             "In the results above, compression counts every parameter removed, structures and weights together; "
             "params and MACs count the shipped shapes, zeros included.", ""]
    header = ["structures removed (slicing)", "weights exactly 0 (of the shipped Linear/Conv2d weights)",
              "parameters removed in all", "params (shipped shapes)", "nonzero params", "dense params"]
    lines += [*table(header, [[percent(pruned.get("structured_compression")), percent(pruned.get("weight_sparsity")),
                               percent(pruned.get("total_removed")), count(pruned.get("params")),
                               count(pruned.get("nonzero_params")), count(pruned.get("unpruned_params"))]]), ""]
    lines += [*table(["model.onnx (bytes)", "deflated, zlib 9 (bytes)", "CSR weights + other tensors (bytes)",
                      "weights dense (bytes)", "weights in CSR (bytes)"],
                     [[count(sizes.get("onnx_bytes")), count(sizes.get("deflate_bytes")), count(sizes.get("sparse_model_bytes")),
                       count(sizes.get("dense_weight_bytes")), count(sizes.get("csr_bytes"))]]), ""]
    speedups = [f"{times(fig.latency_value(report, runtime, batch, 'speedup_p50'))} at batch {batch}" for batch in batches]
    latency = (f"the measured p50 speed-up over the dense model through {fig.runtime_short(runtime)} is {', '.join(speedups)}"
               if runtime is not None and speedups else "latency was not measured")
    structured = number(pruned.get("structured_compression"))
    source = ("any speed-up comes from the structures sliced away" if structured else
              "no structure was removed, so no speed-up is to be expected")
    lines += [f"model.onnx is dense-with-zeros: it stores every weight of the shipped shapes, the removed ones as exact "
              f"zeros ({count(sizes.get('onnx_zeros'))} zero entries), so it weighs {count(sizes.get('onnx_bytes'))} bytes; "
              f"deflated {count(sizes.get('deflate_bytes'))} bytes, and with its Linear/Conv2d weights in CSR form (int32 "
              f"indices) {count(sizes.get('sparse_model_bytes'))} bytes. ONNX Runtime's dense kernels multiply the zeros "
              f"like any other weight and the MACs column counts them, so {source}: {latency}.", ""]
    removed = stage.get("removed_per_round") or []
    steps_ms = [1e3 * value for value in stage.get("df_step_seconds") or [] if number(value) is not None]
    rounds = stage.get("rounds")
    lines += [f"BMR ran {count(rounds)} dF round{'' if rounds == 1 else 's'} after its SVI fit ({count(stage.get('epochs'))} SVI epochs "
              f"in all; weights removed per round: {', '.join(count(r) for r in removed) or 'none'}"
              f"{'; it stopped when a round removed nothing' if stage.get('stopped_early') else ''}); each dF step took "
              f"{', '.join(significant(ms, 3) for ms in steps_ms) or 'n/a'} ms, an SVI epoch "
              f"{significant(stage.get('epoch_seconds_mean'), 3)} s on average; validation accuracy after the last round "
              f"{percent(stage.get('val_accuracy'), 2)}.", ""]
    return lines


def _latency(report: Mapping[str, Any]) -> list[str]:
    latency = report.get("latency")
    lines = ["## Latency per runtime", ""]
    if not isinstance(latency, Mapping) or not latency:
        return lines + ["Latency: not measured.", ""]
    header = ["batch", "dense p50 (ms)", "pruned p50 (ms)", "dense p90", "pruned p90", "dense p99", "pruned p99",
              "speed-up p50", "dense throughput (/s)", "pruned throughput (/s)"]
    for runtime in latency:
        rows = []
        for batch in fig.batch_sizes(latency, runtime):
            def value(key: str) -> float | None:
                return fig.latency_value(report, runtime, batch, key)

            percentiles = [significant(value(f"{model}_{stat}_ms")) for stat in ("p50", "p90", "p99") for model in fig.MODELS]
            spread = (value("speedup_p50_min"), value("speedup_p50_max"))
            speedup = times(value("speedup_p50")) + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if None not in spread else "")
            rows.append([str(batch), *percentiles, speedup,
                         significant(value("dense_throughput_per_s")), significant(value("pruned_throughput_per_s"))])
        lines += [f"### {fig.runtime_short(runtime)} ({runtime})", "", *table(header, rows), ""]
    lines += ["Speed-up p50: dense p50 / pruned p50, the two timed interleaved; in brackets the lowest and "
              "highest of the same ratio over blocks of consecutive repeats, its spread within this measurement.", ""]
    remeasured = report.get("latency_remeasured")
    if isinstance(remeasured, list) and remeasured:
        lines += [f"Re-measured {len(remeasured)} time(s) after the run (`bmrs report --remeasure-latency`), last "
                  f"{remeasured[-1].get('time')}; the figures it replaced are in report.json's latency_remeasured.", ""]
    missing = [name for name in ("torch-cpu", "torch-cuda") if name not in latency]
    if missing:
        lines += [f"PyTorch eager ({', '.join(missing)}): not measured in this run "
                  "(latency.torch_devices, or no such device on the machine).", ""]
    return lines


def _energy(report: Mapping[str, Any]) -> list[str]:
    lines = ["## Energy", ""]
    if not fig.energy_available(report):
        return lines + [fig.energy_not_measured(report).capitalize() + ".", ""]
    inference = fig.section(report, "energy", "inference")
    lines += ["### Inference", ""]
    if fig.inference_energy_batches(report):
        threads = fig.section(inference, "threads")
        lines += [f"Through {inference.get('provider', 'ONNX Runtime')}, "
                  f"{'default' if threads is None else threads} intra-op threads.", ""]
        header = ["batch", "dense J / 1k", "pruned J / 1k", "pruned / dense (range over rounds)",
                  "dense g CO2 / 1k", "pruned g CO2 / 1k", "rounds"]
        rows = []
        for batch in fig.inference_energy_batches(report):
            row = inference["by_batch"][str(batch)]
            ratio = fig.section(row, "ratio_pruned_dense")
            spread = f"{decimal(row.get('ratio_min'), 3)}-{decimal(row.get('ratio_max'), 3)}"
            def figure(model: str, key: str) -> str:
                return significant(fig.inference_energy(report, model, key, batch), 3)

            rows.append([str(batch), figure("dense", "j_per_1k"), figure("pruned", "j_per_1k"), f"{decimal(ratio, 3)} ({spread})",
                         figure("dense", "g_co2_per_1k"), figure("pruned", "g_co2_per_1k"), count(row.get("rounds"))])
        lines += [*table(header, rows), ""]
    else:
        lines += [fig.energy_not_measured(report, inference).capitalize() + ".", ""]
    stages = fig.section(report, "energy", "stages")
    lines += ["### Per stage", ""]
    if not isinstance(stages, Mapping) or not stages:
        return lines + ["Not measured.", ""]
    rows = []
    for stage, figures in stages.items():
        name = STAGE_NAMES.get(stage, stage)
        if not isinstance(figures, Mapping) or not figures.get("available", False):
            reason = fig.section(figures, "reason") if isinstance(figures, Mapping) else None
            rows.append([name, f"not measured ({reason or 'no reason recorded'})", NA, NA, NA])
            continue
        rows.append([name, significant(figures.get("energy_kwh"), 3), significant(figures.get("emissions_kg_co2"), 3),
                     decimal(figures.get("duration_s"), 1), count(figures.get("attempts"))])
    return lines + [*table(["stage", "energy (kWh)", "CO2 (kg)", "duration (s)", "attempts"], rows), ""]


def _training(run: Run) -> list[str]:
    lines = ["## Training", ""]
    curve = run.run_dir / "train" / "curve.png"
    lines += ["![validation accuracy and compression per epoch](train/curve.png)" if curve.is_file()
              else "Training curve: not available (train/curve.png is missing).", ""]
    try:
        history = json.loads((run.run_dir / "train" / "history.json").read_text())
        epochs = [record for record in history if isinstance(record, Mapping)]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
        epochs = []
    if epochs:
        finetune = sum(1 for record in epochs if record.get("phase") == "finetune")
        best = max(epochs, key=lambda record: number(record.get("val_accuracy")) or -1.0)
        last = epochs[-1]
        lines += [f"{len(epochs)} epochs ({finetune} of them fine-tuning); best validation accuracy "
                  f"{percent(best.get('val_accuracy'), 2)} at epoch {best.get('epoch', '?')}; after the last: validation "
                  f"accuracy {percent(last.get('val_accuracy'), 2)}, compression {percent(last.get('compression'))}.", ""]
    post_training = (run.report or {}).get("post_training")
    if post_training and (run.run_dir / "post_training" / "curves.png").is_file():
        lines += ["Post-training pruning curves:", "", "![post-training curves](post_training/curves.png)", ""]
    return lines


def _how_measured(run: Run, runtime: str | None) -> list[str]:
    report = run.report or {}
    try:
        bench = json.loads((run.run_dir / "bench" / "latency.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        bench = {}
    bench = bench if isinstance(bench, Mapping) else {}
    lines = ["## How measured", ""]
    machine = bench.get("machine")
    if isinstance(machine, Mapping):
        cpus = machine.get("usable_cpu_count") or machine.get("cpu_count")
        processor = machine.get("processor") or machine.get("machine") or "unknown CPU"
        cpus = "an unknown number of" if cpus is None else cpus
        lines.append(f"- Machine: {processor}, {cpus} usable CPUs ({machine.get('platform', 'platform unknown')}).")
    else:
        lines.append("- Machine: not recorded (bench/latency.json is missing).")
    if runtime is not None:
        threads = bench.get("intra_op_threads")
        threads = "the runtime default" if threads is None else threads
        lines.append(f"- Latency: {bench.get('warmup', '?')} warm-up and {bench.get('repeats', '?')} timed runs per model and "
                     f"batch, dense and pruned interleaved; intra-op threads: {threads}; timer: "
                     f"{bench.get('timer', 'not recorded')}; percentiles: {bench.get('percentile_method', 'not recorded')} "
                     "interpolation.")
    lines.append(f"- Energy: {fig.energy_mode_words(report)}")
    units = report.get("units")
    if isinstance(units, Mapping):
        lines.append("- Units: " + "; ".join(f"{name}: {text}" for name, text in units.items()) + ".")
    return lines + [""]
