"""Figures for reports and benchmark results: accuracy-vs-compression curves and rank-correlation
heatmaps, written as PNG files. Matplotlib runs on its Agg backend, so no display is needed."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


@dataclass(frozen=True)
class Series:
    """One line of a plot; ``marks`` labels single points on it (e.g. ``{"knee": 4}``), and
    ``errors`` (same length as ``y``) draws error bars such as a standard deviation over seeds."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    marks: dict[str, int] = field(default_factory=dict)
    errors: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.label!r} has {len(self.x)} x values but {len(self.y)} y values")
        if self.errors is not None and len(self.errors) != len(self.y):
            raise ValueError(f"series {self.label!r} has {len(self.errors)} error values for {len(self.y)} points")
        for name, index in self.marks.items():
            if not 0 <= index < len(self.x):
                raise ValueError(f"mark {name!r} of series {self.label!r} points at {index}, outside 0..{len(self.x) - 1}")


_MARKERS = {"knee": "o", "bmrs_stop": "*"}


def line_plot(path: str | Path, series: Sequence[Series], *, xlabel: str, ylabel: str, title: str) -> Path:
    """Write ``series`` as one line plot to ``path`` (PNG); points that are None or non-finite are skipped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    try:
        for line in series:
            points = [(i, float(x), float(y)) for i, (x, y) in enumerate(zip(line.x, line.y)) if _finite(x) and _finite(y)]
            if not points:
                continue
            xs, ys = [p[1] for p in points], [p[2] for p in points]
            if line.errors is not None:
                errors = [float(line.errors[p[0]]) if _finite(line.errors[p[0]]) else 0.0 for p in points]
                drawn = axes.errorbar(xs, ys, yerr=errors, label=line.label, capsize=3, marker=".")
            else:
                (drawn,) = axes.plot(xs, ys, label=line.label, marker=".")
            colour = drawn[0].get_color() if isinstance(drawn, tuple) or hasattr(drawn, "lines") else drawn.get_color()
            for name, index in line.marks.items():
                if _finite(line.x[index]) and _finite(line.y[index]):
                    axes.plot([float(line.x[index])], [float(line.y[index])], marker=_MARKERS.get(name, "s"),
                              markersize=11, color=colour, markeredgecolor="black", linestyle="none")
        for name, marker in _MARKERS.items():
            if any(name in line.marks for line in series):
                axes.plot([], [], marker=marker, color="grey", markeredgecolor="black", linestyle="none", label=name)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        if series:
            axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path


def heatmap(path: str | Path, matrix: Sequence[Sequence[float]], labels: Sequence[str], *, title: str) -> Path:
    """Write a square matrix (e.g. Spearman correlations in [-1, 1]) with its values printed in the cells."""
    size = len(labels)
    if len(matrix) != size or any(len(row) != size for row in matrix):
        raise ValueError(f"heatmap needs a {size}x{size} matrix for labels {list(labels)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(1.0 + 0.9 * size, 0.8 + 0.8 * size), dpi=120)
    try:
        values = [[float(v) if _finite(v) else math.nan for v in row] for row in matrix]
        image = axes.imshow(values, vmin=-1.0, vmax=1.0, cmap="coolwarm")
        axes.set_xticks(range(size), labels, rotation=45, ha="right")
        axes.set_yticks(range(size), labels)
        for i in range(size):
            for j in range(size):
                text = "n/a" if math.isnan(values[i][j]) else f"{values[i][j]:.2f}"
                axes.text(j, i, text, ha="center", va="center", fontsize="small")
        figure.colorbar(image, ax=axes, fraction=0.046)
        axes.set_title(title)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
