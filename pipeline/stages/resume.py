"""What ``bmrs resume RUN_DIR`` needs before it can hand a run directory back to the flow.

A run directory holds its resolved ``FlowConfig`` as ``config.json`` (written by
``steps.new_run_dir``); it is rebuilt here through the same typed builder as ``flows.yaml``, so a
hand-edited or damaged file is refused with the setting at fault. Every check happens before
anything in the directory is written: a refused resume leaves the directory exactly as it was.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from bmrs.train.checkpoint import read_checkpoint
from bmrs.data import DataBundle
from bmrs.train import TrainConfig, check_resume_from
from pipeline.stages import sparsifying, steps
from pipeline.config import ConfigError, FlowConfig, flow_config_from_dict

STAGE_FOLDERS = ("train", "baseline", "post_training")
LOCK_FILE = ".lock"


class RunDirError(ValueError):
    """The directory is not a bmrs run directory that can be resumed."""


def read_run_config(run_dir: Path) -> FlowConfig:
    """The configuration a run was started with, from ``run_dir/config.json``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {str(run_dir)!r} does not exist; pass the directory `bmrs run` printed")
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunDirError(
            f"{str(run_dir)!r} has no config.json, so it is not a bmrs run directory; pass the directory "
            "`bmrs run` printed (runs/<flow>/<run-id>)"
        )
    try:
        tree = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirError(f"{str(path)!r} is not readable JSON ({error}); the run cannot be resumed, start a new one") from error
    try:
        return flow_config_from_dict(tree)
    except ConfigError as error:
        raise RunDirError(f"{str(path)!r} is not a valid run configuration ({error}); start a new run") from error


def check_checkpoints(run_dir: Path) -> None:
    """Read every stage checkpoint the run left, so that a damaged one is reported before work starts."""
    paths = [Path(run_dir) / folder / "checkpoint.pt" for folder in STAGE_FOLDERS] + [sparsifying.checkpoint_path(run_dir)]
    for path in paths:
        if path.exists():
            read_checkpoint(path)  # raises CheckpointError naming the file


def _stage_trainings(config: FlowConfig) -> list[tuple[str, TrainConfig, bool]]:
    """(folder, training settings, noisy) of every training stage the flow resumes, as
    ``steps.train_stage`` and the post-training stage train them."""
    stages = [("train", config.train, config.train.criterion is not None)]
    if config.baseline.enabled:
        stages.append(("baseline", replace(config.train, criterion=None), False))
    if config.post_training.enabled:
        stages.append(("post_training", config.post_training.train_config(config.train), True))
    return stages


def check_resumable(config: FlowConfig, run_dir: Path, data: DataBundle) -> None:
    """Refuse, with ``CheckpointError``, a training checkpoint the flow would refuse to resume from
    (weights only, written under other settings, not fitting the model): checked here, before
    status.json is marked running, so that a refused resume leaves the directory as it was.
    The checks and messages are ``bmrs.train``'s own, on the fingerprint ``train_`` computes; the
    sparsify stage's checkpoint is checked on the fingerprint ``sparsify_`` computes."""
    for folder, train_config, noisy in _stage_trainings(config):
        path = Path(run_dir) / folder / "checkpoint.pt"
        if not path.is_file():
            continue  # the stage starts afresh
        check_resume_from(path, steps.build(config, data, noisy=noisy), data, train_config)
    sparsifying.check_resumable(config, data, run_dir)


@contextmanager
def exclusive_run(directory: Path) -> Iterator[None]:
    """Hold ``directory/.lock`` while this process works in ``directory``, so that a second `bmrs
    resume` of a run (or group) still going is refused instead of both writing the same checkpoints.
    The operating system drops the lock when its holder exits however it exits, ``kill -9``
    included, so a crashed run never leaves a stale lock behind."""
    directory = Path(directory)
    with open(directory / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunDirError(
                f"another bmrs process (pid {holder}) is working in {str(directory)!r}; wait for it to end "
                f"or stop it, then `bmrs resume {directory}`"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
