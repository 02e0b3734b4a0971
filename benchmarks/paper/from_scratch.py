"""Dense networks of pruned widths trained from scratch: what a width budget can reach at all.

    python -m benchmarks.paper.from_scratch --model mlp --widths 10 12 32 [--seeds 0 1 2]
    python -m benchmarks.paper.from_scratch --model lenet5 --widths 6,10,20,20 6,16,10,20 [--seeds 0 1 2]
        [--epochs 50] [--finetune-epochs 10] [--set SECTION.KEY=VALUE ...] [--flows flows.yaml] [--jobs N]
        [--out benchmarks/paper/results/from_scratch]

A compression target fixes how many structures may survive: 93% of the Fashion-MNIST MLP's
parameters leaves at most 10 of its 150 hidden neurons. Training the network of those widths
without noise, with the paper's budget (same batch size, learning rate and 50 + 10 epochs as the
pruned runs), tells whether a target accuracy is within reach of any pruning method: it is the
"train the small network directly" baseline a pruned model has to beat to be worth its training.

``--widths`` takes one entry per network: the hidden width for ``mlp`` (its preset's depth), the
four widths ``conv1,conv2,fc1,fc2`` for ``lenet5``; each becomes ``--set model...`` overrides of the
model's paper flow, which then trains without noise (``train.criterion`` null, the paper's "None").
Each (widths, seed) run is cached as raw JSON in
``<out>/raw/``; the summary is ``<out>/<dataset>-<model>.json`` and ``.md`` with parameters, the
compression against the paper-size network, and test accuracy and NLL as mean +- sample std.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.paper import runner
from benchmarks.paper.experiment import (
    build,
    load_data,
    run_cached,
    run_record,
    train_and_measure,
)
from bmrs.artifacts import write_json
from bmrs.models import LENET5_WIDTHS
from bmrs.train.metrics import mean_std
from export.slicing import count_params
from pipeline.config import FlowConfig
from pipeline.seeds import check_seeds

# How one --widths entry becomes --set overrides of the paper flow's model, and how many numbers it
# takes. The mlp keeps its preset's depth; its preset itself is dropped, since a preset and a width
# that disagrees with it are refused as a contradiction.
WIDTH_OPTIONS = {
    "mlp": (1, lambda widths, options: ["model.preset=null", f"model.hidden_width={widths[0]}",
                                        f"model.hidden_layers={options['hidden_layers']}"]),
    "lenet5": (len(LENET5_WIDTHS), lambda widths, options: [f"model.widths={runner.yaml_value(list(widths))}"]),
}  # fmt: skip
# Settings this benchmark sets itself: overriding them with --set would be ambiguous.
FIXED = {"train.criterion": "nothing is pruned", "train.epochs": "use --epochs", "train.finetune_epochs": "use --finetune-epochs",
         "train.seed": "use --seeds", "noise": "these networks train without noise layers",
         **{f"model.{key}": "set by --widths" for key in ("preset", "hidden_width", "hidden_layers", "widths")}}  # fmt: skip


def parse_widths(model: str, entries: Sequence[str]) -> list[tuple[int, ...]]:
    """``--widths`` entries as integer tuples, each checked against what ``model`` takes."""
    if model not in WIDTH_OPTIONS:
        raise ValueError(f"--model {model} has no width options; choose one of {sorted(WIDTH_OPTIONS)}")
    if not entries:
        raise ValueError("no --widths given; pass e.g. --widths 10 32 (mlp) or --widths 6,10,20,20 (lenet5)")
    count, _ = WIDTH_OPTIONS[model]
    parsed = []
    for entry in entries:
        try:
            widths = tuple(int(part) for part in str(entry).split(","))
        except ValueError:
            widths = ()
        if len(widths) != count or any(w < 1 for w in widths):
            raise ValueError(
                f"--widths {entry!r} is not {count} positive integer(s) separated by commas, as {model} takes"
                + (" (conv1,conv2,fc1,fc2)" if model == "lenet5" else " (the hidden width)")
            )
        if widths in parsed:
            raise ValueError(f"--widths {entry!r} is listed twice; list each network once")
        parsed.append(widths)
    return parsed


def width_overrides(base: FlowConfig, widths: tuple[int, ...]) -> list[str]:
    """``--set`` strings that give the paper flow's model these widths."""
    _, to_sets = WIDTH_OPTIONS[base.model.name]
    return to_sets(widths, base.model.options())


def label(widths: tuple[int, ...]) -> str:
    return "x".join(str(w) for w in widths)


def run_one(config: FlowConfig, path: str) -> dict[str, Any]:
    return run_cached(path, run_record(config), lambda: train_and_measure(config)[1])


