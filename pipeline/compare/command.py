"""``bmrs compare``: every method on the same data split and the same dense reference, one directory.

    bmrs compare [flows.yaml] --flow NAME --methods none l2 etheta snr grad bmrs_n bmrs_u:8 bmrs_u:4
        [--seeds 0 1 2] [--models NAME ...] [--workers N | --dask-address tcp://host:8786]
        [--widths-of bmrs_u:4] [--set key=value ...] [--out DIR] [--no-progress]

Each (method, seed) is an ordinary run of the flow (the ``bmrs run`` path, through the ``execute``
callback the CLI passes) in ``<out>/<label>/seed<k>/``; only ``train.criterion`` and ``train.seed``
differ between them. Per seed the dense baseline is trained once and shared (``plan``), the dense
method first, ``bmrs_n`` (or ``--widths-of``'s method) before the methods that prune at its per-layer
fractions (``l2``, ``grad``).
Rerunning the same command reuses finished runs, resumes begun ones and adds the missing ones; a
run directory made under other settings is refused, one made by other code or on other data
(``pipeline.cache``'s key) is moved aside and run again. A failed or degraded run does not stop the
others. ``--models`` repeats the comparison per ``model.name``, each in ``<out>/<model>/``.
``--workers`` / ``--dask-address`` run the runs concurrently on Dask (``pipeline.sweep``); without
them they run one after another in this process (``runs``). Exit codes as for seed groups: 0 all
completed, 3 some degraded, 1 some without a report, 2 bad input (one ``bmrs: error:`` line, before
anything is written).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bmrs.data import DataBundle
    from pipeline.compare.methods import Method
    from pipeline.config import FlowConfig

EXIT_BAD_INPUT = 2
RATIO_SOURCE = "bmrs_n"  # --widths-of's default: l2, grad and snr_ratio prune at BMRS_N's per-layer fractions, as in the paper
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
        "compare", aliases=["sweep"], help="run several methods on the same split and dense reference, compared in one report",
        description="Run several methods of one flow on the same data split and the same dense baseline, one run "
        "directory per method and seed, and compare them in one report. Rerunning the same command reuses finished "
        "runs and adds missing ones.",
    )  # fmt: skip
    parser.add_argument("flows", nargs="?", default="flows.yaml", help="path of flows.yaml (default: ./flows.yaml)")
    parser.add_argument("--flow", default="default", help="name of the flow in flows.yaml (default: default)")
    parser.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                        help="none, a criterion (bmrs_n), name:VALUE for bmrs_u's p1 (bmrs_u:8), or name:key=value[,key=value]")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="train.seed values (default: the flow's)")
    parser.add_argument("--widths-of", metavar="METHOD",
                        help=f"the method whose per-layer fractions l2, grad and snr_ratio prune at, per seed (default: {RATIO_SOURCE}, "
                        "as in the paper; e.g. bmrs_u:4 where exact BMRS_N removes nothing)")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting of the flow, for every run, e.g. --set train.epochs=3")
    parser.add_argument("--out", type=Path, metavar="DIR", help="the comparison directory (default: <runs_dir>/<flow>/compare)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="model.name values: the comparison once per model, each in <out>/<model>/ (default: the flow's model)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="run the runs concurrently on a local Dask cluster of N worker processes (at most one per core)")
    where.add_argument("--dask-address", metavar="ADDRESS",
                       help="run the runs on an existing Dask cluster, e.g. tcp://host:8786 (the runs directory must be "
                       "the same path on every worker's machine)")
    return parser


@dataclass(frozen=True)
class Comparison:
    """What one ``bmrs compare`` runs: checked, nothing written yet."""

    base: FlowConfig  # the flow with the user's overrides; each method replaces its train.criterion
    methods: list[Method]  # in run order
    seeds: list[int]
    out_dir: Path
    data: DataBundle
    data_digest: str = ""  # pipeline.cache.data_digest(data): part of every run's reuse key
    model_label: str | None = None  # with --models: this comparison's model (its folder under --out)
    ratio_source: str = RATIO_SOURCE  # --widths-of: the method l2, grad and snr_ratio take their per-layer fractions from

    @property
    def prefix(self) -> str:
        """Before a run's name in printed lines: the model, when several are compared."""
        return f"{self.model_label} " if self.model_label else ""

    def shipped(self) -> Comparison:
        """Without the data, to send to a Dask worker, which loads its own (``with_data``)."""
        return replace(self, data=None)

    def with_data(self, data: DataBundle) -> Comparison:
        return replace(self, data=data)

    def header(self) -> dict[str, Any]:
        from pipeline.compare.methods import DENSE_FOLDER

        return {
            "flow": self.base.name,
            "out_dir": str(self.out_dir),
            "methods": [m.to_dict() for m in self.methods],
            "seeds": list(self.seeds),
            "ratio_source": self.ratio_source,
            "dense": f"{DENSE_FOLDER}/seed<k>/baseline/checkpoint.pt: the dense baseline of seed k, trained once, in every run of that seed",
            "config": self.base.to_dict(),
        }


