"""One flow over several training seeds, reported as mean +- std (sample standard deviation).

Layout, ``runs/<flow>/<group-id>/``::

    group.json          the flow's resolved config and the seeds
    seed<k>/            an ordinary run directory (``bmrs resume`` works on it) with train.seed = k
    summary.json        per metric: mean, std, n and the per-seed values; completed, degraded and failed seeds
    summary.md          the same as a table

Only ``train.seed`` varies: the data split (``data.seed``) stays fixed, so the spread measured is
that of initialisation, noise draws and minibatch order. The summary is rebuilt from the seed
directories' ``report.json`` and ``status.json`` files, so it stays right after any seed is resumed.
A degraded seed (its report's ``checks`` failed: a collapsed model) has a report but has not
succeeded: it is listed apart with its warning and its figures stay out of the means.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bmrs.train.metrics import mean_std
from bmrs.artifacts import write_json
from pipeline.stages import steps
from pipeline.config import FlowConfig

GROUP_FILE = "group.json"

# Dotted paths into report.json; latency speed-ups and post-training points are added per provider,
# batch size and criterion found in the reports.
REPORT_METRICS = (
    "pruned.accuracy", "dense.accuracy", "pruned.nll", "dense.nll", "pruned.ece", "dense.ece",
    "pruned.compression", "pruned.params", "dense.params", "pruned.flops", "dense.flops",
    # BMR on weights (sparsify): what slicing removed, the zeros among the weights, both together
    "pruned.structured_compression", "pruned.weight_sparsity", "pruned.total_removed",
)  # fmt: skip

# (seed config, run directory, resume) -> exit status; raises when the run failed unexpectedly.
Execute = Callable[[FlowConfig, Path, bool], int]


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. --seeds 0 1 2")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ValueError(f"--seeds lists seed {repeated[0]} twice; each seed is one run, list it once")
    return seeds


def seed_config(config: FlowConfig, seed: int) -> FlowConfig:
    return replace(config, train=replace(config.train, seed=seed))


def new_group_dir(config: FlowConfig, seeds: Sequence[int]) -> Path:
    group_dir = steps.new_unique_dir(Path(config.output.runs_dir) / config.name)
    write_json(group_dir / GROUP_FILE, {"flow": config.name, "seeds": list(check_seeds(seeds)), "config": config.to_dict()})
    return group_dir


def is_group_dir(path: Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def read_group(group_dir: Path) -> tuple[dict[str, Any], list[int]]:
    """(the flow's config as ``FlowConfig.to_dict`` wrote it, the seeds) from ``group.json``."""
    path = Path(group_dir) / GROUP_FILE
    try:
        group = json.loads(path.read_text())
        seeds = check_seeds(group["seeds"])
        if not isinstance(group["config"], dict) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError("seeds must be integers and config a mapping")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is not a readable seed group ({error}); start a new multi-seed run") from error
    return group["config"], seeds


def seed_dir(group_dir: Path, seed: int) -> Path:
    return Path(group_dir) / f"seed{seed}"


def run_group(config: FlowConfig, seeds: Sequence[int], group_dir: Path, execute: Execute) -> dict[str, Any]:
    """Run every seed that has no report yet (resuming the ones begun before), one after another;
    a failed seed does not stop the others. Writes and returns the summary."""
    try:
        for seed in seeds:
            run_dir = seed_dir(group_dir, seed)
            if (run_dir / "report.json").is_file():
                continue
            resume = (run_dir / "config.json").is_file()
            if not resume:  # a resumed seed is marked running by ``execute``, once it holds the run's lock
                steps.start_run_dir(seed_config(config, seed), run_dir)
            print(f"bmrs: seed {seed} -> {run_dir}")
            try:
                execute(seed_config(config, seed), run_dir, resume)
            except Exception as error:  # noqa: BLE001  (recorded in the seed's status.json by execute; the next seed still runs)
                print(f"bmrs: seed {seed} failed ({type(error).__name__}: {error}); going on with the others", file=sys.stderr)
    finally:
        summary = write_summary(group_dir)  # also on Ctrl-C: finished seeds are summarised
    return summary


def _lookup(report: dict[str, Any], dotted: str) -> Any:
    node: Any = report
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _report_metrics(report: dict[str, Any]) -> dict[str, float]:
    paths = list(REPORT_METRICS)
    for provider, by_batch in (report.get("latency") or {}).items():
        paths += [f"latency.{provider}.{batch}.speedup_p50" for batch in by_batch]
    for criterion in ((report.get("post_training") or {}).get("criteria") or {}):
        paths += [f"post_training.criteria.{criterion}.{point}.{axis}"
                  for point in ("bmrs_stop", "knee") for axis in ("compression", "accuracy")]  # fmt: skip
    values = {path: _lookup(report, path) for path in paths}
    return {path: float(v) for path, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def summarize(group_dir: Path) -> dict[str, Any]:
    """Mean +- std over the seeds that completed; degraded seeds are listed with their warning and
    pruned accuracy, every other seed with its state and error."""
    tree, seeds = read_group(group_dir)
    completed, degraded, failed, per_seed = [], [], [], {}
    for seed in seeds:
        run_dir = seed_dir(group_dir, seed)
        report_path = run_dir / "report.json"
        if report_path.is_file():
            figures = _report_metrics(json.loads(report_path.read_text()))
            warning = steps.degraded_warning(run_dir)
            if warning is None:
                completed.append(seed)
                per_seed[seed] = figures
            else:
                accuracy = figures.get("pruned.accuracy")
                degraded.append({"seed": seed, "run_dir": str(run_dir), "pruned_accuracy": accuracy, "warning": warning})
            continue
        status = _read_status(run_dir)
        failed.append({"seed": seed, "run_dir": str(run_dir), "state": status.get("state", "not started"), "error": status.get("error")})
    metrics: dict[str, Any] = {}
    for name in dict.fromkeys(name for seed in completed for name in per_seed[seed]):
        values = [per_seed[seed][name] for seed in completed if name in per_seed[seed]]
        mean, std = mean_std(values)
        metrics[name] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return {
        "flow": tree.get("name"),
        "group_dir": str(group_dir),
        "seeds": seeds,
        "varied": "train.seed",
        "completed": completed,
        "degraded": degraded,
        "failed": failed,
        "metrics": metrics,
    }


def _read_status(run_dir: Path) -> dict[str, Any]:
    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return status if isinstance(status, dict) else {}


def write_summary(group_dir: Path) -> dict[str, Any]:
    summary = summarize(group_dir)
    write_json(Path(group_dir) / "summary.json", summary)
    (Path(group_dir) / "summary.md").write_text(summary_markdown(summary))
    return summary


def _mean_std_text(mean: float, std: float) -> str:
    """Counts (params, FLOPs) as whole numbers, fractions and ratios to four decimals."""
    spec = ",.0f" if abs(mean) >= 1000 else ".4f"
    return f"{mean:{spec}} ± {std:{spec}}"


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# {summary['flow']}: {len(summary['completed'])} of {len(summary['seeds'])} seeds completed"
        + (f", {len(summary['degraded'])} degraded" if summary.get("degraded") else ""),
        "",
        f"Seeds (train.seed): {summary['seeds']}; mean ± sample std over the completed ones.",
        "",
        "| metric | mean ± std | n |",
        "|---|---|---|",
    ]
    for name, row in summary["metrics"].items():
        lines.append(f"| {name} | {_mean_std_text(row['mean'], row['std'])} | {row['n']} |")
    if summary.get("degraded"):
        lines += ["", "## Degraded seeds (a model failed a sanity bound; not in the means)", ""]
        for row in summary["degraded"]:
            accuracy = "n/a" if row["pruned_accuracy"] is None else f"{row['pruned_accuracy']:.4f}"
            lines.append(f"- seed {row['seed']} ({row['run_dir']}, pruned accuracy {accuracy}): {row['warning']}")
    if summary["failed"]:
        lines += ["", "## Seeds without a report", ""]
        for row in summary["failed"]:
            reason = f": {row['error']}" if row["error"] else ""
            lines.append(f"- seed {row['seed']} ({row['state']}, {row['run_dir']}){reason}")
    return "\n".join(lines) + "\n"
