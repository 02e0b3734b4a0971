"""Where a comparison's runs live, which of them are already done, and what they share.

Layout, ``<out>/`` (default ``<runs_dir>/<flow>/compare/``)::

    compare.json               the flow's resolved config, the methods, the seeds, and each run's outcome
    dense/seed<k>/baseline/    the dense baseline of seed k (checkpoint.pt, history.json), trained once
    <label>/seed<k>/           an ordinary run directory (``bmrs resume`` works on it)
    report.md, report.json     ``pipeline.reporting.write_comparison``'s comparison of the runs

Every method of a seed trains under the same ``train`` settings bar the criterion, so their dense
baselines (``replace(config.train, criterion=None)``, a model without noise layers) are one and the
same computation, and the checkpoint fingerprint (every training setting but ``progress``, the
model's modules and shapes, the data's digest) is the same too. The baseline is trained once into
``dense/seed<k>`` by the flow's own baseline stage (``steps.train_stage(..., baseline=True)``), and
each run of the seed gets a hard link (a copy across file systems) of it before it starts with
``resume=True``: its baseline stage finds a finished checkpoint it accepts and only loads it. The
``none`` method's pruned model is that dense model too (its ``train`` settings are the baseline's),
so its ``train/`` gets the same file; so does ``bmr_weights``'s, which sparsifies that very model.
"""
from __future__ import annotations

import enum
import filecmp
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from bmrs.data import DataBundle
from bmrs.nn.noise import noise_modules
from bmrs.train import check_resume_from
from bmrs.train.checkpoint import CheckpointError
from pipeline.compare.methods import DENSE_FOLDER, Method
from pipeline.config import ConfigError, FlowConfig, flow_config_from_dict
from pipeline.stages import steps
from pipeline.stages.resume import check_checkpoints, check_resumable

COMPARE_FILE = "compare.json"
SHARED_FILES = ("checkpoint.pt", "history.json")  # what the baseline stage leaves in its folder


class Found(enum.Enum):
    NEW = "new"  # no directory yet
    BEGUN = "begun"  # started under the same settings, no report: resumed
    FINISHED = "finished"  # report.json and the same settings: reused as it is


def default_out(config: FlowConfig) -> Path:
    return Path(config.output.runs_dir) / config.name / "compare"


def check_writable(out_dir: Path) -> None:
    """Refuse an ``--out`` that is a file, or that this process could not create or write in."""
    path = Path(out_dir)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ValueError(f"--out {str(path)!r}: {str(existing)!r} is a file, not a directory; choose a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(path)!r}: cannot create or write in {str(existing)!r} (no permission); choose a folder you can write in")


def run_dir(out_dir: Path, method: Method, seed: int) -> Path:
    return Path(out_dir) / method.label / f"seed{seed}"


def dense_dir(out_dir: Path, seed: int) -> Path:
    """Where seed ``seed``'s dense baseline is trained, as a run's ``baseline/`` stage would train it."""
    return Path(out_dir) / DENSE_FOLDER / f"seed{seed}"


def needs_dense(config: FlowConfig) -> bool:
    """Whether a run uses the dense model: as its baseline, or (``none``, ``bmr_weights``) as its own model."""
    return config.baseline.enabled or config.train.criterion is None


def _comparable(tree: dict[str, Any], *, without_layer_ratios: bool) -> dict[str, Any]:
    tree = json.loads(json.dumps(tree))
    tree["train"].pop("progress", None)  # a display setting: --no-progress does not change a result
    criterion = tree["train"].get("criterion")
    if without_layer_ratios and isinstance(criterion, dict):
        criterion.pop("layer_ratios", None)
    return tree


def _difference(there: Any, now: Any, where: str = "") -> str | None:
    """The first setting at which two config trees differ, as ``"key: X there, Y now"``."""
    if isinstance(there, dict) and isinstance(now, dict):
        for key in sorted(set(there) | set(now), key=str):
            inner = f"{where}.{key}" if where else str(key)
            if key not in now or key not in there:
                return f"{inner}: {'set' if key in there else 'absent'} there, {'set' if key in now else 'absent'} now"
            found = _difference(there[key], now[key], inner)
            if found:
                return found
        return None
    if there != now or type(there) is not type(now):
        return f"{where or 'value'}: {json.dumps(there)} there, {json.dumps(now)} now"
    return None


def inspect(directory: Path, config: FlowConfig, *, without_layer_ratios: bool = False) -> Found:
    """What ``directory`` holds for a run of ``config``; ``ValueError`` naming the directory and the
    fix when it holds something else (other settings, or no run at all). ``without_layer_ratios``:
    the fractions are not known yet (the ratio source has not finished), so they are left out."""
    directory = Path(directory)
    if not directory.exists():
        return Found.NEW
    fix = f"choose another --out, or delete {str(directory)!r} to run it again"
    path = directory / "config.json"
    try:
        recorded = flow_config_from_dict(json.loads(path.read_text())).to_dict()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ConfigError) as error:
        raise ValueError(f"{str(directory)!r} is not a readable run directory ({type(error).__name__}: {error}); {fix}") from None
    difference = _difference(
        _comparable(recorded, without_layer_ratios=without_layer_ratios),
        _comparable(config.to_dict(), without_layer_ratios=without_layer_ratios),
    )
    if difference:
        raise ValueError(f"{str(directory)!r} holds a run made under other settings ({difference}); {fix}")
    return Found.FINISHED if (directory / "report.json").is_file() else Found.BEGUN


