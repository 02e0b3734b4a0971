"""Reports read from run directories, without Prefect: a run's ``report.md`` (``write_run_report``)
and the line ``bmrs run`` ends with (``key_line``), a comparison of several runs as mean ± std over
seeds with plots (``write_comparison``), and ``bmrs report`` (``report_command``, ``add_report_parser``).

Modules: ``load`` (run directories and paths), ``figures`` (numbers out of report.json), ``text``
(n/a-safe formatting), ``run_report``, ``comparison`` and ``comparison_md``, ``plots``, ``command``.
Names load on first use, so that the CLI can register the subcommand without importing torch or
matplotlib.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "write_run_report": "pipeline.reporting.run_report",
    "key_line": "pipeline.reporting.run_report",
    "write_comparison": "pipeline.reporting.comparison",
    "report_command": "pipeline.reporting.command",
    "report_from_args": "pipeline.reporting.command",
    "add_report_parser": "pipeline.reporting.command",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.reporting' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
