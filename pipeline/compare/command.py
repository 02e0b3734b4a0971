"""``bmrs compare``: every method on the same data split and the same dense reference, one directory.

    bmrs compare [flows.yaml] --flow NAME --methods none l2 etheta snr grad bmrs_n bmrs_u:8 bmrs_u:4
        [--seeds 0 1 2] [--set key=value ...] [--out DIR] [--no-progress]

Each (method, seed) is an ordinary run of the flow (the ``bmrs run`` path, through the ``execute``
callback the CLI passes) in ``<out>/<label>/seed<k>/``; only ``train.criterion`` and ``train.seed``
differ between them. Per seed the dense baseline is trained once and shared (``plan``), the dense
method first, ``bmrs_n`` before the methods that prune at its per-layer fractions (``l2``, ``grad``).
Rerunning the same command reuses finished runs, resumes begun ones and adds the missing ones; a
run directory made under other settings is refused. A failed or degraded run does not stop the
others. Exit codes as for seed groups: 0 all completed, 3 some degraded, 1 some without a report,
2 bad input (one ``bmrs: error:`` line, before anything is written).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bmrs.data import DataBundle
    from pipeline.compare.methods import Method
    from pipeline.config import FlowConfig

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1  # some run has no report (compare.json and the report say why)
EXIT_DEGRADED = 3  # every run has a report, but some model failed a sanity bound


class Execute(Protocol):
    """Runs the flow into ``run_dir`` (``pipeline.cli._execute``); returns the run's exit status."""

    def __call__(self, config: FlowConfig, run_dir: Path, *, resume: bool) -> int: ...


# (a seed's config, the data, the dense directory) -> the dense checkpoint; plan.train_dense by default.
TrainDense = Callable[["FlowConfig", "DataBundle", Path], Path]


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``bmrs compare``'s arguments, as a subcommand of ``subparsers`` (``add_subparsers()``'s result)."""
    parser = subparsers.add_parser(
        "compare", help="run several methods on the same split and dense reference, compared in one report",
        description="Run several methods of one flow on the same data split and the same dense baseline, one run "
        "directory per method and seed, and compare them in one report. Rerunning the same command reuses finished "
        "runs and adds missing ones.",
    )  # fmt: skip
    parser.add_argument("flows", nargs="?", default="flows.yaml", help="path of flows.yaml (default: ./flows.yaml)")
    parser.add_argument("--flow", default="default", help="name of the flow in flows.yaml (default: default)")
    parser.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                        help="none, a criterion (bmrs_n), name:VALUE for bmrs_u's p1 (bmrs_u:8), or name:key=value[,key=value]")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="train.seed values (default: the flow's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting of the flow, for every run, e.g. --set train.epochs=3")
    parser.add_argument("--out", type=Path, metavar="DIR", help="the comparison directory (default: <runs_dir>/<flow>/compare)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


@dataclass(frozen=True)
class Comparison:
    """What one ``bmrs compare`` runs: checked, nothing written yet."""

    base: FlowConfig  # the flow with the user's overrides; each method replaces its train.criterion
    methods: list[Method]  # in run order
    seeds: list[int]
    out_dir: Path
    data: DataBundle

    def header(self) -> dict[str, Any]:
        from pipeline.compare.methods import DENSE_FOLDER, RATIO_SOURCE

        return {
            "flow": self.base.name,
            "out_dir": str(self.out_dir),
            "methods": [m.to_dict() for m in self.methods],
            "seeds": list(self.seeds),
            "ratio_source": RATIO_SOURCE,
            "dense": f"{DENSE_FOLDER}/seed<k>/baseline/checkpoint.pt: the dense baseline of seed k, trained once, in every run of that seed",
            "config": self.base.to_dict(),
        }


def prepare(args: argparse.Namespace) -> Comparison:
    """Check everything ``args`` asks for before anything is written or trained: the flow and
    overrides, the seeds, every method (on the model too), and every directory already there.
    Raises ``ValueError`` (``ConfigError``, ``DatasetNotFoundError``) with one line naming the fix."""
    from pipeline.compare import methods as methods_module
    from pipeline.compare import plan
    from pipeline.config import load_flow
    from pipeline.seeds import check_seeds
    from pipeline.stages import steps

    overrides = list(args.overrides) + (["train.progress=false"] if args.no_progress else [])
    base = load_flow(args.flows, args.flow, overrides)
    seeds = check_seeds(args.seeds) if args.seeds is not None else [base.train.seed]
    methods, added = methods_module.parse_methods(args.methods, base)
    data = steps.load_data(base)
    for method in methods:  # a layer path naming nothing, or a criterion the model cannot carry, fails now
        steps.check_model(methods_module.with_criterion(base, method.criterion), data)
    out_dir = Path(args.out) if args.out is not None else plan.default_out(base)
    plan.check_writable(out_dir)
    comparison = Comparison(base, methods, seeds, out_dir, data)
    check_existing(comparison)
    if added is not None:
        later = ", ".join(m.spec for m in methods if m.at_ratio_source)
        print(f"bmrs: running {added.spec} too: {later} prune at its per-layer fractions")
    return comparison


def check_existing(comparison: Comparison) -> None:
    """Refuse (``ValueError``) what a previous comparison in the same directory left that this one
    could not reuse or resume: runs under other settings, checkpoints the flow would not accept."""
    from pipeline.compare import plan
    from pipeline.compare.methods import method_config
    from pipeline.seeds import seed_config

    base, data = comparison.base, comparison.data
    for seed in comparison.seeds:
        fractions = None
        for method in comparison.methods:
            directory = plan.run_dir(comparison.out_dir, method, seed)
            known = not method.at_ratio_source or fractions is not None
            config = method_config(base, method, seed, (fractions or {}) if method.at_ratio_source else None)
            found = plan.inspect(directory, config, without_layer_ratios=not known)
            if found is plan.Found.BEGUN and known:
                plan.check_begun(directory, config, data)
            if method.is_ratio_source and found is plan.Found.FINISHED:
                fractions = plan.layer_fractions(config, data, directory)
        plan.check_dense(plan.dense_dir(comparison.out_dir, seed), seed_config(base, seed), data)


def compare(args: argparse.Namespace, execute: Execute, *, train_dense: TrainDense | None = None) -> int:
    """``bmrs compare``: prepare, run every missing run, write the comparison report; the exit status."""
    from pipeline.stages.resume import RunDirError

    try:
        comparison = prepare(args)
    except (ValueError, TypeError) as error:  # TypeError: a user model's factory
        return _fail(str(error))
    print(f"bmrs: flow {comparison.base.name!r}: {len(comparison.methods)} methods x seeds {comparison.seeds} -> {comparison.out_dir}")
    try:
        summary = run_comparison(comparison, execute, train_dense=train_dense)
    except RunDirError as error:  # another process holds the comparison directory
        return _fail(str(error))
    return finish(comparison, summary)


def _fail(message: str) -> int:
    print(f"bmrs: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run_comparison(comparison: Comparison, execute: Execute, *, train_dense: TrainDense | None = None) -> dict[str, Any]:
    """Every run of ``comparison`` that has no report yet, seed by seed, holding the directory's lock;
    ``compare.json`` lists each run's outcome, also after Ctrl-C."""
    from bmrs.artifacts import write_json
    from pipeline.compare import plan
    from pipeline.stages.resume import exclusive_run

    comparison.out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[dict[str, Any]] = []
    with exclusive_run(comparison.out_dir):
        write_json(comparison.out_dir / plan.COMPARE_FILE, comparison.header())
        try:
            for seed in comparison.seeds:
                _run_seed(comparison, seed, execute, train_dense or plan.train_dense, outcomes)
        finally:
            summary = {**comparison.header(), "runs": outcomes}
            write_json(comparison.out_dir / plan.COMPARE_FILE, summary)
    return summary