def check_begun(directory: Path, config: FlowConfig, data: DataBundle) -> None:
    """Refuse, before anything trains, a begun run whose checkpoints the flow would refuse to resume."""
    try:
        check_checkpoints(directory)
        check_resumable(config, directory, data)
    except CheckpointError as error:
        raise ValueError(f"{error} (in the comparison's run {str(directory)!r}; delete it to run it again)") from None


def check_dense(directory: Path, config: FlowConfig, data: DataBundle) -> None:
    """Refuse a dense baseline left in ``directory`` that the runs of ``config`` would not accept."""
    path = Path(directory) / "baseline" / "checkpoint.pt"
    if path.is_file():
        try:
            check_resume_from(path, steps.build(config, data, noisy=False), data, replace(config.train, criterion=None))
        except CheckpointError as error:
            raise ValueError(f"{error} (the shared dense baseline; choose another --out, or delete {str(directory)!r})") from None


def train_dense(config: FlowConfig, data: DataBundle, directory: Path) -> Path:
    """Seed ``config.train.seed``'s dense baseline into ``directory/baseline/`` through the flow's own
    baseline stage, continuing an interrupted one; a finished one is only loaded."""
    return steps.train_stage(config, data, Path(directory), baseline=True, resume=True)


def _same_file(a: Path, b: Path) -> bool:
    return b.is_file() and (os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False))


def share_dense(directory: Path, run: Path, config: FlowConfig) -> list[Path]:
    """Give ``run`` the dense baseline of ``directory`` (a hard link, or a copy across file systems):
    in ``baseline/`` when the run trains one, and in ``train/`` for the methods without a criterion
    (``none``, whose model it is, and ``bmr_weights``, which starts from it). A different file already there is replaced (the stages after training are redone on resume
    anyway). Returns the checkpoints placed."""
    source = Path(directory) / "baseline"
    folders = (["baseline"] if config.baseline.enabled else []) + (["train"] if config.train.criterion is None else [])
    placed = []
    for folder in folders:
        target = Path(run) / folder
        target.mkdir(parents=True, exist_ok=True)
        for name in SHARED_FILES:
            if not (source / name).is_file() or _same_file(source / name, target / name):
                continue
            partial = target / f".{name}.partial"
            partial.unlink(missing_ok=True)
            try:
                os.link(source / name, partial)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(source / name, partial)
            os.replace(partial, target / name)
        placed.append(target / "checkpoint.pt")
    return placed


def layer_fractions(config: FlowConfig, data: DataBundle, directory: Path) -> dict[str, float]:
    """Per noise layer, the fraction of its structures the finished run of ``config`` in ``directory``
    had removed, so a criterion given these as ``layer_ratios`` removes exactly as many structures per
    layer. Read from the masks of the checkpoint its report's model was sliced from; where that
    checkpoint is gone (results kept without their ``.pt`` files, as committed under
    ``benchmarks/results/``), from the last epoch of ``train/history.json``, whose ``alive`` counts
    are those masks' sums."""
    checkpoint = Path(directory) / "train" / "checkpoint.pt"
    if checkpoint.is_file():
        noises = noise_modules(steps.restore(config, data, checkpoint, noisy=True))
        alive = {name: int(noise.mask.sum()) for name, noise in noises.items()}
    else:
        noises = noise_modules(steps.build(config, data, noisy=True))
        alive = _final_alive(Path(directory) / "train" / "history.json", directory)
    sizes = {name: noise.num_structures for name, noise in noises.items()}
    if not isinstance(alive, dict) or set(alive) != set(sizes):
        history_path = Path(directory) / "train" / "history.json"
        raise CheckpointError(
            f"{history_path}: its 'alive' counts name other noise layers than flow {config.name!r} builds; "
            "re-run this method (delete its folder) so its fractions match the model"
        )
    return {name: (size - int(alive[name])) / size for name, size in sizes.items()}


def _final_alive(history_path: Path, directory: Path) -> Any:
    """The last epoch's per-noise-layer ``alive`` counts of a training history."""
    try:
        return json.loads(history_path.read_text())[-1]["alive"]
    except (OSError, ValueError, LookupError, TypeError):
        raise CheckpointError(
            f"{directory}: neither train/checkpoint.pt nor a readable train/history.json with per-layer 'alive' counts; "
            "re-run this method (delete its folder) so it has per-layer fractions to give"
        ) from None
