"""A flow's ``schedule``: when `bmrs serve` runs it (`bmrs run` ignores it and runs the flow once, now).

    schedule: {cron: "0 2 * * *", timezone: Europe/Copenhagen}    # 02:00 every night, Copenhagen time
    schedule: {interval: 6h}                                       # every 6 hours from when serving starts
    schedule: {interval: 1d, anchor: "2025-01-01T02:00:00", timezone: Europe/Copenhagen}

A cron string is checked by Prefect's own schedule type, the one that will fire it, and a timezone
against the IANA database (``zoneinfo``) when the flow is loaded: a typo fails at once, not as a
nightly run that never comes. Prefect is imported only for a flow that has a schedule.
"""
from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*")
_DURATION_FIX = "write seconds (3600) or a number with s, m, h or d (90s, 30m, 1h, 1d)"
_CRON_FIX = "write five fields: minute hour day-of-month month day-of-week, e.g. '0 2 * * *' for 02:00 daily"
_TIMEZONE_FIX = "use an IANA name such as 'Europe/Copenhagen', 'America/New_York' or 'UTC'"


def interval_seconds(value: float | str) -> float:
    """``value`` in seconds: a number of seconds, or a string such as ``"90s"``, ``"30m"``, ``"1h"``, ``"1d"``."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ValueError(f"interval {value!r} is not a duration; {_DURATION_FIX}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f"interval {value!r} is not a duration; {_DURATION_FIX}")
    if not math.isfinite(seconds) or seconds < 1:
        raise ValueError(f"interval {value!r} is shorter than 1 second; {_DURATION_FIX}")
    return seconds


def _check_timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not even a well-formed key ("../x")
        raise ValueError(f"unknown timezone {name!r}; {_TIMEZONE_FIX}") from None


def _anchor_datetime(value: Any) -> datetime.datetime:
    # YAML reads an unquoted 2025-01-01T02:00:00 as a datetime and 2025-01-01 as a date.
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, datetime.date):
        return datetime.datetime.combine(value, datetime.time())
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"anchor {value!r} is not a date and time; write it as ISO 8601, e.g. '2025-01-01T02:00:00'")


@dataclass(frozen=True)
class ScheduleConfig:
    """Either ``cron`` (five fields, read in ``timezone``, default UTC) or ``interval`` (seconds, or
    ``"30m"``, ``"1h"``, ``"1d"``; counted from ``anchor``, default when serving starts; a naive
    ``anchor`` is read in ``timezone``). ``interval`` is kept in seconds once checked."""

    cron: str | None = None
    # float first: 3600 stays a number; "1h" falls through to str and is converted below.
    interval: float | str | None = None
    timezone: str | None = None
    # Any: YAML hands over a datetime, a date or a string; kept as an ISO 8601 string once checked.
    anchor: Any = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.interval is None):
            raise ValueError(
                "give exactly one of cron (e.g. {cron: '0 2 * * *', timezone: Europe/Copenhagen}) "
                "or interval (e.g. {interval: 1h})"
            )
        if self.timezone is not None:
            _check_timezone(self.timezone)
        if self.cron is not None:
            if self.anchor is not None:
                raise ValueError("anchor applies to an interval; a cron string already says when, remove anchor")
            self._check_with_prefect()
            return
        object.__setattr__(self, "interval", interval_seconds(self.interval))
        if self.anchor is not None:
            object.__setattr__(self, "anchor", _anchor_datetime(self.anchor).isoformat())
        self._check_with_prefect()

    def _check_with_prefect(self) -> None:
        """The schedule Prefect's API will hold, built now; its own errors span several lines."""
        from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

        try:
            if self.cron is not None:
                CronSchedule(cron=self.cron)
            else:
                IntervalSchedule(interval=datetime.timedelta(seconds=self.interval), **self._anchor_kwargs())
        except ValueError:
            if self.cron is not None:
                raise ValueError(f"cron {self.cron!r} is not a valid cron string; {_CRON_FIX}") from None
            raise ValueError(f"interval {self.interval!r} s from anchor {self.anchor!r} is refused by Prefect") from None
        if self.timezone is not None:
            try:
                CronSchedule(cron="0 0 * * *", timezone=self.timezone)
            except ValueError:  # zoneinfo knows it, Prefect's list does not
                raise ValueError(f"timezone {self.timezone!r} is not one Prefect schedules in; {_TIMEZONE_FIX}") from None

    def _anchor_kwargs(self) -> dict[str, Any]:
        if self.anchor is None:
            return {}
        anchor = datetime.datetime.fromisoformat(self.anchor)
        if anchor.tzinfo is None:  # Prefect would read a naive anchor as UTC whatever the timezone says
            anchor = anchor.replace(tzinfo=ZoneInfo(self.timezone or "UTC"))
        return {"anchor_date": anchor}

    def to_prefect(self) -> Any:
        """The ``prefect.schedules.Schedule`` for ``Flow.to_deployment(schedule=...)``."""
        from prefect.schedules import Cron, Interval

        if self.cron is not None:
            return Cron(self.cron, timezone=self.timezone)
        return Interval(datetime.timedelta(seconds=self.interval), timezone=self.timezone, **self._anchor_kwargs())

    def describe(self) -> str:
        """In words, for the terminal: ``cron '0 2 * * *' (Europe/Copenhagen)``, ``every 1h``."""
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.timezone or 'UTC'})"
        seconds = self.interval
        unit = next((u for u in "dhm" if seconds >= _UNIT_SECONDS[u] and seconds % _UNIT_SECONDS[u] == 0), "s")
        every = f"every {seconds / _UNIT_SECONDS[unit]:g}{unit}"
        return every if self.anchor is None else f"{every} from {self.anchor}{'' if self.timezone is None else f' ({self.timezone})'}"