def prepare(args: argparse.Namespace) -> Comparison:
    """The one comparison ``args`` asks for, ignoring ``--models``; see ``prepare_all``."""
    (comparison,) = prepare_all(argparse.Namespace(**{**vars(args), "models": None}))
    return comparison


def prepare_all(args: argparse.Namespace) -> list[Comparison]:
    """Check everything ``args`` asks for before anything is written or trained: the flow and
    overrides, the seeds, the models, every method (on each model too), and every directory
    already there. One comparison per ``--models`` entry (one without it). Raises ``ValueError``
    (``ConfigError``, ``DatasetNotFoundError``) with one line naming the fix."""
    from pipeline.compare import plan
    from pipeline.config import load_flow

    overrides = list(args.overrides) + (["train.progress=false"] if args.no_progress else [])
    models = getattr(args, "models", None)
    if not models:
        base = load_flow(args.flows, args.flow, overrides)
        out_dir = Path(args.out) if args.out is not None else plan.default_out(base)
        return [_prepare_one(args, base, out_dir, None)]
    if any(override.strip().startswith("model.name=") for override in args.overrides):
        raise ValueError("--models and --set model.name=... both choose the model; give the models with --models only")
    repeated = sorted({name for name in models if models.count(name) > 1})
    if repeated:
        raise ValueError(f"--models lists {repeated[0]!r} twice; list each model once")
    labels = {name: _UNSAFE.sub("_", name) for name in models}
    if len(set(labels.values())) < len(labels):
        raise ValueError(f"--models {models}: two models would share a folder ({sorted(labels.values())}); list each model once")
    comparisons = []
    for name in models:
        base = load_flow(args.flows, args.flow, [*overrides, f"model.name={name}"])
        root = Path(args.out) if args.out is not None else plan.default_out(base)
        comparisons.append(_prepare_one(args, base, root / labels[name], labels[name]))
    return comparisons


_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]")  # a model name as a folder: package.module:factory -> package.module_factory


def _prepare_one(args: argparse.Namespace, base: FlowConfig, out_dir: Path, model_label: str | None) -> Comparison:
    from pipeline import cache
    from pipeline.compare import methods as methods_module
    from pipeline.compare import plan
    from pipeline.seeds import check_seeds
    from pipeline.stages import steps

    seeds = check_seeds(args.seeds) if args.seeds is not None else [base.train.seed]
    widths_of = getattr(args, "widths_of", None)
    ratio_source = widths_of or RATIO_SOURCE
    methods, added = methods_module.parse_methods(args.methods, base, ratio_source)
    if widths_of is not None and not any(m.at_ratio_source for m in methods):
        print(f"bmrs: note: --widths-of {widths_of} is unused: no method listed prunes at another's fractions "
              "(l2 or grad given neither ratio nor layer_ratios)")  # fmt: skip
    data = steps.load_data(base)
    for method in methods:  # a layer path naming nothing, or a criterion the model cannot carry, fails now
        steps.check_model(methods_module.with_criterion(base, method.criterion), data)
    plan.check_writable(out_dir)
    comparison = Comparison(base, methods, seeds, out_dir, data, cache.data_digest(data), model_label, ratio_source)
    check_existing(comparison)
    if added is not None:
        later = ", ".join(m.spec for m in methods if m.at_ratio_source)
        print(f"bmrs: {comparison.prefix}running {added.spec} too: {later} prune at its per-layer fractions")
    return comparison