def summarise(
    networks: Sequence[tuple[int, ...]], seeds: Sequence[int], results: dict[tuple[tuple[int, ...], int], dict[str, Any]],
    paper_params: int,
) -> list[dict[str, Any]]:
    rows = []
    for widths in networks:
        runs = [results[(widths, seed)] for seed in seeds if (widths, seed) in results]
        if not runs:
            continue
        params = runs[0]["test"]["params"]
        row: dict[str, Any] = {
            "widths": list(widths),
            "seeds": [seed for seed in seeds if (widths, seed) in results],
            "params": params,
            "compression_pct": 100.0 * (1.0 - params / paper_params),
        }
        for key, scale in (("accuracy", 100.0), ("nll", 1.0)):
            mean, std = mean_std([scale * run["test"][key] for run in runs])
            row[key] = {"mean": mean, "std": std}
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], paper_params: int) -> str:
    lines = [
        f"| Widths | Seeds | Params | Compression vs the paper's network ({paper_params:,} params) | Accuracy % | NLL |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {label(tuple(row['widths']))} | {len(row['seeds'])} | {row['params']:,} | {row['compression_pct']:.2f}% "
            f"| {row['accuracy']['mean']:.2f} ± {row['accuracy']['std']:.2f} | {row['nll']['mean']:.4f} ± {row['nll']['std']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper.from_scratch", description=__doc__.splitlines()[0])
    runner.add_run_arguments(parser, default_out=str(Path(__file__).parent / "results" / "from_scratch"), default_seeds=[0, 1, 2])
    parser.add_argument("--widths", nargs="+", required=True, help="one network each: mlp 'W', lenet5 'C1,C2,F1,F2'")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="epochs after --epochs (the pruned runs' fine-tuning)")
    return parser


def run_configs(args: argparse.Namespace) -> tuple[dict[int, FlowConfig], dict[tuple[tuple[int, ...], int], FlowConfig]]:
    """Per seed the paper-size dense network, and every (widths, seed) run the command line asks for."""
    seeds = check_seeds(args.seeds)
    runner.check_jobs(args.jobs)
    networks = parse_widths(args.model, args.widths)
    sets = [*runner.user_overrides(args.overrides, FIXED), f"train.epochs={args.epochs}",
            f"train.finetune_epochs={args.finetune_epochs}", *runner.criterion_overrides(None)]  # fmt: skip
    base = {seed: runner.paper_config(args.flows, args.model, args.dataset, [*sets, f"train.seed={seed}"]) for seed in seeds}
    configs = {
        (widths, seed): runner.paper_config(args.flows, args.model, args.dataset,
                                            [*sets, f"train.seed={seed}", *width_overrides(base[seed], widths)])
        for widths in networks for seed in seeds
    }  # fmt: skip
    return base, configs


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        base, configs = run_configs(args)
        data = load_data(next(iter(base.values())).data)  # a missing dataset fails here, not once per run
        for config in configs.values():  # and widths the model refuses
            build(config, data)
    except (ValueError, TypeError) as error:  # ConfigError among them: a bad --set, as bmrs run reports it
        runner.bad_input("from_scratch", error)
    networks, seeds = list(dict.fromkeys(w for w, _ in configs)), list(base)
    paper_params = count_params(build(base[seeds[0]], data))
    out = Path(args.out)
    stem = f"{args.dataset}-{args.model}"
    labels = {key: f"{label(key[0])} seed={key[1]}" for key in configs}
    tasks = [
        runner.Task(labels[key], run_one, (config, str(out / "raw" / f"{stem}-{label(key[0])}-seed{key[1]}.json")))
        for key, config in configs.items()
    ]
    results, failures = runner.run_all(tasks, args.jobs)
    finished = {key: results[name] for key, name in labels.items() if name in results}
    if finished:
        rows = summarise(networks, seeds, finished, paper_params)
        command = runner.command_line("benchmarks.paper.from_scratch", argv)
        write_json(out / f"{stem}.json", {"benchmark": "from_scratch", "command": command, "paper_params": paper_params,
                                          "spec": next(iter(finished.values()))["spec"], "rows": rows})  # fmt: skip
        table = markdown_table(rows, paper_params)
        (out / f"{stem}.md").write_text(
            f"# Dense {args.model} on {args.dataset} at given widths, trained from scratch\n\n"
            f"No noise, nothing pruned, the paper's budget ({args.epochs} + {args.finetune_epochs} epochs); "
            f"mean ± sample std over seeds {seeds}.\n\n" + table + f"\nCommand: `{command}`\n"
        )  # fmt: skip
        print(table)
    return runner.report_failures(failures)


if __name__ == "__main__":
    sys.exit(main())
