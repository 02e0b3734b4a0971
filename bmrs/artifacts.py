"""Result files written so that a crash never leaves a half-written one behind."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None at any depth, tuples as lists and keys as
    strings: what strict JSON, ``write_json`` and Prefect's artifacts accept."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json(path: str | Path, payload: Any) -> Path:
    """Atomic JSON write; ``allow_nan=False`` because artifacts must never carry NaN or inf
    (Prefect's artifacts and strict JSON readers reject them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(payload, indent=2, allow_nan=False))
    os.replace(partial, path)
    return path
