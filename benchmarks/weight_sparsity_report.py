"""The report of ``benchmarks.weight_sparsity``: its stored stage results aggregated over seeds into
``weight_sparsity.json`` and a Markdown table, ``weight_sparsity.md``.

Mean +- sample standard deviation over the seeds found (``bmrs.train.metrics.mean_std``); a stage
whose result is missing (an interrupted run) is listed as missing, never filled in. The accuracy
difference to the dense model is paired: per seed, then averaged. The issue's goal is checked per
row of BMR on weights: at least 90% of the weights removed, test accuracy within 1 point of the
dense model's, NLL and ECE no higher than the dense model's (means over seeds).
"""
from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.ort_runtime import Provider
from bmrs.artifacts import json_safe, write_json
from bmrs.train.metrics import mean_std

METHODS = (
    ("dense", "Dense"),
    ("sparse", "BMR on weights"),
    ("structured", "Structured BMRS (default flow)"),
    ("combined", "Structured BMRS + BMR on weights"),
)
GOAL_SPARSITY = 0.9
GOAL_ACCURACY_DROP = 0.01


def _load(out: Path, model: str, seed: int, stage: str) -> dict[str, Any] | None:
    path = out / "raw" / f"{model}-seed{seed}-{stage}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _weight_sparsity(stage: str, result: dict[str, Any]) -> float:
    # The dense and the sliced models hold no removed weights; the others record theirs.
    return result["sparsity"] if stage in ("sparse", "combined") else 0.0


def _params_removed(stage: str, result: dict[str, Any]) -> float:
    if stage == "structured":
        return result["compression"]
    if stage == "combined":
        return result["total_removed"]
    return 1.0 - result["nonzero_params"] / result["params"]


def _stat(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values)}


