"""Prefect artifacts of a run or a comparison: what a user sees in Prefect's UI besides task states.

Each run publishes its ``report.md`` as a markdown artifact, its key metrics as a table artifact and
links to the files it wrote (ONNX models, report, plots). Keys are derived from the flow's name, so
successive runs of one flow become versions of the same artifacts. Artifacts are a view: publishing
them never fails a run whose models and report are written (a Prefect API error is printed, once,
after transient ones were retried with backoff: ``pipeline.retrying``).
"""
from __future__ import annotations

import re
import sys
from functools import partial
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bmrs.artifacts import json_safe

# Prefect accepts lowercase letters, digits and dashes in artifact keys.
_KEY_UNSAFE = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: str) -> str:
    key = "-".join(_KEY_UNSAFE.sub("-", part.lower()) for part in parts)
    return re.sub("-{2,}", "-", key).strip("-") or "bmrs"


finite = json_safe  # NaN and infinity are not valid in the JSON Prefect stores artifacts as


def run_metric_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per model of a run's ``report.json`` (the dense reference, then the method's): the
    figures a user compares, flat, NaN-free."""
    energy = report.get("energy") or {}
    inference = energy.get("inference") or {}
    by_batch = inference.get("by_batch") or {}
    rows = []
    for model, label in (("dense", "dense reference"), ("pruned", str(report.get("method")))):
        figures = report.get(model) or {}
        onnx = report.get("onnx") if model == "pruned" else figures.get("onnx")
        row: dict[str, Any] = {
            "model": label,
            "accuracy": figures.get("accuracy"),
            "nll": figures.get("nll"),
            "ece": figures.get("ece"),
            "params": figures.get("params"),
            "macs": figures.get("flops"),
            "compression": figures.get("compression", 0.0 if model == "dense" else None),
            "structured_compression": figures.get("structured_compression", 0.0 if model == "dense" else None),
            "weight_sparsity": figures.get("weight_sparsity"),
            "total_removed": figures.get("total_removed", 0.0 if model == "dense" else None),
            "onnx_bytes": (onnx or {}).get("bytes"),
        }
        for runtime, batches in (report.get("latency") or {}).items():
            for batch, stats in batches.items():
                row[f"p50_ms {runtime} batch {batch}"] = stats.get(f"{model}_p50_ms")
        for batch, pair in by_batch.items():
            row[f"J per 1k inferences batch {batch}"] = (pair.get(model) or {}).get("j_per_1k")
            row[f"g CO2 per 1k inferences batch {batch}"] = (pair.get(model) or {}).get("g_co2_per_1k")
        rows.append(row)
    return finite(rows)


def comparison_rows(comparison: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per method of a comparison's ``report.json``: each metric's mean and std over seeds."""
    rows = []
    for group in comparison.get("groups") or []:
        row: dict[str, Any] = {"method": group.get("label"), "seeds": group.get("n")}
        for name, stats in (group.get("metrics") or {}).items():
            if isinstance(stats, Mapping):
                row[name] = stats.get("mean")
                row[f"{name} std"] = stats.get("std")
        rows.append(row)
    return finite(rows)


def file_links(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """(file:// URI, name) of each existing file, for link artifacts."""
    return [(path.resolve().as_uri(), path.name) for path in paths if path.is_file()]


def publish(key: str, *, markdown: str, table: Sequence[Mapping[str, Any]], links: Sequence[tuple[str, str]], what: str) -> bool:
    """Publish the three kinds of artifacts under ``key``; False (with one printed line) when Prefect
    refused them. Call from inside a flow run, so that they attach to it."""
    try:
        from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

        from pipeline.retrying import call_with_retries

        # Each artifact retried on its own (an API that did not answer, a 5xx), so none is published twice.
        call_with_retries(partial(create_markdown_artifact, markdown=markdown, key=artifact_key(key, "report"),
                                  description=f"{what}: report.md"))  # fmt: skip
        call_with_retries(partial(create_table_artifact, table=finite([dict(row) for row in table]),
                                  key=artifact_key(key, "metrics"), description=f"{what}: metrics"))  # fmt: skip
        for uri, name in links:
            call_with_retries(partial(create_link_artifact, link=uri, link_text=name, key=artifact_key(key, name),
                                      description=f"{what}: {name}"))  # fmt: skip
    except Exception as error:  # noqa: BLE001 - artifacts are a view; the run's files are what counts
        print(f"bmrs: Prefect artifacts of {what} were not published ({type(error).__name__}: {error})", file=sys.stderr)
        return False
    return True
