"""The comparison's ``report.md``: one table of mean ± std per method, then the plots, the runs left
out of the means and an appendix linking every run."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.reporting import figures as fig
from pipeline.reporting.comparison import Comparison, Group, run_link
from pipeline.reporting.text import NA, count, decimal, mean_std_text, number, percent, significant, table, times


_MAX_DIFFERENCES = 6  # settings named per group; the rest are counted


def _cell(group: Group, name: str, render) -> str:
    stat = group.metrics.get(name)
    if not stat:
        return NA
    return mean_std_text(stat["mean"], stat["std"] if stat["n"] > 1 else None, render)


def _speedup(group: Group, batch: int) -> str:
    if group.reference:
        return "1x (reference)"
    stat = group.metrics.get(f"speedup_p50_b{batch}")
    if not stat:
        return NA
    # Two decimals throughout: beside a std and a range of two decimals, 1.155 shown as 1.2x would
    # lie outside its own range.
    text = f"{stat['mean']:.2f}x" + (f" ± {stat['std']:.2f}" if stat["n"] > 1 else "")
    lows, highs = group.metrics.get(f"speedup_p50_min_b{batch}"), group.metrics.get(f"speedup_p50_max_b{batch}")
    if lows and highs:  # how far timing the same files again moved it, within the runs
        text += f" ({min(lows['values']):.2f}-{max(highs['values']):.2f})"
    return text


def _seeds(group: Group) -> str:
    seeds = [str(run.seed) for run in group.runs if run.seed is not None]
    return f"{len(group.runs)} ({', '.join(seeds)})" if seeds else str(len(group.runs))


def _energy_batches(comparison: Comparison) -> list[int]:
    runs = [run for group in comparison.groups for run in group.runs]
    return sorted({batches[-1] for run in runs if (batches := fig.inference_energy_batches(run.report))})


def main_table(comparison: Comparison) -> list[str]:
    header = ["method", "n (seeds)", "accuracy", "NLL", "ECE", "compression", "structured", "weight sparsity",
              "total removed", "params", "MACs", "ONNX bytes"]
    for batch in comparison.batches:
        header += [f"p50 batch {batch} (ms)", f"speed-up batch {batch}"]
    header += ["energy per 1k inferences (J)", "CO2 per 1k inferences (g)", "training energy (kWh)"]
    rows = []
    for group in ([comparison.dense] if comparison.dense else []) + list(comparison.groups):
        row = [group.label, _seeds(group), _cell(group, "accuracy", percent), _cell(group, "nll", decimal),
               _cell(group, "ece", decimal), _cell(group, "compression", percent),
               _cell(group, "structured_compression", percent), _cell(group, "weight_sparsity", percent),
               _cell(group, "total_removed", percent), _cell(group, "params", count),
               _cell(group, "flops", count), _cell(group, "onnx_bytes", count)]
        for batch in comparison.batches:
            row += [_cell(group, f"p50_ms_b{batch}", significant), _speedup(group, batch)]
        row += [_cell(group, "energy_j_per_1k", lambda v: significant(v, 3)),
                _cell(group, "co2_g_per_1k", lambda v: significant(v, 3)),
                _cell(group, "training_energy_kwh", lambda v: significant(v, 3))]
        rows.append(row)
    return table(header, rows)


def _notes(comparison: Comparison) -> list[str]:
    lines = ["Each row: mean ± sample standard deviation over the group's seeds (train.seed; n given); one "
             "seed shows its value alone."]
    if comparison.runtime is None:
        lines.append("Latency: not measured.")
    else:
        lines.append(f"Latency: median (p50) per batch through {fig.runtime_short(comparison.runtime)} "
                     f"({comparison.runtime}); speed-up: the mean over the runs of dense p50 / pruned p50, the two "
                     "timed interleaved within each run; in brackets, where it stated them, the lowest and highest ratio "
                     "any run measured over blocks of its repeats (how far timing the same files again moves it).")
    lines.append("Compression: the fraction of parameters removed; for BMR on weights (bmr_weights, <criterion>+bmr_weights) "
                 "every parameter removed, structures and weights together (= total removed). Structured: removed by "
                 "slicing; weight sparsity: the shipped Linear/Conv2d weights that are exactly 0, which the ONNX file "
                 "stores dense (params, MACs and ONNX bytes count them) and ONNX Runtime's dense kernels multiply like any "
                 "other weight.")
    batches = _energy_batches(comparison)
    if batches:
        lines.append(f"Energy and CO2 per 1,000 inferences at batch {', '.join(map(str, batches))}; training energy: "
                     "the training, fine-tuning and sparsify stages (the dense row: its baseline's training).")
    if len(comparison.energy_words) == 1:
        lines.append(f"Energy: {comparison.energy_words[0][0]}")
    else:
        lines.append("Energy, measured differently across the runs:")
        lines += [f"  - {text} ({len(dirs)} runs: {', '.join(dirs)})" for text, dirs in comparison.energy_words]
    if comparison.dense is None:
        lines.append("No dense reference row: the runs train different models or datasets.")
    elif comparison.dense.metrics.get("accuracy") is None:
        lines.append("The dense baselines were not trained (baseline.enabled: false): the dense row gives their size only.")
    if comparison.dense_disagreements:
        lines.append("Note: runs of the same seed were measured against different dense models (a baseline retrained "
                     "did not reproduce the first bit for bit, e.g. on a CPU of another instruction set: each report's "
                     "cpu_capability), so the dense row stands for one of them; each row's "
                     "speed-up is against its own runs' dense model. Dense accuracy per seed: "
                     + " | ".join(comparison.dense_disagreements) + ".")
    for group in comparison.groups:
        if group.differences:
            shown = ", ".join(group.differences[:_MAX_DIFFERENCES])
            more = len(group.differences) - _MAX_DIFFERENCES
            lines.append(f"Note: the runs of {group.label} differ in more than the seed: {shown}"
                         + (f" and {more} more settings (compare their config.json)." if more > 0 else "."))
    return [f"- {line}" if not line.startswith("  ") else line for line in lines]


def _plots(plots: Mapping[str, str | None], comparison: Comparison) -> list[str]:
    captions = {
        "accuracy_vs_compression.png": "Accuracy vs compression: per method the mean with error bars of one std, "
                                       "its seeds faint.",
        "latency_vs_accuracy.png": "Latency at the largest batch vs accuracy; the Pareto front (no other point has lower "
                                   "latency and higher accuracy) outlined and dashed.",
        "energy_per_1k.png": "Energy per 1,000 inferences, the dense and the pruned model measured in the same runs.",
    }
    lines = ["## Plots", ""]
    for name, caption in captions.items():
        lines += [caption, ""]
        lines += [f"![{name}]({plots[name]})" if plots.get(name) else "Not measured in these runs.", ""]
    if comparison.pareto:
        lines += [f"On the latency-accuracy Pareto front: {', '.join(comparison.pareto)}.", ""]
    return lines


def _excluded(comparison: Comparison, out_dir: Path) -> list[str]:
    if not comparison.excluded:
        return []
    lines = ["## Runs left out of the means", ""]
    for run in comparison.excluded:
        label = fig.method_label(run.report) if run.report else _configured_method(run.config)
        reason = f": {run.error}" if run.error else ""
        lines.append(f"- [{run.run_dir}]({run_link(run, out_dir)}) ({label}, seed {run.seed if run.seed is not None else '?'}, "
                     f"{run.state}){reason}")
    return lines + [""]


def _configured_method(config: Mapping[str, Any]) -> str:
    """The method an unfinished run was started with, from its config.json."""
    train = config.get("train")
    if not isinstance(train, Mapping) or "criterion" not in train:
        return "method unknown"
    criterion = train["criterion"]
    if criterion is None:
        return fig.DENSE_METHOD
    return str(criterion.get("name", "method unknown")) if isinstance(criterion, Mapping) else str(criterion)


def _appendix(comparison: Comparison, out_dir: Path) -> list[str]:
    largest = comparison.batches[-1] if comparison.batches else None
    header = ["run", "method", "seed", "state", "accuracy", "compression"]
    header += [f"speed-up batch {largest}"] if largest else []
    rows = []
    for group in comparison.groups:
        for run, figures in zip(group.runs, group.rows):
            row: list[Any] = [f"[{run.run_dir}]({run_link(run, out_dir)})", group.label,
                              NA if run.seed is None else str(run.seed), run.state,
                              percent(figures.get("accuracy"), 2), percent(figures.get("compression"))]
            if largest:
                row.append(times(number(figures.get(f"speedup_p50_b{largest}"))))
            rows.append(row)
    return ["## Appendix: the runs", "", *table(header, rows), ""]


def comparison_markdown(comparison: Comparison, out_dir: Path, plots: Mapping[str, str | None]) -> str:
    lines = [f"# {comparison.title}", ""]
    lines += main_table(comparison) + [""]
    lines += _notes(comparison) + [""]
    lines += _plots(plots, comparison)
    lines += _excluded(comparison, out_dir)
    lines += _appendix(comparison, out_dir)
    return "\n".join(lines).rstrip() + "\n"