def summarise(out: Path, models: Sequence[str], seeds: Sequence[int]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per (model, method) with results, and the stage files that are missing."""
    rows, missing = [], []
    for model in models:
        dense = {seed: _load(out, model, seed, "dense") for seed in seeds}
        for stage, label in METHODS:
            results = {seed: _load(out, model, seed, stage) for seed in seeds}
            if stage in ("structured", "combined") and model != "lenet5":
                continue
            missing += [f"{model}-seed{seed}-{stage}" for seed, result in results.items() if result is None]
            found = {seed: result for seed, result in results.items() if result is not None}
            if not found:
                continue
            drops = [found[s]["test"]["accuracy"] - dense[s]["test"]["accuracy"] for s in found if dense.get(s) is not None]
            row = {
                "model": model, "method": stage, "label": label, "seeds": sorted(found),
                "weight_sparsity": _stat([_weight_sparsity(stage, r) for r in found.values()]),
                "params_removed": _stat([_params_removed(stage, r) for r in found.values()]),
                "accuracy": _stat([r["test"]["accuracy"] for r in found.values()]),
                "accuracy_vs_dense": _stat(drops),
                "nll": _stat([r["test"]["nll"] for r in found.values()]),
                "ece": _stat([r["test"]["ece"] for r in found.values()]),
                "nonzero_params": _stat([float(r["nonzero_params"]) for r in found.values()]),
            }  # fmt: skip
            if stage in ("sparse", "combined"):
                row["prune_ms"] = _stat([1e3 * t for r in found.values() for t in r["prune_seconds"]])
                row["svi_epoch_s"] = _stat([t for r in found.values() for t in r["svi_epoch_seconds"]])
                row["sparsify_s"] = _stat([r["sparsify_seconds"] for r in found.values()])
                row["rounds"] = _stat([float(len(r["rounds"]) - 1) for r in found.values()])
            if stage in ("dense", "structured"):
                row["train_epoch_s"] = _stat([t for r in found.values() for t in r["epoch_seconds"]])
            if stage == "combined":
                row["structured_compression"] = _stat([r["structured_compression"] for r in found.values()])
            rows.append(row)
    _check_goal(rows)
    return rows, missing


def _check_goal(rows: list[dict[str, Any]]) -> None:
    dense = {row["model"]: row for row in rows if row["method"] == "dense"}
    for row in rows:
        if row["method"] not in ("sparse", "combined") or row["model"] not in dense:
            continue
        base = dense[row["model"]]
        failed = []
        if row["weight_sparsity"]["mean"] < GOAL_SPARSITY:
            failed.append("sparsity")
        if row["accuracy_vs_dense"] is None or row["accuracy_vs_dense"]["mean"] < -GOAL_ACCURACY_DROP:
            failed.append("accuracy")
        if row["nll"]["mean"] > base["nll"]["mean"]:
            failed.append("NLL")
        if row["ece"]["mean"] > base["ece"]["mean"]:
            failed.append("ECE")
        row["goal"] = {"met": not failed, "failed": failed}


def _pm(stat: dict[str, float] | None, scale: float = 1.0, digits: int = 2) -> str:
    if stat is None:
        return "—"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _export_tables(out: Path, models: Sequence[str], export_seed: int) -> tuple[list[str], dict[str, Any]]:
    lines, exported = [], {}
    for model in models:
        result = _load(out, model, export_seed, "export")
        if result is None:
            continue
        exported[model] = result
        latency = result["latency"]["by_provider"][Provider.CPU.value]
        batches = sorted(latency, key=int)
        header = "| File | ONNX bytes | deflate-9 bytes | CSR weights + rest (bytes) | nonzero / params | zeros in file | ONNX test acc. % |"
        header += "".join(f" p50 batch {b} (ms) | × vs dense |" for b in batches)
        lines += [f"### {model}, seed {export_seed}", "", header, "|" + "---|" * (7 + 2 * len(batches))]
        for name, sizes in result["files"].items():
            cells = [name, f"{sizes['onnx_bytes']:,}", f"{sizes['deflate_bytes']:,}",
                     f"{sizes['csr_bytes']:,} + {sizes['other_bytes']:,} = {sizes['sparse_model_bytes']:,}",
                     f"{sizes['nonzero_parameters']:,} / {sizes['parameters']:,}", f"{sizes['onnx_zeros']:,}",
                     f"{100 * sizes['test_onnx']['accuracy']:.2f}"]  # fmt: skip
            for batch in batches:
                p50 = latency[batch][name]["p50_ms"]
                dense = latency[batch]["dense"]["p50_ms"]
                cells += [f"{p50:.3f}", f"{dense / p50:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines, exported


def write_report(
    out: Path, models: Sequence[str], seeds: Sequence[int], export_seed: int | None, *, command: str, reproduce: str
) -> dict[str, Any]:
    """Aggregate ``out``'s stored results into ``weight_sparsity.json`` and ``.md``; ``reproduce`` is the
    command that computes them, ``command`` the one that wrote this report."""
    out = Path(out)
    rows, missing = summarise(out, models, seeds)
    lines = [
        "# BMR on individual weights: Fashion-MNIST", "",
        "| Model | Method | Seeds | Weights zeroed % (of its own) | Parameters removed % (of dense) | Accuracy % | Δ acc. vs dense (pp) | NLL | ECE | Goal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in rows:
        goal = row.get("goal")
        verdict = "—" if goal is None else ("met" if goal["met"] else "not met: " + ", ".join(goal["failed"]))
        lines.append(
            f"| {row['model']} | {row['label']} | {len(row['seeds'])} | {_pm(row['weight_sparsity'], 100)} | "
            f"{_pm(row['params_removed'], 100)} | {_pm(row['accuracy'], 100)} | {_pm(row['accuracy_vs_dense'], 100)} | "
            f"{_pm(row['nll'], digits=4)} | {_pm(row['ece'], digits=4)} | {verdict} |"
        )
    lines += ["", "Goal (issue 15): >= 90% of weights removed, accuracy within 1 point of the dense model, NLL and ECE no",
              "higher than the dense model's (means over seeds). Weights zeroed: exact zeros among the model's own",
              "Linear/Conv2d weights (biases not counted; for the combined model, among the structured model's survivors);",
              "parameters removed: 1 - nonzero parameters (biases included) / the dense model's parameters, so slicing",
              "and zeroing count alike. Δ acc.: paired per seed against the dense model of the same seed.", "",
              "## Cost of the pruning step (dF over all weights) against a training epoch", "",
              "| Model | Method | dF step (ms) | one epoch (s) | dF / epoch | dF steps run | whole run (s) |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        if "prune_ms" in row and row["prune_ms"] and row["svi_epoch_s"]:
            ratio = row["prune_ms"]["mean"] / 1e3 / row["svi_epoch_s"]["mean"]
            lines.append(f"| {row['model']} | {row['label']}: dF step vs SVI epoch | {_pm(row['prune_ms'], digits=2)} | {_pm(row['svi_epoch_s'])} | "
                         f"{ratio:.1e} | {_pm(row['rounds'], digits=1)} | {_pm(row['sparsify_s'], digits=0)} |")  # fmt: skip
    for row in rows:
        if "train_epoch_s" in row and row["train_epoch_s"]:
            lines.append(f"| {row['model']} | {row['label']}: a training epoch, for scale | | {_pm(row['train_epoch_s'])} | | | |")
    export_lines, exported = _export_tables(out, models, export_seed) if export_seed is not None else ([], {})
    if export_lines:
        lines += ["", "## Export: dense-with-zeros ONNX files, their sparse sizes and ONNX Runtime CPU latency", "",
                  "Every file is parity-checked by `export_onnx`; CSR = float32 values + int32 column indices + int32 row",
                  "pointers of every Linear/Conv2d weight (a conv flattened to out x in*k*k), the rest (biases) dense;",
                  "deflate-9 = the ONNX file compressed by zlib level 9. Latency: `measure_latency`, models interleaved,",
                  "one intra-op thread; × = p50(dense) / p50(file).", "", *export_lines]  # fmt: skip
    if missing:
        lines += ["", "## Missing (not run yet or interrupted)", "", ", ".join(missing)]
    lines += ["", "## Command", "", f"    {reproduce}", "", f"(this report written by `{command}`)", "",
              f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}"]  # fmt: skip
    summary = json_safe({"command": command, "reproduce": reproduce, "models": list(models), "seeds": list(seeds), "export_seed": export_seed,
                         "rows": rows, "missing": missing, "export": exported})  # fmt: skip
    write_json(out / "weight_sparsity.json", summary)
    (out / "weight_sparsity.md").write_text("\n".join(lines) + "\n")
    return summary
