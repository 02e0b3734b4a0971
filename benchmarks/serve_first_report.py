"""Time from ``bmrs serve`` to the first scheduled run's report on disk.

    python -m benchmarks.serve_first_report [--runs 3] [--out benchmarks/results/serve] [--full]

Each run is a fresh workspace (its own ``flows.yaml``, runs directory and ``PREFECT_HOME``, so the
Prefect server starts on an empty database, as on a new machine) holding one flow, ``nightly``:
``flows.yaml``'s ``default`` flow with ``schedule: {interval: 10}`` and, unless ``--full``, a tiny
budget (2,000 training images, 1 epoch, no fine-tuning, energy off) so that the figure is the
orchestration's cost rather than training's. ``bmrs serve flows.yaml`` is started as a user starts
it, with ``PREFECT_API_URL`` unset: it starts ``prefect server start`` on 127.0.0.1, waits for it,
registers the deployment and serves it. Measured from the start of the process: when it prints
that it serves, when the first scheduled run's directory appears, when that run's ``report.md`` is
on disk. Then SIGTERM; the run counts only if ``bmrs serve`` exits 0 with no process of its own
left. Writes ``serve.json`` and ``serve.md`` (median and every run) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "serve"
TINY = {"data": {"max_train_examples": 2000}, "train": {"epochs": 1, "finetune_epochs": 0}, "energy": {"enabled": False}}
INTERVAL_S = 10
TIMEOUT_S = 1800


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def workspace(folder: Path, *, full: bool) -> Path:
    """``folder/flows.yaml``: the default flow as ``nightly``, every INTERVAL_S seconds."""
    flows = yaml.safe_load((REPO / "flows.yaml").read_text())["flows"]
    nightly = merged(flows["default"], {} if full else TINY)
    nightly["output"] = {"runs_dir": str(folder / "runs")}
    nightly["schedule"] = {"interval": INTERVAL_S}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flows.yaml"
    path.write_text(yaml.safe_dump({"flows": {"nightly": nightly}}, sort_keys=False))
    return path


def environment(folder: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(folder / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def time_once(folder: Path, *, full: bool) -> dict[str, Any]:
    workspace(folder, full=full)
    out, err = open(folder / "serve.out", "w"), open(folder / "serve.err", "w")  # noqa: SIM115
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "flows.yaml", "--flow", "nightly"], cwd=folder,
                               env=environment(folder), stdout=out, stderr=err, start_new_session=True)  # fmt: skip
    seen: dict[int, psutil.Process] = {}
    marks: dict[str, float] = {}
    checks = {
        "serving_s": lambda: "bmrs: serving flow 'nightly'" in (folder / "serve.out").read_text() + (folder / "serve.err").read_text(),
        "first_run_started_s": lambda: any((folder / "runs" / "nightly").glob("*/config.json")),
        "first_report_s": lambda: any((folder / "runs" / "nightly").glob("*/report.md")),
    }
    try:
        while len(marks) < len(checks):
            for child in psutil.Process(process.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
            for name, check in checks.items():
                if name not in marks and check():
                    marks[name] = time.monotonic() - started
            if process.poll() is not None:
                raise RuntimeError(f"bmrs serve ended (exit {process.returncode}) before {set(checks) - set(marks)}; see {folder}")
            if time.monotonic() - started > TIMEOUT_S:
                raise RuntimeError(f"no {set(checks) - set(marks)} within {TIMEOUT_S} s; see {folder}")
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
        out.close()
        err.close()
    time.sleep(2)
    left = sorted(pid for pid, child in seen.items() if child.is_running() and child.status() != psutil.STATUS_ZOMBIE)
    return {**marks, "exit_code": code, "left_running": left}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_first_report", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--full", action="store_true", help="the default flow's own budget instead of the tiny one")
    args = parser.parse_args(argv)
    if args.runs < 1:
        print(f"serve_first_report: error: --runs must be >= 1, got {args.runs}", file=sys.stderr)
        return 2
    rows = []
    for index in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="serve_bench_") as scratch:
            row = time_once(Path(scratch), full=args.full)
        rows.append(row)
        print(f"run {index}/{args.runs}: serving after {row['serving_s']:.1f} s, first run after {row['first_run_started_s']:.1f} s, "
              f"its report after {row['first_report_s']:.1f} s; exit {row['exit_code']}, left running {row['left_running']}", flush=True)  # fmt: skip
    clean = [row for row in rows if row["exit_code"] == 0 and not row["left_running"]]
    median = {key: statistics.median(row[key] for row in rows) for key in ("serving_s", "first_run_started_s", "first_report_s")}
    command = " ".join(["python -m benchmarks.serve_first_report", *(argv if argv is not None else sys.argv[1:])])
    result = {"command": command, "budget": "default flow" if args.full else {"default flow with": TINY}, "interval_s": INTERVAL_S,
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "runs": rows, "median": median,
              "clean_exits": len(clean)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# From `bmrs serve` to the first scheduled run's report", "", f"`{command}`: a fresh workspace and Prefect "
             f"database per run, the `default` flow scheduled every {INTERVAL_S} s"
             + ("" if args.full else " on a tiny budget (2,000 images, 1 epoch, no fine-tuning, energy off)")
             + f"; {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.1f}.", "",
             "| run | serving (s) | first run started (s) | its report.md on disk (s) | exit after SIGTERM | processes left |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for index, row in enumerate(rows, 1):
        lines.append(f"| {index} | {row['serving_s']:.1f} | {row['first_run_started_s']:.1f} | {row['first_report_s']:.1f} | "
                     f"{row['exit_code']} | {len(row['left_running'])} |")  # fmt: skip
    lines += ["", f"Median: serving after {median['serving_s']:.1f} s, first report after {median['first_report_s']:.1f} s; "
              f"{len(clean)} of {len(rows)} ended cleanly (exit 0, nothing left running).", ""]  # fmt: skip
    (args.out / "serve.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if len(clean) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
