"""The statistics commands through the real ``attendance`` CLI."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner

from official_stats import synthetic
from official_stats.commands import COMMANDS


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from attendance import cli as attendance_cli
    from attendance.settings import get_settings

    monkeypatch.setenv("ATTENDANCE_LAKE_URI", str(tmp_path / "lake"))
    get_settings.cache_clear()
    yield attendance_cli.main
    get_settings.cache_clear()


def test_commands_are_declared() -> None:
    assert {c.name for c in COMMANDS} >= {"aggregate", "publish", "scheduler", "release", "screen"}


def test_aggregate_publish_and_screen_end_to_end(cli, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    roll = synthetic.make_roll(24, 20, 2026, la_codes=["830", "831", "201"])
    synthetic.write_reference(str(lake), roll)
    for offset in range(2):
        sessions, extracts = synthetic.make_day(roll, dt.date(2026, 11, 16) + dt.timedelta(days=offset))
        synthetic.append_day(str(lake), sessions, extracts)
    optouts = tmp_path / "optouts.csv"
    optouts.write_text("urn,status,effective_at\n100000,opted_out,2026-11-17T09:00:00Z\n")
    runner = CliRunner()

    result = runner.invoke(cli, ["aggregate", "--optouts", str(optouts)])
    assert result.exit_code == 0, result.output
    assert "2 day(s) recomputed" in result.output

    out = tmp_path / "out"
    result = runner.invoke(cli, ["publish", "--release", "2026-11-19", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "attendance_ytd.meta.csv").is_file()

    result = runner.invoke(cli, ["screen", str(out / "attendance_daily_weekly.csv")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("0 failed, 0 warnings")


def test_bad_input_is_one_clear_line(cli) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["aggregate", "--date", "17/11/2026", "--optouts", "none"])
    assert result.exit_code == 2
    assert "--date must be a date as YYYY-MM-DD" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["publish", "--release", "2026-11-21", "--out", "x"])
    assert result.exit_code == 2  # no aggregated data (and a Saturday)


def test_publish_now_includes_the_release_date_and_makes_files_public(cli, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    roll = synthetic.make_roll(24, 20, 2026, la_codes=["830", "831", "201"])
    synthetic.write_reference(str(lake), roll)
    for offset in range(2):
        sessions, extracts = synthetic.make_day(roll, dt.date(2026, 11, 16) + dt.timedelta(days=offset))
        synthetic.append_day(str(lake), sessions, extracts)
    runner = CliRunner()
    assert runner.invoke(cli, ["aggregate", "--optouts", "none"]).exit_code == 0
    result = runner.invoke(cli, ["publish", "--release", "2026-11-17", "--now"])
    assert result.exit_code == 0, result.output
    public = lake / "published" / "releases" / "2026-11-17"
    assert (public / "manifest.json").is_file()
    assert '"data_end": "2026-11-17"' in (public / "manifest.json").read_text()
