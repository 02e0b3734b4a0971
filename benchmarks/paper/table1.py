"""Table 1 of the paper (section 5, "Continuous pruning"; appendix C) on Fashion-MNIST, as one command.

    python -m benchmarks.paper.table1 [--models lenet5 mlp] [--seeds 0 1 2] [--methods ...] [--epochs 50]
        [--finetune-epochs 10] [--jobs 2] [--out benchmarks/paper/results/table1]
        [--set SECTION.KEY=VALUE ...] [--flows flows.yaml] [--aggregate-only]

Every (model, method, seed) is one ``FlowConfig``: the model's paper flow in flows.yaml
(``lenet5_fmnist_paper``, ``mlp_fmnist_paper``) with the user's ``--set`` overrides (as ``bmrs run
--set``: ``--set noise.init_mu=-20 --set train.finetune_noise=expected``; ``--set
data.max_train_examples=256`` for a smoke run) and then the method's criterion, the epochs and the
seed. Each is trained and measured by ``train_and_measure`` and stored at
``<out>/raw/fashion_mnist-<model>-<method>-seed<k>.json`` through ``run_cached``: a re-run skips
finished runs and recomputes those whose settings changed. The paper's L2 baseline
prunes "post-training based on the compression rate achieved by BMRS_N"; ``l2`` and ``grad`` train
the same noisy model, prune once after the last training epoch (``prune_start = epochs``) at the
per-layer fractions the same seed's ``bmrs_n`` run ended with, then fine-tune, so they run after it.
Where that run removed nothing, pruning at its fractions removes nothing either and the training is
the same computation (no criterion draws random numbers), so the result is the source's, marked
``derived_from`` instead of being trained again.
The table goes to ``<out>/table1.md`` and ``<out>/table1.csv`` (``benchmarks.paper.table1_report``).
"""
from __future__ import annotations

import argparse
import enum
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.paper import runner
from benchmarks.paper.experiment import run_cached, run_record, train_and_measure
from benchmarks.paper.table1_report import PAPER_LABELS, collect, raw_path, write_report
from bmrs.nn.noise import noise_modules
from bmrs.train import TrainConfig
from pipeline.config import FlowConfig
from pipeline.seeds import check_seeds

DATASET = "fashion_mnist"
DEFAULT_OUT = Path(__file__).parent / "results" / "table1"
DEFAULT_SEEDS = (0, 1, 2)  # the paper averages ten; pass --seeds 0 1 2 3 4 5 6 7 8 9 for that
MODELS = runner.paper_models(DATASET)  # each with appendix C's budget, from its paper flow in flows.yaml


class Schedule(enum.Enum):
    DENSE = "dense"  # no noise layers, nothing pruned: the paper's "None"
    CONTINUOUS = "continuous"  # the criterion runs after every training epoch
    AT_RATIO_SOURCE = "at_ratio_source"  # once, after training, at the ratio source's per-layer fractions


@dataclass(frozen=True)
class Method:
    name: str
    criterion: str | None
    settings: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule = Schedule.CONTINUOUS


RATIO_SOURCE = "bmrs_n"
METHODS = {m.name: m for m in (
    Method("none", None, schedule=Schedule.DENSE),
    Method("l2", "l2", schedule=Schedule.AT_RATIO_SOURCE),
    Method("grad", "grad", schedule=Schedule.AT_RATIO_SOURCE),
    Method("etheta", "etheta", {"threshold": 0.1}),
    Method("snr", "snr", {"threshold": 1.0}),
    Method("bmrs_n", "bmrs_n"),
    Method("bmrs_u8", "bmrs_u", {"p1": 8.0}),
    Method("bmrs_u4", "bmrs_u", {"p1": 4.0}),
)}  # fmt: skip
# Settings with their own flag, or that each method decides: overriding them with --set would be ambiguous.
FIXED = {"train.epochs": "set by --epochs", "train.finetune_epochs": "set by --finetune-epochs",
         "train.seed": "set by --seeds", "train.criterion": "set by --methods", "data.dataset": f"table 1 is on {DATASET}"}  # fmt: skip
# What cannot change a run without noise layers; left at its default there so the dense runs stay cached.
NOISE_ONLY_TRAIN = ("prune_every", "prune_start", "prune_start_by_layer", "kl_weighting", "kl_scale", "finetune_noise",
                    "min_structures_per_layer")  # fmt: skip


