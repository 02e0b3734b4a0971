"""The explicit reuse key of a comparison's runs: what a finished run directory was computed from.

``bmrs compare`` (and its sweeps) reuse a run directory that holds ``report.json`` instead of
training again. A directory is only reusable while everything its result depends on is unchanged,
so each run directory it starts records ``cache.json``::

    {"key": sha256 of the three below, "config": sha256 of the resolved settings,
     "data": digest of the data's train, validation and test tensors, "code": the code version,
     "dependencies": the versions the code version covers}

and a directory whose record differs from what a run would be made from now is *stale*: it is
moved aside (``<out>.stale/<its code version>/<label>/seed<k>``, so old results stay readable with
``bmrs report``) and run again. A directory without a record (made before records were kept) is
stale too: nothing says which code made it.

Why a record in the run directory and not Prefect's cache policies: the cached value of a run is
its directory (checkpoints, ONNX files, report), not a return value Prefect could persist, and a
record kept in Prefect's result storage could outlive the files it vouches for (a deleted run
directory) or miss files that are there (another PREFECT_HOME, another machine of a Dask cluster).
A record beside the files moves, is copied and is deleted with them, and workers on other machines
read it through the same shared file system as the runs. Prefect's stages keep ``NO_CACHE``.

The code version hashes the source files whose change can change a result: ``bmrs/``, ``export/``,
``pipeline/stages/``, ``pipeline/flow.py`` and the measurement modules of ``benchmarks/``
(``MEASUREMENT_MODULES``), plus the versions of the numerical libraries (torch, torch-pruning,
onnx, onnxruntime). Reporting code is left out: ``bmrs report`` rebuilds a report from the files.
Nothing here imports torch or Prefect.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmrs.artifacts import write_json

CACHE_FILE = "cache.json"
STALE_SUFFIX = ".stale"
UNVERSIONED = "unversioned"  # the folder of stale directories that had no record
ROOT = Path(__file__).resolve().parents[1]  # the folder holding bmrs/, export/, pipeline/, benchmarks/
# benchmarks' modules that measure what a run reports (the rest of benchmarks/ are commands).
MEASUREMENT_MODULES = ("latency", "latency_report", "ort_runtime", "torch_runtime", "energy", "energy_pair",
                       "stage_energy", "codecarbon_offline")  # fmt: skip
CODE_SOURCES = ("bmrs", "export", "pipeline/stages", "pipeline/flow.py", *(f"benchmarks/{m}.py" for m in MEASUREMENT_MODULES))
REPORT_SOURCES = ("pipeline/reporting", "pipeline/flow.py", "pipeline/artifacts.py")
DEPENDENCIES = ("torch", "torch-pruning", "onnx", "onnxruntime")


def source_files(sources: tuple[str, ...], root: Path = ROOT) -> list[Path]:
    """The ``.py`` files of ``sources`` (folders, searched recursively, or files) under ``root``, sorted."""
    files: set[Path] = set()
    for source in sources:
        path = root / source
        files.update(path.rglob("*.py") if path.is_dir() else [path] if path.is_file() else [])
    return sorted(files)


def source_digest(sources: tuple[str, ...], root: Path = ROOT) -> str:
    """sha256 over the ``.py`` files of ``sources`` under ``root``: their paths relative to ``root``
    and their bytes, in sorted order."""
    hasher = hashlib.sha256()
    for path in source_files(sources, root):
        hasher.update(path.relative_to(root).as_posix().encode() + b"\0")
        hasher.update(path.read_bytes() + b"\0")
    return hasher.hexdigest()


def dependency_versions() -> dict[str, str]:
    versions = {}
    for name in DEPENDENCIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """16 hex digits naming the code a run is computed by (read once per process)."""
    hasher = hashlib.sha256(source_digest(CODE_SOURCES).encode())
    hasher.update(json.dumps(dependency_versions(), sort_keys=True).encode())
    return hasher.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def report_version() -> str:
    """The code that writes a comparison's report: a change rewrites the report of reused runs."""
    return source_digest(REPORT_SOURCES)[:16]


