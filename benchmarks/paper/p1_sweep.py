"""Paper figure 4: test accuracy and compression of continuous BMRS_U-p1 pruning as p1 varies.

    python -m benchmarks.paper.p1_sweep [--model lenet5|mlp] [--p1 1 2 ... 16] [--seeds 0 1 2]
        [--epochs 50] [--finetune-epochs 10] [--max-train-examples N] [--train KEY=VALUE ...]
        [--noise KEY=VALUE ...] [--jobs N] [--out benchmarks/paper/results/p1_sweep]

Every (p1, seed) is one continuous-pruning run with the paper budget (criterion ``bmrs_u``,
``criterion_settings={p1: value}``), cached as raw JSON in ``<out>/raw/`` so that an interrupted
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

import torch

from benchmarks.paper import runner
from benchmarks.paper.experiment import (
    RunSpec,
    load_data,
    mean_std,
    run_cached,
    train_and_measure,
)
from benchmarks.plots import Series, line_plot
from bmrs.artifacts import write_json
from bmrs.criteria import criterion_settings
from bmrs.models import NoiseInit
from bmrs.math.reduction import delta_f_loguniform
from bmrs.train import TrainConfig

DEFAULT_P1 = [float(v) for v in range(1, 17)]


def check_p1(values: Sequence[float], noise: NoiseInit) -> list[float]:
    """The p1 values, each checked by BMRS_U's own validation under ``noise``'s truncation, so a
    bad one fails before any training rather than at the first pruning step."""
    if not values:
        raise ValueError("no p1 values given; pass e.g. --p1 1 2 4 8")
    values = [float(v) for v in values]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"p1={repeated[0]:g} is listed twice; list each value once")
    p2 = criterion_settings("bmrs_u")["p2"]
    for value in values:
        try:
            delta_f_loguniform(torch.zeros(1), torch.ones(1), p1=value, p2=p2, log_a=noise.log_a, log_b=noise.log_b)
        except ValueError as error:
            raise ValueError(f"--p1 {value:g} is not usable: {error}") from error
    return values


def run_path(out: Path, stem: str, p1: float, seed: int) -> Path:
    return out / "raw" / f"{stem}-p1_{p1:g}-seed{seed}.json"


def run_one(spec: RunSpec, path: str) -> dict[str, Any]:
    """One run's raw result: the cached one when ``path`` holds exactly ``spec``, else trained now."""
    return run_cached(path, spec, lambda: train_and_measure(spec)[1])


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runner.add_run_arguments(parser, default_out=str(Path(__file__).parent / "results" / "p1_sweep"), default_seeds=[0, 1, 2])
    parser.add_argument("--p1", type=float, nargs="+", default=DEFAULT_P1, help="p1 values (default 1..16)")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs after training (paper: 10)")
    args = parser.parse_args(argv)
    sweep_sets = "the sweep trains bmrs_u with each --p1"
    fixed = {"criterion": sweep_sets, "criterion_settings": sweep_sets, "epochs": "use --epochs",
             "finetune_epochs": "use --finetune-epochs", "seed": "use --seeds"}  # fmt: skip
    try:
        seeds = runner.check_seeds(args.seeds)
        runner.check_jobs(args.jobs)
        train = runner.parse_overrides(args.train, TrainConfig, flag="--train", fixed=fixed)
        noise = runner.parse_noise(args.noise)
        p1_values = check_p1(args.p1, NoiseInit(**noise))
        specs = {
            (p1, seed): runner.paper_spec(
                args.model, args.dataset, root=args.data_root, max_train_examples=args.max_train_examples, noise=noise,
                train={**train, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "criterion": "bmrs_u",
                       "criterion_settings": {"p1": p1}, "seed": seed},
            )
            for p1 in p1_values
            for seed in seeds
        }  # fmt: skip
        load_data(next(iter(specs.values())))  # a missing dataset fails here, not once per run
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    out = Path(args.out)
    stem = f"{args.dataset}-{args.model}"
    labels = {key: f"p1={key[0]:g} seed={key[1]}" for key in specs}
    tasks = [runner.Task(labels[key], run_one, (spec, str(run_path(out, stem, *key)))) for key, spec in specs.items()]
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
