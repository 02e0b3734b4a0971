"""Table 1's report: the raw per-run results of ``benchmarks.paper.table1`` folded into one markdown and one
CSV table, with the paper's numbers for the same row beside ours.

Only files named ``<dataset>-<model>-<method>-seed<k>.json`` for the requested models, methods and
seeds are read, so a results folder may hold other runs without their leaking into the table.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.paper.experiment import run_record
from bmrs.train.metrics import mean_std
from pipeline.config import FlowConfig

# Paper table 1, Fashion-MNIST columns: (compression %, its std, accuracy %, its std) over ten seeds.
# The paper has no gradient-pruning row.
PAPER: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("mlp", "none"): (0.00, 0.00, 88.17, 0.20),
    ("mlp", "l2"): (87.86, 2.27, 18.23, 10.22),
    ("mlp", "etheta"): (91.76, 0.81, 85.59, 0.26),
    ("mlp", "snr"): (99.83, 0.00, 10.00, 0.00),
    ("mlp", "bmrs_n"): (93.20, 0.66, 84.99, 0.35),
    ("mlp", "bmrs_u8"): (93.02, 0.81, 85.01, 0.32),
    ("mlp", "bmrs_u4"): (91.57, 0.71, 85.79, 0.34),
    ("lenet5", "none"): (0.00, 0.00, 89.16, 0.27),
    ("lenet5", "l2"): (83.62, 1.69, 10.00, 0.00),
    ("lenet5", "etheta"): (89.71, 0.56, 50.93, 33.45),
    ("lenet5", "snr"): (98.47, 3.45, 17.01, 21.03),
    ("lenet5", "bmrs_n"): (88.02, 1.00, 77.90, 2.44),
    ("lenet5", "bmrs_u8"): (87.61, 0.72, 77.23, 3.49),
    ("lenet5", "bmrs_u4"): (88.72, 0.73, 81.10, 1.50),
}
PAPER_LABELS = {"none": "None", "l2": "L2", "etheta": "E[theta]", "snr": "SNR", "bmrs_n": "BMRS_N",
                "bmrs_u8": "BMRS_U-8", "bmrs_u4": "BMRS_U-4", "grad": "Gradient (not in paper)"}  # fmt: skip
# Settings each method decides for itself (its criterion) or that name the run (model, seed): the
# recipe lists everything else that differs from the defaults (those of a flow that sets nothing).
PER_RUN_KEYS = ("model", "train.seed", "train.criterion", "train.criterion_settings")


def raw_path(raw_dir: Path, dataset: str, model: str, method: str, seed: int) -> Path:
    return raw_dir / f"{dataset}-{model}-{method}-seed{seed}.json"


def collect(raw_dir: Path, dataset: str, models: Sequence[str], methods: Sequence[str], seeds: Sequence[int] | None) -> list[dict[str, Any]]:
    """The stored results for every requested (model, method, seed); ``seeds=None``: every seed found."""
    results = []
    for model in models:
        for method in methods:
            if seeds is None:
                paths = sorted(raw_dir.glob(f"{dataset}-{model}-{method}-seed*.json"))
                paths = [p for p in paths if p.stem.rpartition("-seed")[2].isdigit()]
            else:
                paths = [raw_path(raw_dir, dataset, model, method, seed) for seed in seeds]
            for path in paths:
                if path.is_file():
                    result = json.loads(path.read_text())
                    result.setdefault("method", method)
                    result.setdefault("model", model)
                    results.append(result)
    return results


@dataclass(frozen=True)
class Row:
    model: str
    method: str
    seeds: tuple[int, ...]
    compression: tuple[float, float]  # % of parameters sliced away
    accuracy: tuple[float, float]  # test accuracy %
    nll: tuple[float, float]
    ece: tuple[float, float]
    params: float  # mean parameters of the deployed (sliced) model
    dense_params: float
    accuracy_delta: float | None  # percentage points to our own dense ("none") mean
    paper: tuple[float, float, float, float] | None


def aggregate(results: Sequence[dict[str, Any]], models: Sequence[str], methods: Sequence[str]) -> list[Row]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        grouped[result["model"], result["method"]].append(result)
    rows = []
    for model in models:
        dense = grouped.get((model, "none"))
        dense_accuracy = mean_std([100 * r["test"]["accuracy"] for r in dense])[0] if dense else None
        for method in methods:
            runs = sorted(grouped.get((model, method), []), key=lambda r: r["spec"]["train"]["seed"])
            if not runs:
                continue
            tests = [r["test"] for r in runs]
            accuracy = mean_std([100 * t["accuracy"] for t in tests])
            rows.append(Row(
                model=model, method=method, seeds=tuple(r["spec"]["train"]["seed"] for r in runs),
                compression=mean_std([100 * t["compression"] for t in tests]), accuracy=accuracy,
                nll=mean_std([t["nll"] for t in tests]), ece=mean_std([t["ece"] for t in tests]),
                params=mean_std([t["params"] for t in tests])[0], dense_params=mean_std([t["dense_params"] for t in tests])[0],
                accuracy_delta=None if dense_accuracy is None else accuracy[0] - dense_accuracy,
                paper=PAPER.get((model, method)),
            ))  # fmt: skip
    return rows


def _pm(pair: tuple[float, float], digits: int = 2) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def recipe_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """Per model, every setting that differs from the record of a flow that sets nothing (the
    defaults of DataConfig, ModelConfig, NoiseInit and TrainConfig), with the methods it applies to
    when not all of them."""
    defaults = _flatten(run_record(FlowConfig(name="defaults"), noisy=True))
    by_model: dict[str, dict[tuple[str, str], set[str]]] = defaultdict(lambda: defaultdict(set))
    methods_of: dict[str, set[str]] = defaultdict(set)
    for result in results:
        model, method = result["model"], result["method"]
        methods_of[model].add(method)
        spec = dict(result["spec"])
        if spec.get("noise") is None:
            spec.pop("noise", None)  # the dense baseline: no noise is what the method is
        for key, value in _flatten(spec).items():
            if key.startswith(PER_RUN_KEYS) or (key in defaults and defaults[key] == value):
                continue
            by_model[model][key, json.dumps(value)].add(method)
    lines = []
    for model in sorted(methods_of):
        parts = []
        for (key, value), methods in sorted(by_model[model].items()):
            scope = "" if methods == methods_of[model] else f" ({', '.join(sorted(methods))})"
            parts.append(f"`{key}={value}`{scope}")
        lines.append(f"- {model}: " + (", ".join(parts) if parts else "all defaults"))
    return lines


def _markdown(rows: Sequence[Row], results: Sequence[dict[str, Any]], command: str, method_notes: Sequence[str], dataset: str) -> str:
    header = ("| Model | Method | Seeds | Compression % | Accuracy % | Δ acc. vs our None (pp) | NLL | ECE | Params (dense) "
              "| Paper compression % | Paper accuracy % |")  # fmt: skip
    lines = [f"# Table 1, {dataset}: continuous pruning", "", header, "|" + "---|" * 11]
    for row in rows:
        delta = "—" if row.accuracy_delta is None else f"{row.accuracy_delta:+.2f}"
        paper = ("—", "—") if row.paper is None else (_pm(row.paper[:2]), _pm(row.paper[2:]))
        lines.append(
            f"| {row.model} | {PAPER_LABELS.get(row.method, row.method)} | {len(row.seeds)} | {_pm(row.compression)} "
            f"| {_pm(row.accuracy)} | {delta} | {_pm(row.nll, 4)} | {_pm(row.ece, 4)} "
            f"| {row.params:,.0f} ({row.dense_params:,.0f}) | {paper[0]} | {paper[1]} |"
        )
    commands = sorted({r["command"] for r in results if r.get("command") and r["command"] != command})
    environments = sorted({f"torch {r.get('torch')}, {r.get('threads')} thread(s)" for r in results})
    compute = sum(r.get("run_seconds", r.get("train_seconds", 0.0)) for r in results)
    lines += ["", "Compression counts every parameter slicing removes (`test.compression`); accuracy, NLL and ECE",
              "are on the test set, of the sliced model; ± is the sample standard deviation over seeds.", "",
              "## Methods", "", *method_notes, "", "## Command", "", f"    {command}", ""]  # fmt: skip
    if commands:
        lines += ["Runs read from earlier invocations:", "", *[f"    {c}" for c in commands], ""]
    # The heading keeps the words committed reports were written with (RunSpec: the run record).
    lines += ["## Recipe (settings other than RunSpec/TrainConfig/NoiseInit defaults)", "", *recipe_lines(results), "",
              "## Environment and compute", "", f"- {'; '.join(environments)}",
              f"- total compute: {compute / 3600:.2f} h over {len(results)} runs (sum of per-run wall time)", ""]  # fmt: skip
    return "\n".join(lines)


def _csv(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "method", "paper_row", "seeds", "compression_mean", "compression_std", "accuracy_mean",
                     "accuracy_std", "accuracy_delta_vs_none", "nll_mean", "nll_std", "ece_mean", "ece_std", "params_mean",
                     "dense_params", "paper_compression_mean", "paper_compression_std", "paper_accuracy_mean",
                     "paper_accuracy_std"])  # fmt: skip
    for row in rows:
        paper = list(row.paper) if row.paper is not None else ["", "", "", ""]
        delta = "" if row.accuracy_delta is None else row.accuracy_delta
        writer.writerow([row.model, row.method, PAPER_LABELS.get(row.method, row.method), " ".join(map(str, row.seeds)),
                         *row.compression, *row.accuracy, delta, *row.nll, *row.ece, row.params, row.dense_params, *paper])  # fmt: skip
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_report(
    out: Path, results: Sequence[dict[str, Any]], models: Sequence[str], methods: Sequence[str], *, command: str,
    method_notes: Sequence[str], dataset: str,
) -> tuple[str, list[Row]]:
    """Write ``<out>/table1.md`` and ``<out>/table1.csv``; returns the markdown and the rows."""
    rows = aggregate(results, models, methods)
    markdown = _markdown(rows, results, command, method_notes, dataset)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "table1.md", markdown)
    _write_text(out / "table1.csv", _csv(rows))
    return markdown, rows
