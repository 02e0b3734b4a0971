"""Checkpoints that load without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` of plain tensors and one JSON string of metadata, read back with
``weights_only=True``; it is written to a temporary name and renamed, so a crash never leaves a
half-written file where a complete one was.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the model."""


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": model.state_dict(), "meta": json.dumps(meta, allow_nan=False)}
    partial = path.with_name(f".{path.name}.partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """Load ``path`` into ``model`` (in place); returns the metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; re-run the stage that writes it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state, meta = payload["state_dict"], json.loads(payload["meta"])
    except Exception as error:  # torch raises several unrelated types for a damaged file
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a bmrs checkpoint ({type(error).__name__}: {error}); "
            "delete it and re-run the stage that writes it"
        ) from error
    mismatch = _mismatch(model.state_dict(), state)
    if mismatch:
        # Checked before loading: load_state_dict copies matching tensors before it raises.
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this model ({mismatch}); it was written for another "
            "model or config: use the config it was trained with, or retrain"
        )
    model.load_state_dict(state)
    return meta


def _mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str | None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    for key, tensor in expected.items():
        if not isinstance(found[key], torch.Tensor) or found[key].shape != tensor.shape:
            return f"{key}: expected shape {tuple(tensor.shape)}, found {getattr(found[key], 'shape', type(found[key]))}"
    return None
