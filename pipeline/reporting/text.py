"""Numbers as report text: every missing or non-finite value prints as ``n/a``, never ``nan`` or ``None``."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from bmrs.artifacts import json_safe  # noqa: F401 - re-exported for the reporting modules

NA = "n/a"


def number(value: Any) -> float | None:
    """``value`` as a finite float; None for None, NaN, inf, booleans and anything not numeric."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def percent(fraction: Any, digits: int = 1) -> str:
    value = number(fraction)
    return NA if value is None else f"{100.0 * value:.{digits}f}%"


def count(value: Any) -> str:
    """Parameters, MACs, bytes: whole numbers with thousands separators."""
    value = number(value)
    return NA if value is None else f"{value:,.0f}"


def decimal(value: Any, digits: int = 4) -> str:
    value = number(value)
    return NA if value is None else f"{value:.{digits}f}"


def significant(value: Any, digits: int = 4) -> str:
    """Latencies, energies: ``digits`` significant digits, plain notation while it stays readable."""
    value = number(value)
    if value is None:
        return NA
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def short_decimal(value: Any) -> str:
    """Two decimals where they read well (``0.41``, ``1.20``), significant digits beyond: a key line's joules."""
    value = number(value)
    if value is None:
        return NA
    return f"{value:.2f}" if 0.1 <= abs(value) < 1000 else significant(value, 2)


def times(ratio: Any) -> str:
    """A speed-up: ``2.9x``; two decimals near 1, where one would hide the difference."""
    value = number(ratio)
    if value is None:
        return NA
    text = f"{value:.1f}"
    return f"{value:.2f}x" if text in ("0.9", "1.0", "1.1") else f"{text}x"


def mean_std_text(mean: Any, std: Any, render) -> str:
    """``render``'s text of the mean, ``± std`` after it when there is a spread to give."""
    if number(mean) is None:
        return NA
    if number(std) is None:
        return render(mean)
    if abs(std) <= 1e-9 * abs(mean):  # identical seeds up to float rounding: no spread to print as 1e-19
        std = 0.0
    if render is percent:  # both in percent, the unit written once
        return f"{100.0 * mean:.1f} ± {100.0 * std:.1f}%"
    return f"{render(mean)} ± {render(std)}"


def setting_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={setting_text(value)}" for name, value in settings.items())


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; a ``|`` inside a cell is escaped so it cannot split the cell."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