def data_digest(data: Any) -> str:
    """A digest of the data a run sees (``DataBundle``: train, validation and test tensors, class
    count), in the way ``bmrs.train``'s checkpoint fingerprint digests its splits, with the test
    split too: every reported accuracy is measured on it."""
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(f"classes {data.num_classes}".encode())
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        for tensor in (split.images, split.labels):
            hasher.update(f"{name} {tensor.dtype}{list(tensor.shape)}".encode())
            hasher.update(tensor.detach().cpu().contiguous().numpy().data)
    return hasher.hexdigest()


def comparable_settings(tree: dict[str, Any], *, dense: bool = False) -> dict[str, Any]:
    """The settings a result depends on: not ``train.progress`` (display), ``schedule`` (when to
    run) or ``output`` (where the result goes). ``dense``: the dense baseline's, whose training
    ignores the criterion."""
    tree = json.loads(json.dumps(tree))
    tree.pop("schedule", None)
    tree.pop("output", None)
    tree.get("train", {}).pop("progress", None)
    if dense:
        tree["train"]["criterion"] = None
    return tree


@dataclass(frozen=True)
class RunKey:
    config: str
    data: str
    code: str

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.config}\0{self.data}\0{self.code}".encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "config": self.config, "data": self.data, "code": self.code, "dependencies": dependency_versions()}


def run_key(config_tree: dict[str, Any], data_digest_: str, *, dense: bool = False) -> RunKey:
    """The key of a run of the flow ``config_tree`` (``FlowConfig.to_dict()``) on data digested as
    ``data_digest_``, by this code; ``dense``: of the shared dense baseline of that run's seed."""
    settings = json.dumps(comparable_settings(config_tree, dense=dense), sort_keys=True, separators=(",", ":"))
    return RunKey(hashlib.sha256(settings.encode()).hexdigest(), data_digest_, code_version())


def write_key(directory: Path, key: RunKey) -> None:
    write_json(Path(directory) / CACHE_FILE, key.to_dict())


def recorded(directory: Path) -> dict[str, Any] | None:
    """``directory``'s record, or None when it has none or an unreadable one."""
    try:
        record = json.loads((Path(directory) / CACHE_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def stale_reason(directory: Path, key: RunKey) -> str | None:
    """Why the existing ``directory`` cannot be reused or resumed as a run of ``key``; None when it can."""
    record = recorded(directory)
    if record is None:
        return "it has no readable cache.json (made before runs recorded their code version)"
    if record.get("key") == key.key:
        return None
    if record.get("code") != key.code:
        return f"the code changed since it was made (code version {record.get('code')} there, {key.code} now)"
    if record.get("data") != key.data:
        return "the data changed since it was made"
    return "it was made under other settings"


def set_aside(directory: Path, out_dir: Path) -> Path:
    """Move the stale ``directory`` (inside the comparison folder ``out_dir``) to
    ``<out_dir>.stale/<its code version>/<its path inside out_dir>``; returns where it went."""
    directory, out_dir = Path(directory), Path(out_dir)
    code = str((recorded(directory) or {}).get("code") or UNVERSIONED)
    target = out_dir.with_name(out_dir.name + STALE_SUFFIX) / code / directory.relative_to(out_dir)
    candidate, number = target, 1
    while candidate.exists():
        number += 1
        candidate = target.with_name(f"{target.name}-{number}")
    candidate.parent.mkdir(parents=True, exist_ok=True)
    os.replace(directory, candidate)
    return candidate


def report_key(title: str, run_dirs: list[Path]) -> str:
    """What a comparison's report is computed from: its title, each run's report.json and record,
    and the reporting code."""
    hasher = hashlib.sha256(f"{title}\0{report_version()}".encode())
    for run_dir in run_dirs:
        hasher.update(f"\0{run_dir}".encode())
        for name in ("report.json", CACHE_FILE):
            try:
                hasher.update(hashlib.sha256((Path(run_dir) / name).read_bytes()).digest())
            except OSError:
                hasher.update(b"absent")
    return hasher.hexdigest()
