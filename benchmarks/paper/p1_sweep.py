"""Paper figure 4: test accuracy and compression of continuous BMRS_U-p1 pruning as p1 varies.

    python -m benchmarks.paper.p1_sweep [--model lenet5|mlp] [--p1 1 2 ... 16] [--seeds 0 1 2]
        [--epochs 50] [--finetune-epochs 10] [--set SECTION.KEY=VALUE ...] [--flows flows.yaml]
        [--jobs N] [--out benchmarks/paper/results/p1_sweep]

Every (p1, seed) is one continuous-pruning run of the model's paper flow (criterion
``{name: bmrs_u, p1: value}``, the user's ``--set`` overrides as ``bmrs run --set`` takes them),
cached as raw JSON in ``<out>/raw/`` so that an interrupted
sweep restarts where it stopped. The summary is the mean +- sample standard deviation over seeds
of test accuracy and parameter compression per p1: ``<out>/<dataset>-<model>.json`` and ``.md``,
and one plot of each against p1 (``-accuracy.png``, ``-compression.png``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.paper import runner
from benchmarks.paper.experiment import (
    run_cached,
    run_record,
    train_and_measure,
)
from benchmarks.plots import Series, line_plot
from bmrs.artifacts import write_json
from bmrs.train.metrics import mean_std
from pipeline.config import FlowConfig
from pipeline.seeds import check_seeds

DEFAULT_P1 = [float(v) for v in range(1, 17)]
SWEEP_SETS = "the sweep trains bmrs_u with each --p1"
# Settings this benchmark sets itself: overriding them with --set would be ambiguous.
FIXED = {"train.criterion": SWEEP_SETS, "train.epochs": "use --epochs", "train.finetune_epochs": "use --finetune-epochs",
         "train.seed": "use --seeds"}  # fmt: skip


def check_p1(values: Sequence[float]) -> list[float]:
    """The p1 values as floats, each listed once. Whether BMRS_U takes each one under the run's
    noise prior is checked where every criterion is, when its run's config is loaded."""
    if not values:
        raise ValueError("no p1 values given; pass e.g. --p1 1 2 4 8")
    values = [float(v) for v in values]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"p1={repeated[0]:g} is listed twice; list each value once")
    return values


def run_path(out: Path, stem: str, p1: float, seed: int) -> Path:
    return out / "raw" / f"{stem}-p1_{p1:g}-seed{seed}.json"


def run_one(config: FlowConfig, path: str) -> dict[str, Any]:
    """One run's raw result: the cached one when ``path`` holds exactly this run, else trained now."""
    return run_cached(path, run_record(config), lambda: train_and_measure(config)[1])


def summarise(p1_values: Sequence[float], seeds: Sequence[int], results: dict[tuple[float, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Per p1, mean +- std over the seeds that finished of test accuracy and compression (in %)."""
    rows = []
    for p1 in p1_values:
        runs = [(seed, results[(p1, seed)]) for seed in seeds if (p1, seed) in results]
        row: dict[str, Any] = {"p1": p1, "seeds": [seed for seed, _ in runs]}
        for key in ("accuracy", "compression"):
            if runs:
                mean, std = mean_std([100.0 * result["test"][key] for _, result in runs])
                row[f"{key}_pct"] = {"mean": mean, "std": std}
            else:
                row[f"{key}_pct"] = None
        row["per_seed"] = [
            {"seed": seed, "accuracy": result["test"]["accuracy"], "compression": result["test"]["compression"],
             "widths": result["test"]["widths"]}
            for seed, result in runs
        ]  # fmt: skip
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| p1 | seeds | compression (%) | accuracy (%) |", "|---|---|---|---|"]
    for row in rows:
        cells = [
            "n/a" if row[key] is None else f"{row[key]['mean']:.2f} ± {row[key]['std']:.2f}"
            for key in ("compression_pct", "accuracy_pct")
        ]
        lines.append(f"| {row['p1']:g} | {len(row['seeds'])} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, stem: str, rows: list[dict[str, Any]], settings: dict[str, Any], command: str) -> dict[str, Any]:
    report = {"benchmark": "p1_sweep", "command": command, "settings": settings, "rows": rows}
    write_json(out / f"{stem}.json", report)
    title = f"BMRS_U-p1, {settings['model']} on {settings['dataset']}"
    done = [row for row in rows if row["accuracy_pct"] is not None]
    for key, axis in (("accuracy", "test accuracy (%)"), ("compression", "parameter compression (%)")):
        series = Series(
            f"mean ± std over {len(settings['seeds'])} seeds",
            [row["p1"] for row in done],
            [row[f"{key}_pct"]["mean"] for row in done],
            errors=[row[f"{key}_pct"]["std"] for row in done],
        )
        line_plot(out / f"{stem}-{key}.png", [series], xlabel="p1", ylabel=axis, title=f"{title}: {key}")
    table = markdown_table(rows)
    (out / f"{stem}.md").write_text(
        f"# {title}\n\nContinuous pruning with BMRS_U-p1; mean ± sample std over seeds {settings['seeds']}.\n\n"
        + table + f"\nCommand: `{command}`\n"
    )  # fmt: skip
    print(table)
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper.p1_sweep", description=__doc__.splitlines()[0])
    runner.add_run_arguments(parser, default_out=str(Path(__file__).parent / "results" / "p1_sweep"), default_seeds=[0, 1, 2])
    parser.add_argument("--p1", type=float, nargs="+", default=DEFAULT_P1, help="p1 values (default 1..16)")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs after training (paper: 10)")
    return parser


def run_configs(args: argparse.Namespace) -> dict[tuple[float, int], FlowConfig]:
    """Every (p1, seed) run the command line asks for, each checked as ``bmrs run`` checks a flow."""
    seeds = check_seeds(args.seeds)
    runner.check_jobs(args.jobs)
    sets = [*runner.user_overrides(args.overrides, FIXED), f"train.epochs={args.epochs}", f"train.finetune_epochs={args.finetune_epochs}"]
    return {
        (p1, seed): runner.paper_config(args.flows, args.model, args.dataset,
                                        [*sets, f"train.seed={seed}", *runner.criterion_overrides("bmrs_u", {"p1": p1})])
        for p1 in check_p1(args.p1)
        for seed in seeds
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configs = runner.checked_configs("p1_sweep", run_configs, args)
    p1_values, seeds = list(dict.fromkeys(p1 for p1, _ in configs)), list(dict.fromkeys(seed for _, seed in configs))
    out = Path(args.out)
    stem = f"{args.dataset}-{args.model}"
    labels = {key: f"p1={key[0]:g} seed={key[1]}" for key in configs}
    tasks = [runner.Task(labels[key], run_one, (config, str(run_path(out, stem, *key)))) for key, config in configs.items()]
    results, failures = runner.run_all(tasks, args.jobs)
    finished = {key: results[label] for key, label in labels.items() if label in results}
    if finished:
        settings = {
            "model": args.model,
            "dataset": args.dataset,
            "p1": p1_values,
            "seeds": seeds,
            "spec": next(iter(finished.values()))["spec"],  # one run's; the others differ in p1 and seed only
        }
        write_report(out, stem, summarise(p1_values, seeds, finished), settings, runner.command_line("benchmarks.paper.p1_sweep", argv))
    return runner.report_failures(failures)


if __name__ == "__main__":
    sys.exit(main())
