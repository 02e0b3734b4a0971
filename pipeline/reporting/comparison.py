"""Several finished runs side by side: grouped by method label, seeds as mean ± sample std.

A group is the runs of one method with the same criterion settings (and the same model, dataset,
KL weighting and fine-tuning noise: a label names whichever of those vary between the groups).
Degraded runs (a model failed a sanity bound) and unfinished ones are listed apart and stay out of
the means, as pipeline.seeds does. The dense reference comes from the runs' ``dense`` sections, one
per training seed (each run of a seed trains the same baseline), or from ``none`` runs without them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmrs.artifacts import write_json
from bmrs.train.metrics import mean_std
from pipeline.reporting import figures as fig
from pipeline.reporting.load import COMPARISON_KIND, Run, is_run_dir, load_run
from pipeline.reporting.plots import Bars, Cloud, bar_plot, scatter_plot
from pipeline.reporting.text import json_safe, number, settings_text

# Settings a group's runs may differ in without being different experiments. Per-layer fractions
# differ by design in a group labelled ``layer_ratios=per layer``: each seed's are its ratio source's.
_SEED_ONLY = ("train.seed", "train.progress", "output.", "name", "train.criterion.layer_ratios.")
_VARYING = ("dataset", "model", "kl_weighting", "finetune_noise")  # added to a label when they vary
UNITS = {
    "accuracy": "fraction of test examples",
    "compression": "fraction of parameters removed (with BMR on weights: structures and weights together, as total_removed)",
    "structured_compression": "fraction of parameters removed by slicing structures",
    "weight_sparsity": "fraction of the shipped Linear/Conv2d weights that are exactly 0",
    "total_removed": "1 - nonzero parameters of the shipped model / parameters of the dense model",
    "nll": "nats per example", "ece": "expected calibration error, 15 equal-width confidence bins",
    "flops": "multiply-accumulates per example", "onnx_bytes": "bytes of the ONNX file",
    "p50_ms_b<batch>": "median milliseconds per batch", "throughput_per_s_b<batch>": "examples per second at the median",
    "speedup_p50_b<batch>": "dense p50 / pruned p50 within each run", "energy_j_per_1k": "joules per 1,000 inferences",
    "co2_g_per_1k": "grams CO2 per 1,000 inferences", "training_energy_kwh": "kWh of the training, fine-tuning and sparsify stages",
}  # fmt: skip
PLOTS = ("accuracy_vs_compression.png", "latency_vs_accuracy.png", "energy_per_1k.png")


@dataclass(frozen=True)
class Group:
    """One row of the comparison: ``metrics`` name -> {mean, std, n, values} over ``runs``;
    ``dense``: the dense model's figures measured in the same runs (its energy, its latency)."""

    label: str
    method: str
    runs: tuple[Run, ...]
    rows: tuple[dict[str, float | None], ...]  # each run's figures, in the order of ``runs``
    metrics: dict[str, dict[str, Any]]
    dense: dict[str, dict[str, Any]]
    differences: tuple[str, ...] = ()  # config settings besides the seed that differ within the group
    reference: bool = False

    def mean(self, name: str) -> float | None:
        return number((self.metrics.get(name) or {}).get("mean"))


@dataclass(frozen=True)
class Comparison:
    title: str
    runtime: str | None  # the ONNX Runtime provider whose latency is compared
    batches: tuple[int, ...]  # the smallest and the largest batch timed
    groups: tuple[Group, ...]
    dense: Group | None
    excluded: tuple[Run, ...]
    energy_words: tuple[tuple[str, tuple[str, ...]], ...]  # (how measured, the runs measured so)
    pareto: tuple[str, ...]  # labels on the latency-accuracy Pareto front
    dense_disagreements: tuple[str, ...] = ()  # seeds whose runs measured different dense models


