"""``bmrs report RUN_DIR [RUN_DIR ...] [--out DIR]``: rebuild each run's report.md and, given more
than one run, compare them. Only argparse at import time, so that ``bmrs --help`` stays quick; the
reporting modules (torch for ``mean_std``, matplotlib) load when the command runs."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2  # as pipeline.cli: bad input is one `bmrs: error:` line and exit 2
DEFAULT_OUT = Path("report")


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report`` on ``subparsers``; its parsed arguments go to ``report_from_args``."""
    parser = subparsers.add_parser(
        "report", help="write report.md for finished runs and compare several (mean ± std over seeds, plots)"
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", type=Path,
                        help="a run directory, a seed group (its seeds), or any folder (the runs below it)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where a comparison of several runs goes (default: the one group or folder given, else ./report)")
    parser.add_argument("--remeasure-latency", action="store_true",
                        help="time each finished run's ONNX files and modules again first (on this machine, now), "
                             "keeping the previous figures in bench/ and report.json")
    return parser


def report_from_args(args: argparse.Namespace) -> int:
    """``report_command`` on the parsed arguments; a ValueError becomes one ``bmrs: error:`` line, exit 2."""
    try:
        return report_command(args.run_dirs, args.out, remeasure_latency=args.remeasure_latency)
    except ValueError as error:
        print(f"bmrs: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def report_command(paths: Sequence[Path], out: Path | None, *, remeasure_latency: bool = False) -> int:
    """Expand ``paths`` to run directories, rewrite each finished run's report.md and, when more than
    one run was found, write the comparison to ``out`` (default: the single group or folder given,
    else ./report). Prints what it wrote; ValueError naming the path and the fix on bad input.
    ``remeasure_latency``: first time every finished run's files again (``pipeline.remeasure``)."""
    from pipeline.reporting.comparison import write_comparison
    from pipeline.reporting.load import expand_paths, is_run_dir, load_run
    from pipeline.reporting.run_report import key_line, write_run_report

    expanded = expand_paths([Path(path) for path in paths])
    runs = [load_run(run_dir) for run_dir in expanded.run_dirs]  # every report is read before anything is written
    if out is not None and is_run_dir(Path(out)):
        raise ValueError(f"--out {str(out)!r} is a run directory, whose report.md is the run's own; "
                         "write the comparison to another folder, e.g. --out report")
    if remeasure_latency:
        from pipeline.remeasure import check_remeasurable, remeasure_latency as remeasure

        finished = [run for run in runs if run.finished]
        for run in finished:  # every run checked before any is timed
            check_remeasurable(run.run_dir)
        for index, run in enumerate(finished, 1):
            print(f"bmrs: timing {run.run_dir} again ({index}/{len(finished)})", flush=True)
            remeasure(run.run_dir)
        runs = [load_run(run_dir) for run_dir in expanded.run_dirs]
    for run in runs:
        if run.finished:
            print(f"bmrs: wrote {write_run_report(run.run_dir)}")
            print(f"bmrs:   {key_line(run.report)}")
        else:
            print(f"bmrs: {run.run_dir} has no report ({run.state}); `bmrs resume {run.run_dir}` finishes it")
    if len(runs) < 2:
        if out is not None:
            print("bmrs: one run given, so no comparison was written (--out is where a comparison of several runs goes)")
        return 0
    if not any(run.included for run in runs):
        print(f"bmrs: no comparison: none of the {len(runs)} runs finished with its checks passed", file=sys.stderr)
        return 0
    out_dir = Path(out) if out is not None else (expanded.default_out or DEFAULT_OUT)
    report = write_comparison(expanded.run_dirs, out_dir)
    written = sorted(path.name for path in out_dir.glob("*.png"))
    print(f"bmrs: compared {len(runs)} runs -> {report} (with report.json{', ' if written else ''}{', '.join(written)})")
    return 0
