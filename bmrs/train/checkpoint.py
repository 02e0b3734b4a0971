"""Checkpoints that load without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` of plain data read back with ``weights_only=True``: the model's
state dict, one JSON string of metadata and, for a resumable training checkpoint, the training
state (optimizer state dict, RNG states, gradient accumulators: tensors, numbers, strings and
containers of those, checked before writing). It is written to a temporary name and renamed, so a
crash never leaves a half-written file where a complete one was.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bmrs.train.config import complete_record


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the model."""


@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, Tensor]
    meta: dict[str, Any]
    training: dict[str, Any] | None  # None: weights only, not resumable


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any], *, training: dict[str, Any] | None = None) -> None:
    """Write ``model``'s state dict, ``meta`` (JSON) and optionally the ``training`` state to ``path``."""
    path = Path(path)
    payload: dict[str, Any] = {"state_dict": model.state_dict(), "meta": json.dumps(meta, allow_nan=False)}
    if training is not None:
        # Checked here, not at load time: a file weights_only cannot read would be found out only
        # when someone tries to resume from it.
        _check_plain(training, "training")
        payload["training"] = training
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read ``path`` without a model; raises ``CheckpointError`` naming the file when it is absent or damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; re-run the stage that writes it")
    try:
        with warnings.catch_warnings():
            # On a pickle torch did not write it warns, asking for an issue to be filed; the
            # error below says what is wrong with the file instead.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only_unpickler")
            payload = torch.load(path, map_location="cpu", weights_only=True)
        state, meta, training = payload["state_dict"], json.loads(payload["meta"]), payload.get("training")
        if not isinstance(state, dict) or not isinstance(meta, dict) or not (training is None or isinstance(training, dict)):
            raise TypeError("state_dict, meta or training has the wrong type")
    except Exception as error:  # torch raises several unrelated types for a damaged file
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a bmrs checkpoint ({_reason(error)}); "
            "delete it and re-run the stage that writes it"
        ) from error
    return Checkpoint(state, meta, training)


def check_fits(path: Path, model: nn.Module, checkpoint: Checkpoint) -> None:
    """Raise ``CheckpointError`` unless ``checkpoint``'s state dict has exactly ``model``'s keys and shapes."""
    mismatch = _mismatch(model.state_dict(), checkpoint.state_dict)
    if mismatch:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this model ({mismatch}); it was written for another "
            "model or config: use the config it was trained with, or retrain"
        )


def check_resumable_checkpoint(path: Path, checkpoint: Checkpoint, model: nn.Module, fingerprint: dict[str, Any]) -> None:
    """Refuse (``CheckpointError``) a checkpoint a training run cannot continue from: weights only, no
    recorded settings, settings other than ``fingerprint``, or weights that do not fit ``model``."""
    if checkpoint.training is None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds weights only, not the training state a resume needs; "
            "start a new run to retrain"
        )
    if not isinstance(checkpoint.meta.get("fingerprint"), dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not record the settings it was written under, so resuming "
            "from it could silently change the result; start a new run"
        )
    recorded = dict(checkpoint.meta["fingerprint"])
    if isinstance(recorded.get("train"), dict):
        recorded["train"] = complete_record(recorded["train"])
    difference = first_difference(recorded, fingerprint)
    if difference:
        raise CheckpointError(
            f"cannot resume from {str(path)!r}: it was written under different settings ({difference}); "
            "resume with the settings it was written with, or start a new run"
        )
    check_fits(path, model, checkpoint)


def load_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """Load ``path`` into ``model`` (in place); returns the metadata."""
    checkpoint = read_checkpoint(path)
    # Checked before loading: load_state_dict copies matching tensors before it raises.
    check_fits(path, model, checkpoint)
    model.load_state_dict(checkpoint.state_dict)
    return checkpoint.meta