def aggregate(rows: Sequence[Mapping[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Per figure, mean and sample std (``mean_std``) over the rows that have it; figures no row has are left out."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(name for row in rows for name in row):
        values = [value for row in rows if (value := number(row.get(name))) is not None]
        if values:
            mean, std = mean_std(values)
            out[name] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return out


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats: another point dominates one
    when its latency is no higher and its accuracy no lower, and one of them strictly. Points
    missing either figure are never on the front."""
    valid = [(i, number(x), number(y)) for i, (x, y) in enumerate(points)]
    valid = [(i, x, y) for i, x, y in valid if x is not None and y is not None]
    return [i for i, x, y in valid
            if not any(ox <= x and oy >= y and (ox < x or oy > y) for j, ox, oy in valid if j != i)]  # fmt: skip


def _group_key(report: Mapping[str, Any]) -> tuple[Any, ...]:
    settings = settings_text(dict(sorted(fig.comparable_settings(report).items())))  # p1=4 and p1=4.0: one group
    return (report.get("method"), settings, *(_varying_value(report, name) for name in _VARYING))


def _varying_value(report: Mapping[str, Any], name: str) -> Any:
    return report.get(name) if name in ("dataset", "model") else fig.section(report, "settings", name)


def _flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, Mapping):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree, sort_keys=True)}


def config_differences(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dotted settings (the seed, progress bars and output paths aside) whose values differ between ``configs``."""
    flat = [_flatten(config) for config in configs if config]
    keys = dict.fromkeys(key for config in flat for key in config)
    return [key for key in keys if not key.startswith(_SEED_ONLY) and len({config.get(key) for config in flat}) > 1]


def _runtime_and_batches(runs: Sequence[Run]) -> tuple[str | None, tuple[int, ...]]:
    runtime = next((r for run in runs if (r := fig.ort_runtime((run.report or {}).get("latency")))), None)
    batches = sorted({b for run in runs for b in fig.batch_sizes((run.report or {}).get("latency"), runtime)})
    return runtime, tuple(dict.fromkeys([batches[0], batches[-1]])) if batches else ()


def _dense_group(runs: Sequence[Run], runtime: str | None, batches: list[int]) -> Group:
    """One row per distinct dense model: a seed's baselines are the same model, so it counts once."""
    trained = [run for run in runs if number(fig.section(run.report, "dense", "accuracy")) is not None]
    dense_runs = [run for run in runs if fig.is_dense_method(run.report)]
    if trained:
        source, model = trained, "dense"
    elif dense_runs:
        source, model = dense_runs, "pruned"  # a `none` run's model is the dense model
    else:
        source, model = list(runs), "dense"  # untrained baselines: their size only
    by_seed: dict[Any, Run] = {}
    for index, run in enumerate(source):
        by_seed.setdefault(run.seed if run.seed is not None else f"run{index}", run)
    chosen = list(by_seed.values())
    rows = [{k: v for k, v in fig.model_figures(run.report, model, runtime, batches).items() if not k.startswith("speedup")}
            for run in chosen]
    metrics = aggregate(rows)
    return Group("dense reference", fig.DENSE_METHOD, tuple(chosen), tuple(rows), metrics, metrics, reference=True)


def dense_disagreements(runs: Sequence[Run]) -> list[str]:
    """Per seed whose runs report different dense accuracies, a line naming them: those runs were
    measured against different dense models (a baseline retrained after its checkpoint was deleted
    need not reproduce the first bit for bit), so the dense row stands for one of them only."""
    by_seed: dict[Any, dict[float, list[str]]] = {}
    for run in runs:
        accuracy = number(fig.section(run.report, "dense", "accuracy"))
        if accuracy is not None and run.seed is not None:
            by_seed.setdefault(run.seed, {}).setdefault(accuracy, []).append(fig.method_label(run.report))
    return [f"seed {seed}: " + "; ".join(f"{accuracy:.2%} in {', '.join(labels)}" for accuracy, labels in found.items())
            for seed, found in by_seed.items() if len(found) > 1]


def build_comparison(runs: Sequence[Run], title: str | None = None) -> Comparison:
    included = [run for run in runs if run.included]
    excluded = tuple(run for run in runs if not run.included)
    if not included:
        listed = ", ".join(f"{run.run_dir} ({run.state})" for run in runs) or "none given"
        raise ValueError(f"no finished run with its checks passed to compare ({listed}); "
                         "finish runs with `bmrs resume RUN_DIR` or give other run directories")
    runtime, batches = _runtime_and_batches(included)
    all_batches = sorted({b for run in included for b in fig.batch_sizes(run.report.get("latency"), runtime)})
    keyed: dict[tuple[Any, ...], list[Run]] = {}
    for run in included:
        keyed.setdefault(_group_key(run.report), []).append(run)
    varying = [i for i, name in enumerate(_VARYING) if len({key[2 + i] for key in keyed}) > 1]
    groups = []
    for key, members in keyed.items():
        report = members[0].report
        extra = ", ".join(f"{_VARYING[i]}={key[2 + i]}" for i in varying)
        label = fig.method_label(report) + (f" [{extra}]" if extra else "")
        rows = [fig.model_figures(run.report, "pruned", runtime, all_batches) for run in members]
        dense = aggregate([fig.model_figures(run.report, "dense", runtime, all_batches) for run in members])
        groups.append(Group(label, str(report.get("method")), tuple(members), tuple(rows), aggregate(rows), dense,
                            tuple(config_differences([run.config for run in members]))))
    combos = {(run.report.get("dataset"), run.report.get("model")) for run in included}
    dense = None
    if len(combos) == 1:  # a single dense row only means something for one model on one dataset
        dense = _dense_group(included, runtime, all_batches)
    largest = batches[-1] if batches else None
    candidates = ([dense] if dense else []) + groups
    front = pareto_front([(g.mean(f"p50_ms_b{largest}"), g.mean("accuracy")) for g in candidates]) if largest else []
    words: dict[str, list[str]] = {}
    for run in included:
        words.setdefault(fig.energy_mode_words(run.report), []).append(str(run.run_dir))
    what = ", ".join(sorted({f"{r.report.get('flow')}: {r.report.get('model')} on {r.report.get('dataset')}" for r in included}))
    counted = f"{len(groups)} method{'s' * (len(groups) != 1)}, {len(included)} run{'s' * (len(included) != 1)}"
    return Comparison(
        title=title or f"{what} ({counted})",
        runtime=runtime,
        batches=batches,
        groups=tuple(groups),
        dense=dense,
        excluded=excluded,
        energy_words=tuple((text, tuple(dirs)) for text, dirs in words.items()),
        pareto=tuple(candidates[i].label for i in front),
        dense_disagreements=tuple(dense_disagreements(included)),
    )


def run_link(run: Run, out_dir: Path) -> str:
    target = run.run_dir / "report.md" if (run.run_dir / "report.md").is_file() else run.run_dir
    return os.path.relpath(target.resolve(), out_dir.resolve())


def comparison_json(comparison: Comparison, out_dir: Path, plots: Mapping[str, str | None]) -> dict[str, Any]:
    def group(g: Group) -> dict[str, Any]:
        return {"label": g.label, "method": g.method, "n": len(g.runs), "seeds": [run.seed for run in g.runs],
                "run_dirs": [str(run.run_dir) for run in g.runs], "metrics": g.metrics,
                "dense_in_same_runs": None if g.reference else g.dense,
                "config_differences": list(g.differences), "on_pareto_front": g.label in comparison.pareto}

    payload = {
        "kind": COMPARISON_KIND,  # so that `bmrs report` never reads this folder as a run
        "title": comparison.title,
        "varied": "train.seed within a group; means are over the seeds, std is the sample std",
        "latency": {"runtime": comparison.runtime, "batches": list(comparison.batches), "unit": "milliseconds per batch (p50)"},
        "dense": None if comparison.dense is None else group(comparison.dense),
        "groups": [group(g) for g in comparison.groups],
        "pareto_front": {"axes": "p50 at the largest batch (lower is better) vs accuracy (higher is better)",
                         "labels": list(comparison.pareto)},
        "dense_disagreements": list(comparison.dense_disagreements),
        "excluded": [{"run_dir": str(run.run_dir), "label": fig.method_label(run.report) if run.report else None,
                      "state": run.state, "warning": run.error} for run in comparison.excluded],
        "energy": [{"how_measured": text, "run_dirs": list(dirs)} for text, dirs in comparison.energy_words],
        "runs": [{"run_dir": str(run.run_dir), "link": run_link(run, out_dir), "group": g.label, "seed": run.seed}
                 for g in comparison.groups for run in g.runs],
        "plots": dict(plots),
        "units": UNITS,
    }
    return json_safe(payload)


def write_comparison(run_dirs: Sequence[Path], out_dir: Path, *, title: str | None = None) -> Path:
    """Write ``report.md``, ``report.json`` and the PNG plots comparing ``run_dirs`` into ``out_dir``;
    returns the path of ``report.md``. ValueError when ``out_dir`` is a run directory (its report.md
    is the run's own) or no run is finished with its checks passed."""
    from pipeline.reporting.comparison_md import comparison_markdown

    out_dir = Path(out_dir)
    if is_run_dir(out_dir):
        raise ValueError(f"--out {str(out_dir)!r} is a run directory, whose report.md is the run's own; "
                         "write the comparison to another folder, e.g. --out report")
    comparison = build_comparison([load_run(Path(run_dir)) for run_dir in run_dirs], title)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(comparison, out_dir)
    write_json(out_dir / "report.json", comparison_json(comparison, out_dir, plots))
    path = out_dir / "report.md"
    partial = out_dir / ".report.md.partial"
    partial.write_text(comparison_markdown(comparison, out_dir, plots))
    os.replace(partial, path)
    return path


def _clouds(comparison: Comparison, x: str, y: str, scale_x: float, scale_y: float) -> list[Cloud]:
    """Each group's seeds as (x, y) pairs (runs that have both figures) and their mean ± std."""
    clouds = []
    for group in ([comparison.dense] if comparison.dense else []) + list(comparison.groups):
        pairs = [(scale_x * row[x], scale_y * row[y]) for row in group.rows
                 if number(row.get(x)) is not None and number(row.get(y)) is not None]
        stat_x, stat_y = group.metrics.get(x) or {}, group.metrics.get(y) or {}
        clouds.append(Cloud(
            group.label, [p[0] for p in pairs], [p[1] for p in pairs],
            _scaled(stat_x.get("mean"), scale_x), _scaled(stat_y.get("mean"), scale_y),
            _scaled(stat_x.get("std"), scale_x), _scaled(stat_y.get("std"), scale_y),
            reference=group.reference, on_front=group.label in comparison.pareto,
        ))
    return clouds


def _scaled(value: Any, scale: float) -> float | None:
    value = number(value)
    return None if value is None else scale * value


def write_plots(comparison: Comparison, out_dir: Path) -> dict[str, str | None]:
    """The three PNGs, by file name; a plot with nothing to draw (say, no energy measured) is not
    written and maps to None."""
    written: dict[str, Path | None] = {}
    written[PLOTS[0]] = scatter_plot(
        out_dir / PLOTS[0], _clouds(comparison, "compression", "accuracy", 100.0, 100.0),
        xlabel="parameters removed (%)", ylabel="test accuracy (%)",
        title=f"{comparison.title}\naccuracy vs compression (mean ± std over seeds; seeds faint)")
    largest = comparison.batches[-1] if comparison.batches else None
    runtime = fig.runtime_short(comparison.runtime) if comparison.runtime else "no runtime"
    written[PLOTS[1]] = None if largest is None else scatter_plot(
        out_dir / PLOTS[1], _clouds(comparison, f"p50_ms_b{largest}", "accuracy", 1.0, 100.0),
        xlabel=f"p50 latency at batch {largest}, {runtime} (ms)", ylabel="test accuracy (%)",
        title=f"{comparison.title}\nlatency vs accuracy; Pareto front (lower latency, higher accuracy) dashed",
        front=True)
    bars = []
    for group in comparison.groups:
        values = {}
        for name, stats in (("dense", group.dense), ("pruned", group.metrics)):
            stat = stats.get("energy_j_per_1k") or {}
            values[name] = (stat.get("mean"), stat.get("std"), stat.get("values", []))
        bars.append(Bars(group.label, values))
    written[PLOTS[2]] = bar_plot(out_dir / PLOTS[2], bars, ylabel="energy per 1,000 inferences (J)",
                                 title=f"{comparison.title}\nenergy per 1k inferences, dense and pruned in the same runs")
    for name, path in written.items():
        if path is None:
            (out_dir / name).unlink(missing_ok=True)  # a stale plot from an earlier comparison would mislead
    return {name: None if path is None else path.name for name, path in written.items()}
