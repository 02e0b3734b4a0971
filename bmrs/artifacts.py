"""Result files written so that a crash never leaves a half-written one behind."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | Path, payload: Any) -> Path:
    """Atomic JSON write; ``allow_nan=False`` because artifacts must never carry NaN or inf
    (Prefect's artifacts and strict JSON readers reject them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(payload, indent=2, allow_nan=False))
    os.replace(partial, path)
    return path
