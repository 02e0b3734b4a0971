"""Data the pipeline tests write: Gaussian blobs as small images, and the repository root.

A module of its own, not conftest.py: ``from conftest import`` finds whichever conftest module was
imported first, which depends on which test folders a pytest invocation collects.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def write_blobs(path: Path, *, train: int = 480, test: int = 200, classes: int = 4, seed: int = 0, side: int = 8) -> Path:
    """Overlapping Gaussian blobs as ``side`` x ``side`` images: learnable in one epoch, not perfectly."""
    generator = np.random.default_rng(seed)
    centres = generator.random((classes, side, side))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % classes
        return (centres[labels] + 0.5 * generator.standard_normal((n, side, side))).astype(np.float32), labels

    (x, y), (x_test, y_test) = split(train), split(test)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path