def check_existing(comparison: Comparison) -> None:
    """Refuse (``ValueError``) what a previous comparison in the same directory left that this one
    could not reuse or resume: runs under other settings, checkpoints the flow would not accept.
    A directory made by other code or on other data (a stale ``cache.json``) is not checked: it is
    moved aside, not reused."""
    from pipeline import cache
    from pipeline.compare import plan
    from pipeline.compare.methods import method_config
    from pipeline.compare.runs import key_of
    from pipeline.seeds import seed_config

    base, data = comparison.base, comparison.data
    for seed in comparison.seeds:
        fractions = None
        for method in comparison.methods:
            directory = plan.run_dir(comparison.out_dir, method, seed)
            known = not method.at_ratio_source or fractions is not None
            config = method_config(base, method, seed, (fractions or {}) if method.at_ratio_source else None)
            found = plan.inspect(directory, config, without_layer_ratios=not known)
            if found is plan.Found.NEW or cache.stale_reason(directory, key_of(comparison, config)) is not None:
                continue
            if found is plan.Found.BEGUN and known:
                plan.check_begun(directory, config, data)
            if method.is_ratio_source and found is plan.Found.FINISHED:
                fractions = plan.layer_fractions(config, data, directory)
        dense_dir, dense_config = plan.dense_dir(comparison.out_dir, seed), seed_config(base, seed)
        if not dense_dir.exists() or cache.stale_reason(dense_dir, key_of(comparison, dense_config, dense=True)) is None:
            plan.check_dense(dense_dir, dense_config, data)


def compare(args: argparse.Namespace, execute: Execute, *, train_dense: TrainDense | None = None) -> int:
    """``bmrs compare``: prepare, run every missing run (one after another, or concurrently on Dask
    with ``--workers`` / ``--dask-address``), write each comparison's report; the exit status."""
    from pipeline.compare.runs import run_comparison
    from pipeline.stages.resume import RunDirError

    try:
        choice = cluster_choice(args)
        comparisons = prepare_all(args)
    except (ValueError, TypeError) as error:  # TypeError: a user model's factory
        return _fail(str(error))
    for comparison in comparisons:
        print(f"bmrs: flow {comparison.base.name!r}{_model_note(comparison)}: {len(comparison.methods)} methods x seeds "
              f"{comparison.seeds} -> {comparison.out_dir}")  # fmt: skip
    try:
        if choice is None:
            summaries = [run_comparison(comparison, execute, train_dense=train_dense) for comparison in comparisons]
        else:
            from pipeline.sweep_flow import run_sweep

            summaries = run_sweep(comparisons, execute, choice)
    except RunDirError as error:  # another process holds a comparison directory
        return _fail(str(error))
    except ValueError as error:  # pipeline.sweep.SweepError: the cluster cannot be used; nothing was run
        return _fail(str(error))
    codes = [finish(comparison, summary) for comparison, summary in zip(comparisons, summaries)]
    return EXIT_FAILED if EXIT_FAILED in codes else EXIT_DEGRADED if EXIT_DEGRADED in codes else 0


def _model_note(comparison: Comparison) -> str:
    return f", model {comparison.base.model.name!r}" if comparison.model_label else ""


def cluster_choice(args: argparse.Namespace) -> Any:
    """``pipeline.sweep.ClusterChoice`` for ``--workers`` / ``--dask-address``; None: serial. Checked
    without importing Dask (``ValueError`` naming the fix)."""
    workers, address = getattr(args, "workers", None), getattr(args, "dask_address", None)
    if workers is None and address is None:
        return None
    from pipeline.sweep import ClusterChoice

    return ClusterChoice.checked(workers=workers, address=address)


