"""``bmrs`` command line.

    bmrs run [flows.yaml] --flow NAME [--set key=value ...]   a new run in runs/<flow>/<run-id>/
    bmrs run ... --seeds 0 1 2                                 one run per train.seed in runs/<flow>/<group-id>/seed<k>/,
                                                               summarised as mean +- std in summary.json / summary.md
    bmrs resume RUN_DIR                                        finish an interrupted run (or seed group) in place
    bmrs compare [flows.yaml] --flow NAME --methods M ... [--seeds ...]   every method on the same split and dense
                                                               reference, in runs/<flow>/compare/ (finished runs reused)
    bmrs compare ... [--models NAME ...] [--workers N | --dask-address tcp://host:8786]   (alias: bmrs sweep) per
                                                               model, the runs concurrently on Dask (pipeline.sweep_flow)
    bmrs report RUN_DIR [RUN_DIR ...] [--out DIR]              rebuild report.md (and, over several runs, the
                                                               comparison: report.md, report.json, plots) from finished runs
    bmrs serve [flows.yaml] [--flow NAME ...] [--port P]      run the flows' schedules (flows.yaml `schedule:`), each
                                                               scheduled run as `bmrs run` (pipeline.serve)

Exit codes: 0 completed; 2 bad input, or a run that failed cleanly (one `bmrs: error:` line, status.json
failed; an exported ONNX model that does not match the model it stands for is such a failure);
3 degraded: the run finished and wrote its ONNX models and report.json, but a model failed a sanity
bound (near chance, or too far below the dense reference: report.json's `checks`, the settings in
the flow's `checks` section), with one `bmrs: warning:` line naming the cause and the fix;
1 a multi-seed run in which some seed has no report (when seeds are degraded but none failed: 3).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import FlowConfig

EXIT_BAD_INPUT = 2
EXIT_SEED_FAILED = 1  # a multi-seed run in which some seed has no report (summary.md says why)
EXIT_DEGRADED = 3  # finished with a report, but a model failed a sanity bound (report.json's checks)


def _prefect_environment() -> None:
    """Offline, private Prefect: the ephemeral local server, no analytics, its own home folder."""
    os.environ.setdefault("PREFECT_HOME", str(Path.home() / ".cache" / "bmrs" / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    # Prefect gives its ephemeral API server 20 s to start; on a 2-core machine busy with training
    # that is not always enough, and the run would fail before its first epoch.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # A failed task is reported once, by this CLI and in status.json; Prefect's own ERROR logs would
    # repeat it as two tracebacks. PREFECT_LOGGING_LEVEL set by the user still wins.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bmrs", description="Compress a model with BMRS and export it to ONNX.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a named flow from flows.yaml")
    run.add_argument("flows", nargs="?", default="flows.yaml", help="path of flows.yaml (default: ./flows.yaml)")
    run.add_argument("--flow", default="default", help="name of the flow in flows.yaml (default: default)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override any setting, e.g. --set train.epochs=3 --set data.root=/data/fmnist")
    run.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                     help="run once per train.seed (data split fixed) and report mean +- std, e.g. --seeds 0 1 2")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    resume = commands.add_parser("resume", help="finish an interrupted run in its run directory")
    resume.add_argument("run_dir", metavar="RUN_DIR",
                        help="the directory `bmrs run` printed: runs/<flow>/<run-id>, a seed group or one of its seed<k>")
    resume.add_argument("--no-progress", action="store_true", help="no progress bars")
    from pipeline.reporting.command import add_report_parser

    add_report_parser(commands)
    from pipeline.compare import add_compare_parser

    add_compare_parser(commands)
    serve = commands.add_parser("serve", help="run the flows' schedules (flows.yaml `schedule:`) until stopped")
    serve.add_argument("flows", nargs="?", default="flows.yaml", help="path of flows.yaml (default: ./flows.yaml)")
    serve.add_argument("--flow", dest="flow_names", nargs="+", action="extend", metavar="NAME",
                       help="flows to serve, each with a schedule (default: every flow in the file that has one)")
    serve.add_argument("--port", type=int, help="port of the Prefect server started when PREFECT_API_URL is unset (default: a free one)")
    serve.add_argument("--limit", type=int, default=1, help="scheduled runs at a time (default 1; a run due meanwhile waits)")
    return parser


def _fail(message: str) -> int:
    print(f"bmrs: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("compare", "sweep"):
        from pipeline.compare import compare

        _prefect_environment()  # also for the comparison's report flow when every run is reused
        return compare(args, _execute)
    if args.command == "report":
        from pipeline.reporting.command import report_from_args

        return report_from_args(args)
    if args.command == "resume":
        return _resume(args.run_dir, no_progress=args.no_progress)
    if args.command == "serve":
        _prefect_environment()  # before pipeline.serve imports Prefect, which reads it once
        from pipeline.serve import serve_from_args

        return serve_from_args(args)
    overrides = args.overrides + (["train.progress=false"] if args.no_progress else [])
    return run_flow(args.flows, args.flow, overrides, args.seeds)


def run_flow(flows: str, flow: str, overrides: list[str], seed_list: list[int] | None = None) -> int:
    """`bmrs run`: a new run (or seed group) of ``flow`` in ``flows``, with ``--set`` ``overrides``;
    each scheduled run of `bmrs serve` is this call too. Returns the exit code."""
    from pipeline.config import ConfigError, load_flow

    _prefect_environment()  # before a flow's schedule is checked: that imports Prefect, which reads it once
    try:
        config = load_flow(flows, flow, overrides)
    except ConfigError as error:
        return _fail(str(error))
    problem = check_runnable(config, seed_list)
    if problem is not None:
        return _fail(problem)
    from pipeline import seeds
    from pipeline.stages import steps

    if seed_list is not None:
        group_dir = seeds.new_group_dir(config, seed_list)
        print(f"bmrs: flow {config.name!r} over seeds {seed_list} -> {group_dir}")
        return _run_group(config, seed_list, group_dir)
    run_dir = steps.new_run_dir(config)
    print(f"bmrs: flow {config.name!r} ({config.model.name} on {config.data.dataset}, method {config.method}) -> {run_dir}")
    return _execute(config, run_dir, resume=False)


def check_runnable(config: FlowConfig, seed_list: list[int] | None = None) -> str | None:
    """The problem that stops ``config`` from running, in one line, or None: a missing dataset or a
    layer path naming nothing fails before a run directory exists."""
    from bmrs.data import DatasetNotFoundError
    from pipeline import seeds
    from pipeline.stages import steps

    try:
        if seed_list is not None:
            seeds.check_seeds(seed_list)
        steps.check_model(config, steps.load_data(config))
    except (DatasetNotFoundError, ValueError, TypeError) as error:  # TypeError: a user model's factory
        return str(error)
    return None


def _resume(run_dir_arg: str, *, no_progress: bool) -> int:
    from dataclasses import replace

    from bmrs.train.checkpoint import CheckpointError
    from bmrs.data import DatasetNotFoundError
    from pipeline import seeds
    from pipeline.stages import steps
    from pipeline.stages.resume import RunDirError, check_checkpoints, check_resumable, read_run_config

    run_dir = Path(run_dir_arg)
    if seeds.is_group_dir(run_dir):
        return _resume_group(run_dir, no_progress=no_progress)
    # Everything is checked before status.json is touched: a refused resume changes nothing.
    try:
        if run_dir.is_dir() and (run_dir / "report.json").is_file():
            warning = steps.degraded_warning(run_dir)
            if warning is not None:
                print(f"bmrs: {run_dir} already finished, degraded; its report is {run_dir / 'report.json'} (nothing to resume)")
                return _warn_degraded(warning)
            print(f"bmrs: {run_dir} already completed; its report is {run_dir / 'report.json'} (nothing to resume)")
            return 0
        config = read_run_config(run_dir)
        check_checkpoints(run_dir)
        check_resumable(config, run_dir, steps.load_data(config))  # settings the checkpoints were written under
    except (RunDirError, CheckpointError, DatasetNotFoundError, ValueError) as error:
        return _fail(str(error))
    if no_progress:
        config = replace(config, train=replace(config.train, progress=False))
    print(f"bmrs: resuming flow {config.name!r} ({config.model.name} on {config.data.dataset}, method {config.method}) in {run_dir}")
    try:
        return _execute(config, run_dir, resume=True)
    finally:
        if seeds.is_group_dir(run_dir.parent):  # one seed of a group: its summary now counts this run
            try:
                seeds.write_summary(run_dir.parent)
            except ValueError as error:  # a damaged group.json must not hide how the run itself ended
                print(f"bmrs: the group summary was not updated: {error}", file=sys.stderr)


def _resume_group(group_dir: Path, *, no_progress: bool) -> int:
    """Finish every seed of a group that has no report: resume the begun ones, start the others."""
    from dataclasses import replace

    from bmrs.train.checkpoint import CheckpointError
    from bmrs.data import DatasetNotFoundError
    from pipeline import seeds
    from pipeline.stages import steps
    from pipeline.config import ConfigError
    from pipeline.config import flow_config_from_dict
    from pipeline.stages.resume import check_checkpoints, check_resumable

    try:
        tree, seed_list = seeds.read_group(group_dir)
        config = flow_config_from_dict(tree)
        for seed in seed_list:
            check_checkpoints(seeds.seed_dir(group_dir, seed))
        data = steps.load_data(config)
        for seed in seed_list:
            if not (seeds.seed_dir(group_dir, seed) / "report.json").is_file():
                check_resumable(seeds.seed_config(config, seed), seeds.seed_dir(group_dir, seed), data)
    except (ConfigError, CheckpointError, DatasetNotFoundError, ValueError) as error:
        return _fail(str(error))
    if no_progress:
        config = replace(config, train=replace(config.train, progress=False))
    print(f"bmrs: resuming flow {config.name!r} over seeds {seed_list} in {group_dir}")
    return _run_group(config, seed_list, group_dir)


def _run_group(config: FlowConfig, seed_list: list[int], group_dir: Path) -> int:
    from pipeline import seeds
    from pipeline.stages.resume import RunDirError, exclusive_run

    ran_here: set[str] = set()  # seeds whose own run already printed its warning

    def run_seed(seed_config: FlowConfig, run_dir: Path, resume: bool) -> int:
        ran_here.add(str(run_dir))
        return _execute(seed_config, run_dir, resume=resume)

    try:
        with exclusive_run(group_dir):
            summary = seeds.run_group(config, seed_list, group_dir, run_seed)
    except RunDirError as error:
        return _fail(str(error))
    print(f"bmrs: {len(summary['completed'])} of {len(seed_list)} seeds completed; summary {group_dir / 'summary.md'}")
    if summary["failed"]:
        failed = ", ".join(str(row["seed"]) for row in summary["failed"])
        print(f"bmrs: seeds without a report: {failed}; `bmrs resume {group_dir}` retries them", file=sys.stderr)
        return EXIT_SEED_FAILED
    if summary["degraded"]:
        for row in summary["degraded"]:
            if str(row["run_dir"]) not in ran_here:
                print(f"bmrs: warning: seed {row['seed']}: {row['warning']}", file=sys.stderr)
        return EXIT_DEGRADED
    return 0


def _key_line(report_path: Path) -> str:
    import json

    from pipeline.reporting import key_line

    return key_line(json.loads(report_path.read_text()))


def _warn_degraded(warning: str) -> int:
    print(f"bmrs: warning: {warning}", file=sys.stderr)
    return EXIT_DEGRADED


def _execute(config: FlowConfig, run_dir: Path, *, resume: bool) -> int:
    """Run the flow into ``run_dir``; status.json ends as completed, or failed with the reason.
    Refused, with nothing written, while another process works in ``run_dir``."""
    from pipeline.lifetime import Terminated, sigterm_raises
    from pipeline.stages.resume import RunDirError, exclusive_run

    _prefect_environment()
    try:
        with exclusive_run(run_dir), sigterm_raises():
            return _execute_locked(config, run_dir, resume=resume)
    except RunDirError as error:  # raised before the run directory is touched
        return _fail(str(error))
    except Terminated as error:  # status.json says failed; the Prefect server is stopped at exit
        print(f"bmrs: error: {error}; `bmrs resume {run_dir}` continues from the last finished epoch", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None  # also ends a seed group: the job is over


def _execute_locked(config: FlowConfig, run_dir: Path, *, resume: bool) -> int:
    from bmrs.train.checkpoint import CheckpointError
    from bmrs.data import DatasetNotFoundError
    from bmrs.train import TrainingDivergedError
    from pipeline.stages import steps
    from pipeline.flow import compress_flow
    from pipeline.lifetime import start_bound_server

    if resume:
        steps.set_status(run_dir, "running")
    try:
        start_bound_server()  # before Prefect starts one that would outlive a killed bmrs
        report = compress_flow(config, run_dir, resume=resume)
    except (CheckpointError, DatasetNotFoundError, TrainingDivergedError, ValueError) as error:
        steps.set_status(run_dir, "failed", str(error))
        print(f"bmrs: finished stages are kept in {run_dir}; no report was written", file=sys.stderr)
        return _fail(str(error))
    except BaseException as error:
        steps.set_status(run_dir, "failed", f"{type(error).__name__}: {error}")
        print(f"bmrs: run failed; finished stages are kept in {run_dir}; no report was written; "
              f"`bmrs resume {run_dir}` continues from the last finished epoch", file=sys.stderr)  # fmt: skip
        raise
    print(f"bmrs: wrote {report} and {report.with_name('report.md')}")
    print(f"bmrs: ONNX model {run_dir / 'model.onnx'}")
    print(f"bmrs: {_key_line(report)}")
    warning = steps.degraded_warning(run_dir)
    return 0 if warning is None else _warn_degraded(warning)


if __name__ == "__main__":
    sys.exit(main())
