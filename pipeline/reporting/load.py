"""Run directories as the reports read them, and the command line's paths expanded to run directories.

A run directory (``runs/<flow>/<run-id>/`` or a seed group's ``seed<k>/``) holds ``config.json`` and
``status.json`` from its start and ``report.json`` once it finished. A comparison's output folder
also holds a ``report.json`` but never a ``config.json``, so it is never mistaken for a run.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUP_FILE = "group.json"  # pipeline.seeds' marker of a seed group (not imported: that pulls in the whole flow)
REPORT_FILE = "report.json"
COMPARISON_KIND = "bmrs-comparison"  # report.json's "kind" in a comparison's output folder


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _read_optional(path: Path) -> dict[str, Any]:
    """A side file (status.json, config.json) that a report can do without: {} when unreadable."""
    try:
        value = _read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Run:
    """One run directory: its report (None while it has none), status and resolved config."""

    run_dir: Path
    report: dict[str, Any] | None
    status: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.report is not None

    @property
    def warning(self) -> str | None:
        """Why a finished run is degraded (its report's checks failed), as ``steps.degraded_warning``
        reads it; None when the checks passed or predate the report."""
        checks = (self.report or {}).get("checks")
        if not isinstance(checks, dict) or checks.get("passed", True):
            return None
        return str(checks.get("warning") or "a sanity bound failed (report.json's checks)")

    @property
    def state(self) -> str:
        if self.finished:
            return "degraded" if self.warning is not None else "completed"
        return str(self.status.get("state") or "not started")

    @property
    def error(self) -> str | None:
        """The warning of a degraded run, or the error status.json gives for an unfinished one."""
        if self.finished:
            return self.warning
        error = self.status.get("error")
        return None if error is None else str(error)

    @property
    def included(self) -> bool:
        """Counted in a comparison's means: finished with its checks passed."""
        return self.finished and self.warning is None

    @property
    def seed(self) -> int | None:
        seed = (self.config.get("train") or {}).get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def load_run(run_dir: Path) -> Run:
    """Read ``run_dir``; ValueError naming the file and the fix when its report.json is unreadable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{str(run_dir)!r} is not a run directory; give a directory that `bmrs run` printed")
    path = run_dir / REPORT_FILE
    report = None
    if path.exists():
        try:
            report = _read_json(path)
            if not isinstance(report, dict):
                raise ValueError(f"it holds a {type(report).__name__}, not a report")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
            raise ValueError(
                f"{str(path)!r} is not a readable run report ({error}); remove it and run `bmrs resume {run_dir}` "
                "to rebuild it from the run's checkpoints"
            ) from error
    return Run(run_dir, report, _read_optional(run_dir / "status.json"), _read_optional(run_dir / "config.json"))


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "config.json").is_file() and (
        (Path(path) / REPORT_FILE).exists() or (Path(path) / "status.json").is_file()
    )


def is_comparison_dir(path: Path) -> bool:
    """A folder a comparison was written to (its report.json says so): never a run."""
    try:
        return _read_json(Path(path) / REPORT_FILE).get("kind") == COMPARISON_KIND
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def is_group_dir(path: Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def group_seed_dirs(group_dir: Path) -> list[Path]:
    """The seed directories group.json names, in its order; every ``seed*`` folder when it is unreadable."""
    seeds = _read_optional(Path(group_dir) / GROUP_FILE).get("seeds")
    if isinstance(seeds, list) and seeds:
        return [Path(group_dir) / f"seed{seed}" for seed in seeds]
    return sorted(path for path in Path(group_dir).glob("seed*") if path.is_dir())


def runs_below(folder: Path) -> list[Path]:
    """Every run directory at or below ``folder``, sorted; a run's own subfolders are not searched."""
    found = []
    for root, dirs, _files in os.walk(folder):
        if is_run_dir(Path(root)):
            found.append(Path(root))
            dirs.clear()
        else:
            dirs.sort()
    return sorted(found)


@dataclass(frozen=True)
class Expanded:
    """The run directories the given paths stand for; ``default_out``: where a comparison goes
    when ``--out`` is not given (the one group or parent folder given, else None)."""

    run_dirs: list[Path]
    default_out: Path | None


def expand_paths(paths: list[Path]) -> Expanded:
    """Each path a run directory, a seed group (its seed directories) or any folder (the runs below
    it). ValueError, naming the path and the fix, for one that does not exist or holds no finished run."""
    if not paths:
        raise ValueError("give at least one run directory, e.g. `bmrs report runs/default/<run-id>`")
    run_dirs: list[Path] = []
    folders: list[Path] = []
    for path in map(Path, paths):
        if path.is_file() and path.name == REPORT_FILE:
            path = path.parent
        if not path.exists():
            raise ValueError(f"{str(path)!r} does not exist; give a run directory (runs/<flow>/<run-id>), "
                             "a seed group or a folder holding runs")
        if not path.is_dir():
            raise ValueError(f"{str(path)!r} is a file, not a directory; give the run directory that holds report.json")
        if is_group_dir(path):
            found = [seed_dir for seed_dir in group_seed_dirs(path) if is_run_dir(seed_dir)]
            folders.append(path)
        elif is_run_dir(path) or ((path / REPORT_FILE).exists() and not is_comparison_dir(path)):
            found = [path]  # given by name: a report.json without config.json beside it is still read
        else:
            found = runs_below(path)
            folders.append(path)
        if not any((run_dir / REPORT_FILE).exists() for run_dir in found):
            raise ValueError(f"{str(path)!r} holds no finished run (no run directory with a report.json in it); "
                             "give a run directory that `bmrs run` finished, or finish one with `bmrs resume`")
        run_dirs += found
    unique = list({run_dir.resolve(): run_dir for run_dir in run_dirs}.values())
    default_out = folders[0] if len(paths) == 1 and len(folders) == 1 else None
    return Expanded(unique, default_out)
