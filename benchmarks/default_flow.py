"""The README's main job, timed: ``bmrs run flows.yaml --flow default`` run N times in a row in a warm
environment (the venv and the dataset installed, Prefect's home already created), each as the
user runs it, a fresh process; wall time measured around the process.

    python -m benchmarks.default_flow --runs 3 --out benchmarks/results/default_flow

Writes ``default_flow.json`` (each run's wall time, exit code and report figures) and
``default_flow.md`` (the median and the per-run table), and checks the issue's targets: at least 50%
of the parameters removed within 2 accuracy points of the dense model trained in the same run, in
at most 6 minutes. Every run writes its own run directory under ``--runs-dir``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET_COMPRESSION = 0.5
TARGET_POINTS = 2.0
TARGET_SECONDS = 360.0


def run_once(runs_dir: Path, extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "flows.yaml"), "--flow", "default",
               "--no-progress", "--set", f"output.runs_dir={runs_dir}", *extra]  # fmt: skip
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    reports = sorted(runs_dir.glob("default/*/report.json"), key=lambda path: path.stat().st_mtime)
    row: dict[str, Any] = {"exit_code": finished.returncode, "wall_seconds": seconds, "stdout_tail": finished.stdout[-2000:],
                           "stderr_tail": finished.stderr[-2000:]}  # fmt: skip
    if finished.returncode == 0 and reports:
        row.update(figures(json.loads(reports[-1].read_text())), run_dir=str(reports[-1].parent))
    return row


def figures(report: dict[str, Any]) -> dict[str, Any]:
    pruned, dense = report["pruned"], report["dense"]
    latency = report.get("latency", {}).get("CPUExecutionProvider", {})
    energy = ((report.get("energy") or {}).get("inference") or {}).get("by_batch") or {}
    largest = max(energy, key=int) if energy else None
    return {
        "compression": pruned["compression"],
        "accuracy": pruned["accuracy"],
        "dense_accuracy": dense["accuracy"],
        "points_below_dense": 100.0 * (dense["accuracy"] - pruned["accuracy"]),
        "params": pruned["params"],
        "dense_params": dense["params"],
        "macs_ratio": pruned["flops"] / dense["flops"],
        "speedup_p50": {batch: row.get("speedup_p50") for batch, row in latency.items()},
        "energy_ratio": None if largest is None else energy[largest].get("ratio_pruned_dense"),
        "energy_batch": largest,
        "energy_mode": (report.get("energy") or {}).get("note"),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    finished = [row for row in rows if row["exit_code"] == 0 and "compression" in row]
    median = (lambda key: statistics.median(row[key] for row in finished)) if finished else (lambda key: None)
    summary = {
        "runs": len(rows),
        "finished": len(finished),
        "median_wall_seconds": median("wall_seconds"),
        "median_compression": median("compression"),
        "median_points_below_dense": median("points_below_dense"),
        "targets": {"compression_at_least": TARGET_COMPRESSION, "points_below_dense_at_most": TARGET_POINTS,
                    "wall_seconds_at_most": TARGET_SECONDS},  # fmt: skip
    }
    summary["met"] = bool(finished) and len(finished) == len(rows) and all(
        row["compression"] >= TARGET_COMPRESSION and row["points_below_dense"] <= TARGET_POINTS for row in finished
    ) and summary["median_wall_seconds"] <= TARGET_SECONDS
    return summary


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any], command: str) -> str:
    lines = [
        "# The default flow, timed",
        "",
        f"`{command}` (each run: `bmrs run flows.yaml --flow default`, a fresh process, warm environment).",
        "",
        f"Median of {summary['finished']} finished runs of {summary['runs']}: wall time "
        f"{_num(summary['median_wall_seconds'], '.0f')} s, compression {_pct(summary['median_compression'])}, "
        f"{_num(summary['median_points_below_dense'], '.2f')} points below dense. Targets (>= 50% removed, within 2 points, "
        f"<= 360 s): {'met' if summary['met'] else 'NOT met'}.",
        "",
        "| run | exit | wall (s) | removed | accuracy | dense | points below | MACs kept | p50 speed-up (batch: x) | energy ratio pruned/dense |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(rows, 1):
        if "compression" not in row:
            lines.append(f"| {index} | {row['exit_code']} | {row['wall_seconds']:.0f} | | | | | | | |")
            continue
        speedups = ", ".join(f"{batch}: {_num(value, '.2f')}x" for batch, value in row["speedup_p50"].items())
        lines.append(
            f"| {index} | {row['exit_code']} | {row['wall_seconds']:.0f} | {_pct(row['compression'])} | {_pct(row['accuracy'])} "
            f"| {_pct(row['dense_accuracy'])} | {row['points_below_dense']:.2f} | {_pct(row['macs_ratio'])} | {speedups} "
            f"| {_num(row['energy_ratio'], '.3f')} (batch {row['energy_batch']}) |"
        )
    modes = sorted({row.get("energy_mode") for row in rows if row.get("energy_mode")})
    if modes:
        lines += ["", "Energy: " + " / ".join(modes)]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.default_flow", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "default_flow")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "benchmark-default", help="where the runs go")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    extra = [item for pair in args.overrides for item in ("--set", pair)]
    rows = []
    for index in range(args.runs):
        row = run_once(args.runs_dir.resolve(), extra)
        rows.append(row)
        print(f"run {index + 1}/{args.runs}: exit {row['exit_code']}, {row['wall_seconds']:.0f} s, "
              f"removed {_pct(row.get('compression'))}, {_num(row.get('points_below_dense'), '.2f')} points below dense")  # fmt: skip
    summary = summarise(rows)
    command = "python -m benchmarks.default_flow " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "default_flow.json").write_text(json.dumps({"summary": summary, "runs": rows, "command": command}, indent=2) + "\n")
    (args.out / "default_flow.md").write_text(markdown(rows, summary, command))
    print(markdown(rows, summary, command))
    return 0 if summary["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