def _run_seed(comparison: Comparison, seed: int, execute: Execute, train_dense: TrainDense, outcomes: list[dict[str, Any]]) -> None:
    from pipeline.compare import plan
    from pipeline.compare.methods import RATIO_SOURCE, method_config
    from pipeline.stages import steps

    base, data, total = comparison.base, comparison.data, len(comparison.methods) * len(comparison.seeds)
    dense: Path | str | None = None  # the trained checkpoint, or why the dense baseline failed
    fractions: dict[str, float] | None = None
    for method in comparison.methods:
        directory = plan.run_dir(comparison.out_dir, method, seed)
        outcome: dict[str, Any] = {"method": method.label, "spec": method.spec, "seed": seed, "run_dir": str(directory),
                                   "state": "not run", "reused": False, "error": None}  # fmt: skip
        outcomes.append(outcome)
        head = f"bmrs: [{len(outcomes)}/{total}] {method.label} seed {seed}"
        if method.at_ratio_source and fractions is None:
            outcome["error"] = f"not run: the {RATIO_SOURCE} run of seed {seed} has no report, so there are no per-layer fractions to prune at"
            print(f"{head}: {outcome['error']}", file=sys.stderr)
            continue
        config = method_config(base, method, seed, fractions if method.at_ratio_source else None)
        try:
            found = plan.inspect(directory, config)
        except ValueError as error:  # only where the ratio source's fractions changed since the check
            outcome["error"] = f"refused: {error}"
            print(f"{head}: {outcome['error']}", file=sys.stderr)
            continue
        if found is plan.Found.FINISHED:
            outcome["reused"] = True
            print(f"{head}: finished before, reusing {directory}")
        else:
            resume = found is plan.Found.BEGUN
            if plan.needs_dense(config):
                if dense is None:
                    dense = _dense(comparison, seed, train_dense)
                if isinstance(dense, str):
                    outcome["error"] = f"not run: {dense}"
                    print(f"{head}: {outcome['error']}", file=sys.stderr)
                    continue
            if found is plan.Found.NEW:
                steps.start_run_dir(config, directory)
            if plan.needs_dense(config):
                resume = bool(plan.share_dense(plan.dense_dir(comparison.out_dir, seed), directory, config)) or resume
            print(f"{head} {'resuming in' if found is plan.Found.BEGUN else '->'} {directory}")
            try:
                execute(config, directory, resume=resume)
            except Exception as error:  # noqa: BLE001  (status.json records it; the other runs still run)
                print(f"{head} failed ({type(error).__name__}: {error}); going on with the others", file=sys.stderr)
        outcome.update(_outcome(directory))
        if method.is_ratio_source and outcome["state"] in ("completed", "degraded"):
            try:
                fractions = plan.layer_fractions(config, data, directory)
            except ValueError as error:  # a damaged checkpoint: CheckpointError names the file
                print(f"{head}: its per-layer fractions cannot be read: {error}", file=sys.stderr)


