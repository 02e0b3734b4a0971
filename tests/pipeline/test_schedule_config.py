"""A flow's ``schedule:`` in flows.yaml: checked when the flow is loaded, one line for each mistake."""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import ConfigError, flow_config_from_dict, load_flow
from pipeline.config.schedule import ScheduleConfig, interval_seconds

REPO = Path(__file__).resolve().parents[2]


def isolate_prefect_environment(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """What the CLI's ``_prefect_environment`` would set for good, set for this test only."""
    settings = {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                "PREFECT_LOGGING_LEVEL": "CRITICAL"}  # fmt: skip
    for variable, value in settings.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)


def flows_file(tmp_path: Path, schedule: object) -> Path:
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump({"flows": {"nightly": {"schedule": schedule, "train": {"epochs": 1}}}}))
    return path


def test_cron_with_timezone_becomes_prefects_cron_schedule(tmp_path):
    config = load_flow(flows_file(tmp_path, {"cron": "0 2 * * *", "timezone": "Europe/Copenhagen"}), "nightly")
    assert config.schedule == ScheduleConfig(cron="0 2 * * *", timezone="Europe/Copenhagen")
    prefect_schedule = config.schedule.to_prefect()
    assert (prefect_schedule.cron, prefect_schedule.timezone, prefect_schedule.interval) == ("0 2 * * *", "Europe/Copenhagen", None)
    assert config.schedule.describe() == "cron '0 2 * * *' (Europe/Copenhagen)"
    # config.json of each run holds it, and a run directory's config reads back to the same flow
    assert flow_config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("interval, seconds, words", [(90, 90.0, "every 90s"), ("30m", 1800.0, "every 30m"),
                                                      ("1h", 3600.0, "every 1h"), ("1.5h", 5400.0, "every 90m"),
                                                      ("1d", 86400.0, "every 1d")])  # fmt: skip
def test_interval_in_seconds_or_with_a_unit(tmp_path, interval, seconds, words):
    config = load_flow(flows_file(tmp_path, {"interval": interval}), "nightly")
    assert config.schedule.interval == seconds and config.schedule.describe() == words
    assert config.schedule.to_prefect().interval == datetime.timedelta(seconds=seconds)
    assert flow_config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_naive_anchor_is_read_in_the_schedules_timezone(tmp_path):
    # Unquoted, YAML hands over a datetime; Prefect alone would read it as UTC.
    path = tmp_path / "flows.yaml"
    path.write_text("flows:\n  nightly:\n    schedule: {interval: 1d, anchor: 2025-01-01T02:00:00, timezone: Europe/Copenhagen}\n")
    schedule = load_flow(path, "nightly").schedule
    assert schedule.anchor == "2025-01-01T02:00:00"
    assert schedule.to_prefect().anchor_date == datetime.datetime(2025, 1, 1, 2, tzinfo=ZoneInfo("Europe/Copenhagen"))


def test_flows_without_a_schedule_and_overrides():
    assert load_flow(REPO / "flows.yaml", "default").schedule is None  # `bmrs run` runs once, now, regardless
    # quoted: unquoted, YAML reads a leading * as an alias
    config = load_flow(REPO / "flows.yaml", "default", ["schedule.cron='*/5 * * * *'", "schedule.timezone=UTC"])
    assert config.schedule == ScheduleConfig(cron="*/5 * * * *", timezone="UTC")


@pytest.mark.parametrize(
    "schedule, fragment",
    [
        ({"cron": "0 25 * * *"}, "nightly.schedule: cron '0 25 * * *' is not a valid cron string; write five fields"),
        ({"cron": "every night"}, "cron 'every night' is not a valid cron string"),
        ({"cron": "0 2 * * *", "timezone": "Europe/Kopenhagen"}, "unknown timezone 'Europe/Kopenhagen'; use an IANA name"),
        ({"interval": "1h", "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"cron": "0 2 * * *", "tz": "UTC"}, "nightly.schedule.tz: unknown setting; valid settings of nightly.schedule are"),
        ({"interval": "1x"}, "interval '1x' is not a duration; write seconds (3600) or a number with s, m, h or d"),
        ({"interval": 0}, "shorter than 1 second"),
        ({"interval": True}, "nightly.schedule.interval: expected a finite number"),
        ({"cron": "0 2 * * *", "interval": 60}, "give exactly one of cron"),
        ({}, "give exactly one of cron"),
        ({"cron": "0 2 * * *", "anchor": "2025-01-01T02:00:00"}, "anchor applies to an interval"),
        ({"interval": 60, "anchor": "yesterday"}, "anchor 'yesterday' is not a date and time; write it as ISO 8601"),
        ("0 2 * * *", "nightly.schedule: expected a mapping of settings"),
    ],
)
def test_bad_schedules_are_one_line_naming_the_fix(tmp_path, schedule, fragment):
    with pytest.raises(ConfigError) as caught:
        load_flow(flows_file(tmp_path, schedule), "nightly")
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_bad_schedule_on_the_command_line_is_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    isolate_prefect_environment(monkeypatch, tmp_path)
    path = flows_file(tmp_path, {"cron": "0 2 * * *", "timezone": "Nowhere/Atlantis"})
    for command in ("run", "serve"):
        assert main([command, str(path), "--flow", "nightly"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bmrs: error: nightly.schedule: unknown timezone 'Nowhere/Atlantis'")
    assert not (tmp_path / "runs").exists()


def test_interval_seconds():
    assert interval_seconds(" 2m ") == 120.0 and interval_seconds(".5h") == 1800.0 and interval_seconds(7) == 7.0
    for bad in ("", "h", "1w", "-5", "1e9s", float("inf"), None):
        with pytest.raises(ValueError):
            interval_seconds(bad)