def method_notes() -> list[str]:
    notes = []
    for method in METHODS.values():
        if method.schedule is Schedule.DENSE:
            what = "no noise layers, nothing pruned"
        elif method.schedule is Schedule.CONTINUOUS:
            what = f"criterion `{method.criterion}` {method.settings or '(defaults)'} after every training epoch"
        else:
            what = (f"criterion `{method.criterion}` once after the last training epoch (`prune_start = epochs`), removing "
                    f"per layer the fraction the same seed's `{RATIO_SOURCE}` run ended with (`layer_ratios`)")  # fmt: skip
        notes.append(f"- {PAPER_LABELS[method.name]} (`{method.name}`): {what}; then the fine-tuning epochs.")
    return notes


@dataclass(frozen=True)
class Recipe:
    """What every run of this invocation shares: the budget, the flows file and the user's --set overrides."""

    epochs: int = 50
    finetune_epochs: int = 10
    overrides: tuple[str, ...] = ()
    flows: Path = field(default=runner.FLOWS)


def run_config(model: str, method_name: str, seed: int, recipe: Recipe, layer_ratios: dict[str, float] | None = None) -> FlowConfig:
    """The run of ``method_name`` on ``model`` for ``seed``: the model's paper flow, the user's
    overrides, then what this method and invocation set (later --set strings win)."""
    method = METHODS[method_name]
    sets = [*recipe.overrides, f"train.epochs={recipe.epochs}", f"train.finetune_epochs={recipe.finetune_epochs}", f"train.seed={seed}"]
    settings = dict(method.settings)
    if method.schedule is Schedule.DENSE:
        defaults = TrainConfig()
        sets += [f"train.{key}={runner.yaml_value(getattr(defaults, key))}" for key in NOISE_ONLY_TRAIN]
    elif method.schedule is Schedule.AT_RATIO_SOURCE:
        if layer_ratios is None:
            raise ValueError(f"method {method_name!r} needs the per-layer fractions of the {RATIO_SOURCE!r} run of seed {seed}")
        sets += [f"train.prune_start={recipe.epochs}", "train.prune_start_by_layer={}"]  # once, after training, in every layer
        settings["layer_ratios"] = dict(layer_ratios)
    return runner.paper_config(recipe.flows, model, DATASET, [*sets, *runner.criterion_overrides(method.criterion, settings)])


def pruned_fractions(result: dict[str, Any]) -> dict[str, float]:
    """Per noise layer, the fraction of its structures a finished run had removed."""
    alive, sizes = result["history"][-1]["alive"], result.get("layer_sizes")
    if not sizes:
        raise ValueError("the result records no layer_sizes; delete it so that it is recomputed")
    return {name: (size - alive[name]) / size for name, size in sizes.items()}