def _fail(message: str) -> int:
    print(f"bmrs: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def finish(comparison: Comparison, summary: dict[str, Any]) -> int:
    """Write the comparison report, print how the runs ended; the exit status."""
    runs = summary["runs"]
    dirs = [Path(row["run_dir"]) for row in runs if (Path(row["run_dir"]) / "config.json").is_file()]
    model = f" [{comparison.base.model.name}]" if comparison.model_label else ""
    title = f"{comparison.base.name}{model}: {', '.join(m.label for m in comparison.methods)} over seeds {comparison.seeds}"
    completed = [row for row in runs if row["state"] == "completed"]
    degraded = [row for row in runs if row["state"] == "degraded"]
    failed = [row for row in runs if row["state"] not in ("completed", "degraded")]
    for row in degraded:
        if row["reused"]:  # a run made now printed its own warning
            print(f"bmrs: warning: {comparison.prefix}{row['method']} seed {row['seed']}: {row['error']}", file=sys.stderr)
    counts = f"{len(completed)} of {len(runs)} runs completed" + (f", {len(degraded)} degraded" if degraded else "")
    written = True
    report_key = _report_key(title, dirs)
    if _report_is_current(comparison.out_dir, report_key):
        print(f"bmrs: {counts}; comparison report {comparison.out_dir / 'report.md'} (unchanged: made from these very runs)")
    else:
        try:
            from pipeline.flow import comparison_report_flow  # the report, and Prefect artifacts of it

            print(f"bmrs: {counts}; comparison report {comparison_report_flow(dirs, comparison.out_dir, title)}")
            _record_report(comparison.out_dir, report_key)
        except (ImportError, ValueError, OSError) as error:  # ValueError: no run finished with its checks passed
            print(f"bmrs: {counts}; the comparison report was not written: {error}", file=sys.stderr)
            written = False
    if written:
        _warn_of_differing_baselines(comparison.out_dir / "report.json")
    if failed:
        listed = "; ".join(f"{comparison.prefix}{row['method']} seed {row['seed']} ({row['error']})" for row in failed)
        print(f"bmrs: runs without a report: {listed}; the same `bmrs compare` command retries them", file=sys.stderr)
    if failed or not written:
        return EXIT_FAILED
    return EXIT_DEGRADED if degraded else 0


def _warn_of_differing_baselines(report_json: Path) -> None:
    """Runs reused from before beside runs whose dense baseline was retrained (its checkpoint gone)
    can stand on different dense models; the report notes it, and so does the command."""
    try:
        disagreements = json.loads(report_json.read_text()).get("dense_disagreements") or []
    except (OSError, ValueError, AttributeError):
        return
    if disagreements:
        print(f"bmrs: warning: runs of the same seed were measured against different dense models (a retrained baseline "
              f"did not reproduce the first, e.g. on a CPU of another instruction set): {' | '.join(disagreements)}; to compare on one, delete the folders "
              "of the runs on the other dense model and run the same command again", file=sys.stderr)


def _report_key(title: str, run_dirs: list[Path]) -> str:
    from pipeline import cache

    return cache.report_key(title, run_dirs)


def _report_is_current(out_dir: Path, key: str) -> bool:
    """Whether ``out_dir``'s report was made from exactly these runs' reports by this reporting code:
    then it is not rebuilt (nor Prefect started for it), which keeps a rerun of a finished sweep cheap."""
    from pipeline import cache

    written = (out_dir / "report.md").is_file() and (out_dir / "report.json").is_file()
    return written and (cache.recorded(out_dir) or {}).get("report") == key


def _record_report(out_dir: Path, key: str) -> None:
    from bmrs.artifacts import write_json
    from pipeline import cache

    if (out_dir / "report.md").is_file() and (cache.recorded(out_dir) or {}).get("report") != key:
        write_json(out_dir / cache.CACHE_FILE, {"report": key})


def main(argv: Sequence[str] | None = None, execute: Execute | None = None) -> int:
    """``python -m pipeline.compare ARGS``: ``bmrs compare ARGS`` with the CLI's own run path."""
    parser = argparse.ArgumentParser(prog="bmrs")
    add_compare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", *(sys.argv[1:] if argv is None else argv)])
    from pipeline.cli import _execute, _prefect_environment

    _prefect_environment()  # before Prefect is imported: it reads its settings once
    return compare(args, execute or _execute)
