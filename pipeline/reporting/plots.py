"""The comparison's figures: points with error bars over seeds (the seeds themselves faint), a Pareto
front, and grouped bars. Matplotlib on its Agg backend, as benchmarks.plots, so no display is needed."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from pipeline.reporting.text import number  # noqa: E402


@dataclass(frozen=True)
class Cloud:
    """One method on a scatter plot: its seeds (``xs``, ``ys`` paired) and their mean with the std
    as error bars. ``reference``: the dense model, drawn as a star; ``on_front``: on the Pareto front."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    x: float | None
    y: float | None
    x_err: float | None = None
    y_err: float | None = None
    reference: bool = False
    on_front: bool = False


@dataclass(frozen=True)
class Bars:
    """One method's bars: each name (e.g. "dense", "pruned") -> (mean, std, the seeds' values)."""

    label: str
    values: dict[str, tuple[float | None, float | None, Sequence[float]]] = field(default_factory=dict)


def scatter_plot(path: Path, clouds: Sequence[Cloud], *, xlabel: str, ylabel: str, title: str,
                 front: bool = False) -> Path | None:
    """Write the clouds to ``path``; ``front``: draw the Pareto front through the marked means.
    Returns None, writing nothing, when no cloud has a mean to draw."""
    drawable = [cloud for cloud in clouds if number(cloud.x) is not None and number(cloud.y) is not None]
    if not drawable:
        return None
    figure, axes = plt.subplots(figsize=(6.8, 4.6), dpi=120)
    try:
        for cloud in drawable:
            seeds = [(x, y) for x, y in zip(cloud.xs, cloud.ys) if number(x) is not None and number(y) is not None]
            marker = "*" if cloud.reference else "o"
            drawn = axes.errorbar([cloud.x], [cloud.y], xerr=[number(cloud.x_err) or 0.0], yerr=[number(cloud.y_err) or 0.0],
                                  marker=marker, markersize=12 if cloud.reference else 7, capsize=3, linestyle="none",
                                  label=cloud.label, markeredgecolor="black" if cloud.on_front else None)
            colour = drawn[0].get_color()
            if len(seeds) > 1:
                axes.scatter([x for x, _ in seeds], [y for _, y in seeds], color=colour, alpha=0.3, s=18)
        if front:
            on_front = sorted((cloud.x, cloud.y) for cloud in drawable if cloud.on_front)
            if on_front:
                axes.step([x for x, _ in on_front], [y for _, y in on_front], where="post", color="black",
                          linestyle="--", linewidth=1, label="Pareto front")
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title, fontsize="medium")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path


def bar_plot(path: Path, groups: Sequence[Bars], *, ylabel: str, title: str) -> Path | None:
    """Bars side by side per method, error bars of one std and the seeds as faint dots. None, writing
    nothing, when no bar has a value."""
    names = list(dict.fromkeys(name for group in groups for name in group.values))
    if not any(number(group.values[name][0]) is not None for group in groups for name in group.values):
        return None
    width = 0.8 / max(len(names), 1)
    figure, axes = plt.subplots(figsize=(max(6.4, 1.4 * len(groups) + 2), 4.4), dpi=120)
    try:
        for index, name in enumerate(names):
            xs, heights, errors, dots = [], [], [], []
            for position, group in enumerate(groups):
                mean, std, values = group.values.get(name, (None, None, ()))
                if number(mean) is None:
                    continue
                x = position - 0.4 + width * (index + 0.5)
                xs.append(x)
                heights.append(mean)
                errors.append(number(std) or 0.0)
                dots += [(x, value) for value in values if number(value) is not None]
            if not xs:
                continue
            axes.bar(xs, heights, width=width * 0.9, yerr=errors, capsize=3, label=name)
            if dots:
                axes.scatter([x for x, _ in dots], [y for _, y in dots], color="black", alpha=0.35, s=10, zorder=3)
        axes.set_xticks(range(len(groups)), [group.label for group in groups], rotation=20, ha="right", fontsize="small")
        axes.set_ylabel(ylabel)
        axes.set_title(title, fontsize="medium")
        axes.grid(alpha=0.3, axis="y")
        axes.legend(fontsize="small")
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