def execute(model: str, method: str, seed: int, recipe: Recipe, out: Path, command: str, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run, computed unless its file under ``out`` already holds it; ``source`` is what this
    returned for the same seed's ratio-source run, for the methods that prune at its fractions.
    Returns what the progress line and the dependent runs need."""
    fractions = None if source is None else source["fractions"]
    config = run_config(model, method, seed, recipe, fractions)
    record = run_record(config)
    extras = {"method": method, "model": model, "seed": seed, "dataset": DATASET, "paper_row": PAPER_LABELS[method], "command": command}
    if fractions is not None:
        extras.update(layer_ratios=fractions, ratio_source=raw_path(Path("raw"), DATASET, model, RATIO_SOURCE, seed).as_posix())
    computed = False

    def compute() -> dict[str, Any]:
        nonlocal computed
        computed, started = True, time.perf_counter()
        if fractions is not None and not any(fractions.values()):
            return {**same_as_source(out, model, seed), **extras, "spec": record, "run_seconds": 0.0}
        trained, result = train_and_measure(config)
        result.update(extras)
        result["layer_sizes"] = {name: noise.num_structures for name, noise in noise_modules(trained).items()}
        result["run_seconds"] = time.perf_counter() - started
        return result

    result = run_cached(raw_path(out / "raw", DATASET, model, method, seed), record, compute)
    outcome = {"computed": computed, "seconds": result.get("run_seconds", 0.0), "test": result["test"]}
    if method == RATIO_SOURCE:
        outcome["fractions"] = pruned_fractions(result)
    return outcome


def same_as_source(out: Path, model: str, seed: int) -> dict[str, Any]:
    """The ratio source's stored result, for a method told to prune at fractions of zero."""
    path = raw_path(out / "raw", DATASET, model, RATIO_SOURCE, seed)
    source = json.loads(path.read_text())
    for record in source["history"]:
        record["criterion_keeps"] = None  # the source criterion's, not this method's
    return {**source, "derived_from": path.name, "train_seconds": 0.0}


def describe(outcome: dict[str, Any]) -> str:
    test = outcome["test"]
    state = f"computed in {outcome['seconds']:.1f} s" if outcome["computed"] else "cached"
    return f"{state}; compression {test['compression']:.2%}, accuracy {test['accuracy']:.2%}"


def tasks(models: Sequence[str], methods: Sequence[str], seeds: Sequence[int], recipe: Recipe, out: Path, command: str) -> list[runner.Task]:
    """Every requested run, each after the run it depends on (the same seed's ratio source)."""
    wanted = list(methods)
    later = [m for m in methods if METHODS[m].schedule is Schedule.AT_RATIO_SOURCE]
    if later and RATIO_SOURCE not in wanted:
        wanted.append(RATIO_SOURCE)
        print(f"running {RATIO_SOURCE} too: {', '.join(later)} prune at its fractions")

    def label(model: str, method: str, seed: int) -> str:
        return f"{model} {method} seed {seed}"

    first = [(mo, me, s) for mo in models for s in seeds for me in wanted if me not in later]
    return [runner.Task(label(*run), execute, (*run, recipe, out, command)) for run in first] + [
        runner.Task(label(mo, me, s), execute, (mo, me, s, recipe, out, command), depends_on=(label(mo, RATIO_SOURCE, s),))
        for mo in models for s in seeds for me in later
    ]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper.table1", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL", help=f"of {list(MODELS)}")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD", help=f"of {list(METHODS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help=f"default {list(DEFAULT_SEEDS)}; with --aggregate-only, every seed found")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own single-threaded process")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--aggregate-only", action="store_true", help="rebuild the table from <out>/raw without training")
    runner.add_config_arguments(parser)
    return parser


def _options(args: argparse.Namespace) -> Recipe:
    for kind, given, known in (("model", args.models, MODELS), ("method", args.methods, METHODS)):
        unknown = [name for name in given if name not in known]
        if unknown:
            raise ValueError(f"unknown {kind} {unknown[0]!r}; choose from {', '.join(known)}")
    if args.seeds is not None:
        check_seeds(args.seeds)
    runner.check_jobs(args.jobs)
    overrides = tuple(runner.user_overrides(args.overrides, FIXED))
    recipe = Recipe(epochs=args.epochs, finetune_epochs=args.finetune_epochs, overrides=overrides, flows=args.flows)
    for model in args.models:  # every setting checked once, before hours of training start
        for method in args.methods:
            run_config(model, method, 0, recipe, {} if METHODS[method].schedule is Schedule.AT_RATIO_SOURCE else None)
    return recipe


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    for name in ("models", "methods"):  # a repeated name would run, and write, the same file twice
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))
    try:
        recipe = _options(args)
    except (ValueError, TypeError) as error:  # ConfigError among them: a bad --set, as bmrs run reports it
        runner.bad_input("table1", error)
    command = runner.command_line("benchmarks.paper.table1", argv)
    started, failures = time.perf_counter(), []
    if not args.aggregate_only:
        seeds = args.seeds if args.seeds is not None else list(DEFAULT_SEEDS)
        _, failures = runner.run_all(tasks(args.models, args.methods, seeds, recipe, args.out, command), args.jobs, describe=describe)
    seeds_read = args.seeds if args.seeds is not None or args.aggregate_only else list(DEFAULT_SEEDS)
    results = collect(args.out / "raw", DATASET, args.models, args.methods, seeds_read)
    markdown, _ = write_report(args.out, results, args.models, args.methods, command=command, method_notes=method_notes(), dataset=DATASET)
    print(markdown)
    print(f"wrote {args.out / 'table1.md'} and {args.out / 'table1.csv'} ({time.perf_counter() - started:.1f} s)")
    if failures:
        raise SystemExit(runner.describe_failures(failures))


if __name__ == "__main__":
    main()