def _dense(comparison: Comparison, seed: int, train_dense: TrainDense) -> Path | str:
    """Train (or load) seed ``seed``'s dense baseline; the checkpoint, or why it failed."""
    from bmrs.train.checkpoint import read_checkpoint
    from pipeline.compare import plan
    from pipeline.seeds import seed_config

    directory = plan.dense_dir(comparison.out_dir, seed)
    checkpoint = directory / "baseline" / "checkpoint.pt"
    try:
        finished = checkpoint.is_file() and read_checkpoint(checkpoint).meta.get("finished") is True
        what = "reusing" if finished else "training once, for every run of this seed:"
        print(f"bmrs: dense baseline of seed {seed}: {what} {checkpoint}")
        return train_dense(seed_config(comparison.base, seed), comparison.data, directory)
    except Exception as error:  # noqa: BLE001  (a diverged baseline fails this seed's runs, not the others)
        reason = f"the dense baseline of seed {seed} failed ({type(error).__name__}: {error}); rerun to continue it from {checkpoint}"
        print(f"bmrs: {reason}", file=sys.stderr)
        return reason


def _outcome(directory: Path) -> dict[str, Any]:
    """A run's state from its directory, as seed groups read it: completed and degraded runs have a
    report (degraded: a sanity bound failed, its warning), any other run is failed with its error."""
    import json

    from pipeline.stages import steps

    if (directory / "report.json").is_file():
        warning = steps.degraded_warning(directory)
        return {"state": "completed" if warning is None else "degraded", "error": warning}
    try:
        status = json.loads((directory / "status.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        status = {}
    error = status.get("error") if isinstance(status, dict) else None
    return {"state": "failed", "error": error or "no report was written"}


def finish(comparison: Comparison, summary: dict[str, Any]) -> int:
    """Write the comparison report, print how the runs ended; the exit status."""
    runs = summary["runs"]
    dirs = [Path(row["run_dir"]) for row in runs if (Path(row["run_dir"]) / "config.json").is_file()]
    title = f"{comparison.base.name}: {', '.join(m.label for m in comparison.methods)} over seeds {comparison.seeds}"
    completed = [row for row in runs if row["state"] == "completed"]
    degraded = [row for row in runs if row["state"] == "degraded"]
    failed = [row for row in runs if row["state"] not in ("completed", "degraded")]
    for row in degraded:
        if row["reused"]:  # a run made now printed its own warning
            print(f"bmrs: warning: {row['method']} seed {row['seed']}: {row['error']}", file=sys.stderr)
    counts = f"{len(completed)} of {len(runs)} runs completed" + (f", {len(degraded)} degraded" if degraded else "")
    written = True
    try:
        from pipeline.flow import comparison_report_flow  # the report, and Prefect artifacts of it

        print(f"bmrs: {counts}; comparison report {comparison_report_flow(dirs, comparison.out_dir, title)}")
    except (ImportError, ValueError, OSError) as error:  # ValueError: no run finished with its checks passed
        print(f"bmrs: {counts}; the comparison report was not written: {error}", file=sys.stderr)
        written = False
    if failed:
        listed = "; ".join(f"{row['method']} seed {row['seed']} ({row['error']})" for row in failed)
        print(f"bmrs: runs without a report: {listed}; the same `bmrs compare` command retries them", file=sys.stderr)
    if failed or not written:
        return EXIT_FAILED
    return EXIT_DEGRADED if degraded else 0


def main(argv: Sequence[str] | None = None, execute: Execute | None = None) -> int:
    """``python -m pipeline.compare ARGS``: ``bmrs compare ARGS`` with the CLI's own run path."""
    parser = argparse.ArgumentParser(prog="bmrs")
    add_compare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", *(sys.argv[1:] if argv is None else argv)])
    if execute is None:
        from pipeline.cli import _execute as execute
    return compare(args, execute)