def first_difference(expected: Any, found: Any, where: str = "") -> str | None:
    """The first setting at which two JSON-like trees differ, as ``"where: expected X, found Y"``."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in sorted(set(expected) | set(found), key=str):
            inner = f"{where}.{key}" if where else str(key)
            if key not in found:
                return f"{inner}: {_short(expected[key])} in the checkpoint, absent now"
            if key not in expected:
                return f"{inner}: absent in the checkpoint, {_short(found[key])} now"
            difference = first_difference(expected[key], found[key], inner)
            if difference:
                return difference
        return None
    if expected != found or type(expected) is not type(found):
        return f"{where or 'value'}: {_short(expected)} in the checkpoint, {_short(found)} now"
    return None


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(error: Exception) -> str:
    """What is wrong with the file, in one line, without torch's advice: its weights_only refusal
    wraps the cause in a dozen lines telling the reader to load with ``weights_only=False`` or to
    allowlist the offending class, exactly what must not happen to a file that is not ours."""
    message = str(error)
    _, marker, cause = message.partition("WeightsUnpickler error:")
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", cause)
    if unsupported:
        return f"it holds a {unsupported.group(1)} object, which a bmrs checkpoint never contains"
    lines = [line.strip() for line in (cause if marker else message).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # The first sentence is the cause; what follows is advice ("Please use ...", "If you trust ...").
    first = re.split(r"(?<=[.!])\s+(?=[A-Z])", lines[0])[0]
    advice = re.compile(r"weights_only|safe_globals|allowlist|trust|please", re.IGNORECASE)
    return f"{type(error).__name__}: {first[:200]}" if not advice.search(first) else type(error).__name__


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which weights_only loading cannot read; store tensors, "
        "numbers, strings, or lists and dicts of those"
    )


def _mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str | None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    for key, tensor in expected.items():
        if not isinstance(found[key], torch.Tensor) or found[key].shape != tensor.shape:
            return f"{key}: expected shape {tuple(tensor.shape)}, found {getattr(found[key], 'shape', type(found[key]))}"
    return None


def open_for_resume(path: Path, model: nn.Module, fingerprint: dict[str, Any], environment: dict[str, Any]) -> Checkpoint:
    """``path``'s checkpoint, refused (``CheckpointError``) unless ``model`` and ``fingerprint`` can
    resume it; a warning when it was written in another ``environment`` (torch version, threads):
    the resumed run then agrees with an uninterrupted one statistically, not bit for bit."""
    checkpoint = read_checkpoint(path)
    check_resumable_checkpoint(path, checkpoint, model, fingerprint)
    changed = first_difference(checkpoint.meta.get("environment"), environment)
    if changed:
        warnings.warn(
            f"resuming {str(path)!r} in another environment ({changed}): the result will agree with an "
            "uninterrupted run statistically, not bit for bit",
            stacklevel=4,
        )
    return checkpoint


@contextlib.contextmanager
def damaged_training_state(path: Path) -> Iterator[None]:
    """Whatever fails while a checkpoint's training state is read becomes one ``CheckpointError``
    naming the file and the fix."""
    try:
        yield
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has a damaged training state ({type(error).__name__}: {error}); "
            "delete it and start a new run"
        ) from error


def load_optimizer_and_check_random_state(training: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Load the optimiser's state and try the random streams on scratch generators, so that a bad
    state is refused before the model or the global generators change."""
    torch.Generator().set_state(training["rng"])
    torch.Generator().set_state(training["shuffle"])
    optimizer.load_state_dict(training["optimizer"])  # validates its structure before changing anything


def restore_random_state(training: dict[str, Any], shuffle: torch.Generator, device: torch.device | None = None) -> None:
    """The global, shuffle and (on CUDA) device generators as the checkpoint saved them."""
    torch.set_rng_state(training["rng"])
    shuffle.set_state(training["shuffle"])
    if device is not None and device.type == "cuda" and training.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(training["cuda_rng"], device)
