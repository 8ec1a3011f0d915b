"""The scheduler's operational metrics and jobs: next release and its status, scheduled time, last
aggregation and publication times read back at start-up, the daily data-quality report, pending purges."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from click.testing import CliRunner

from attendance import metrics
from official_stats import contracts, release
from official_stats.commands import SchedulerOps, dq_report_due, purges_to_verify
from official_stats.config import StatsConfig
from official_stats.incremental import Lake

CONFIG = StatsConfig()
THU = dt.date(2026, 11, 26)  # GMT: 09:30 London is 09:30 UTC
NEXT_THU = dt.date(2026, 12, 10)
UTC = dt.UTC


def gauge(metric) -> float:
    return metric._value.get()


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# --- which release is next --------------------------------------------------------------------------------


def test_next_release_is_todays_all_day_then_the_following_one():
    releases = [NEXT_THU, THU]
    assert release.next_release(releases, utc(2026, 11, 20, 12), CONFIG) == THU
    assert release.next_release(releases, utc(2026, 11, 26, 8), CONFIG) == THU
    assert release.next_release(releases, utc(2026, 11, 26, 23, 59), CONFIG) == THU  # published, still today's
    assert release.next_release(releases, utc(2026, 11, 27, 0, 1), CONFIG) == NEXT_THU
    assert release.next_release(releases, utc(2026, 12, 11), CONFIG) is None


def test_next_release_uses_the_uk_date_in_summer():
    # 23:30 UTC on 25 June is 00:30 BST on the 26th: the release of the 25th is over in the UK.
    assert release.next_release([dt.date(2026, 6, 25), dt.date(2026, 6, 26)], utc(2026, 6, 25, 23, 30), CONFIG) \
        == dt.date(2026, 6, 26)


# --- status and scheduled time ------------------------------------------------------------------------------


def scheduler_at(lake: str, now: dt.datetime, releases=(THU, NEXT_THU), **kwargs) -> release.ReleaseScheduler:
    return release.ReleaseScheduler(lake, list(releases), clock=lambda: now, config=CONFIG, **kwargs)


def test_gauges_follow_the_next_release_from_not_prepared_to_embargoed_to_published(tmp_path: Path):
    lake = str(tmp_path / "lake")
    paths = release.ReleasePaths.for_lake(lake)
    due = utc(2026, 11, 26, 9, 30).timestamp()  # 09:30 GMT is 09:30 UTC

    scheduler = scheduler_at(lake, utc(2026, 11, 20, 12))
    scheduler.observe(utc(2026, 11, 20, 12))
    assert gauge(metrics.RELEASE_STATUS) == release.NOT_PREPARED
    assert gauge(metrics.RELEASE_SCHEDULED_TIMESTAMP) == due

    paths.embargo(THU).mkdir(parents=True)
    scheduler.observe(utc(2026, 11, 25, 12))
    assert gauge(metrics.RELEASE_STATUS) == release.EMBARGOED

    paths.embargo(THU).rename(paths.root / "moved")
    paths.public(THU).mkdir(parents=True)
    scheduler.observe(utc(2026, 11, 26, 15))
    assert gauge(metrics.RELEASE_STATUS) == release.PUBLISHED
    assert gauge(metrics.RELEASE_SCHEDULED_TIMESTAMP) == due


def test_a_past_due_release_with_nothing_prepared_is_incomplete_and_a_late_one_stays_late(tmp_path: Path):
    lake = str(tmp_path / "lake")
    scheduler = scheduler_at(lake, utc(2026, 11, 26, 9, 31))
    scheduler.observe(utc(2026, 11, 26, 9, 31))
    assert gauge(metrics.RELEASE_STATUS) == release.INCOMPLETE

    scheduler.done[THU] = release.ReleaseOutcome(THU, release.LATE, None)
    scheduler.observe(utc(2026, 11, 26, 11))
    assert gauge(metrics.RELEASE_STATUS) == release.LATE


def test_nothing_scheduled_sets_both_gauges_to_zero(tmp_path: Path):
    scheduler = scheduler_at(str(tmp_path / "lake"), utc(2026, 12, 11), releases=(THU,))
    metrics.RELEASE_STATUS.set(release.LATE)
    scheduler.tick()
    assert gauge(metrics.RELEASE_STATUS) == 0 and gauge(metrics.RELEASE_SCHEDULED_TIMESTAMP) == 0


def test_a_service_scheduler_keeps_ticking_after_its_releases_and_calls_after_tick(tmp_path: Path):
    calls: list[int] = []

    async def no_sleep(_: float) -> None:
        return None

    scheduler = scheduler_at(str(tmp_path / "lake"), utc(2026, 12, 11), releases=(), sleep=no_sleep,
                             after_tick=lambda: calls.append(1), keep_running=True)
    asyncio.run(scheduler.run(max_ticks=3))
    assert len(calls) == 3
    one_shot = scheduler_at(str(tmp_path / "lake"), utc(2026, 12, 11), releases=(), sleep=no_sleep)
    asyncio.run(one_shot.run(max_ticks=3))
    assert one_shot.events == []  # nothing pending and not a service: returns at once


# --- last publication and aggregation times --------------------------------------------------------------------


def embargoed_release(lake: str, day: dt.date) -> None:
    directory = release.ReleasePaths.for_lake(lake).embargo(day)
    directory.mkdir(parents=True)
    (directory / "attendance.csv").write_text("time_period\n202627\n")
    (directory / "attendance.meta.csv").write_text("col_name\ntime_period\n")
    release.write_manifest(directory, {"release_date": day.isoformat()})


def test_publications_are_recorded_and_read_back_as_the_last_publication_time(tmp_path: Path):
    lake = str(tmp_path / "lake")
    assert release.last_publication_time(lake) is None
    embargoed_release(lake, THU)
    on_time = utc(2026, 11, 26, 9, 30, 20)
    assert release.publish(lake, THU, on_time, config=CONFIG).status == release.PUBLISHED
    embargoed_release(lake, NEXT_THU)
    late = utc(2026, 12, 10, 11)
    assert release.publish(lake, NEXT_THU, late, config=CONFIG).status == release.LATE
    assert release.last_publication_time(lake) == late
    lines = release.ReleasePaths.for_lake(lake).publications.read_text().splitlines()
    assert [json.loads(line)["late"] for line in lines] == [False, True]


def test_start_up_loads_the_last_aggregation_and_publication_times_from_the_lake(tmp_path: Path):
    lake = str(tmp_path / "lake")
    runs = pl.DataFrame({"run_id": ["a", "b"], "run_at": [utc(2026, 11, 24, 18), utc(2026, 11, 25, 18)],
                         "mode": ["incremental", "incremental"]})
    Lake(lake).append(contracts.AGGREGATION_STATE, runs)
    embargoed_release(lake, THU)
    release.publish(lake, THU, utc(2026, 11, 26, 9, 31), config=CONFIG)
    metrics.LAST_AGGREGATION_TIMESTAMP.set(0)
    metrics.LAST_PUBLICATION_TIMESTAMP.set(0)

    SchedulerOps(lake).load_last_times()
    assert gauge(metrics.LAST_AGGREGATION_TIMESTAMP) == utc(2026, 11, 25, 18).timestamp()
    assert gauge(metrics.LAST_PUBLICATION_TIMESTAMP) == utc(2026, 11, 26, 9, 31).timestamp()


def test_start_up_on_an_empty_lake_leaves_the_times_at_zero(tmp_path: Path):
    metrics.LAST_AGGREGATION_TIMESTAMP.set(0)
    metrics.LAST_PUBLICATION_TIMESTAMP.set(0)
    SchedulerOps(str(tmp_path / "lake")).load_last_times()
    assert gauge(metrics.LAST_AGGREGATION_TIMESTAMP) == 0 and gauge(metrics.LAST_PUBLICATION_TIMESTAMP) == 0


# --- daily data-quality report ---------------------------------------------------------------------------------


def test_dq_report_is_due_once_a_day_from_its_uk_time():
    noon = dt.time(12, 0)
    assert dq_report_due(utc(2026, 11, 26, 11, 59), noon, None) is None
    assert dq_report_due(utc(2026, 11, 26, 12, 0), noon, None) == THU
    assert dq_report_due(utc(2026, 11, 26, 18), noon, THU) is None
    # BST: 11:00 UTC is 12:00 in London
    assert dq_report_due(utc(2026, 6, 25, 11, 0), noon, None) == dt.date(2026, 6, 25)


def test_the_scheduler_runs_the_dq_report_daily_and_retries_a_failure_later():
    now = {"t": utc(2026, 11, 26, 11)}
    calls: list[dt.date] = []
    failing = {"on": True}

    def report(lake_uri: str, day: dt.date) -> None:
        calls.append(day)
        if failing["on"]:
            raise RuntimeError("lake unavailable")

    ops = SchedulerOps("lake", clock=lambda: now["t"], run_report=report, dq_retry_s=0.0)
    ops.tick()
    assert calls == []  # before 12:00
    now["t"] = utc(2026, 11, 26, 12, 5)
    ops.tick()
    assert calls == [THU] and ops.last_dq_day is None  # failed: not done
    failing["on"] = False
    ops.tick()
    ops.tick()
    assert calls == [THU, THU] and ops.last_dq_day == THU  # retried once, then done for the day
    now["t"] = utc(2026, 11, 27, 12, 1)
    ops.tick()
    assert calls == [THU, THU, dt.date(2026, 11, 27)]


def test_the_real_dq_report_runs_from_the_scheduler_and_sets_its_metrics(tmp_path: Path):
    from tests.lake_factory import write_register

    lake = str(tmp_path / "lake")
    write_register(lake, [("100001", "3732001", "Primary")])
    metrics.DQ_LAST_REPORT_TIMESTAMP.set(0)
    ops = SchedulerOps(lake, clock=lambda: utc(2026, 11, 26, 12, 30))
    ops.tick()
    assert ops.last_dq_day == THU
    assert gauge(metrics.DQ_LAST_REPORT_TIMESTAMP) > 0
    # one open primary school sent nothing on a Thursday
    assert metrics.DQ_EXCEPTIONS_LAST_REPORT.labels(check="missing_extract")._value.get() == 1


# --- opt-out purges pending -------------------------------------------------------------------------------------


def state(urn: str, purge: bool, effective: dt.datetime, status: str = "opted_out"):
    return SimpleNamespace(urn=urn, status=status, effective_at=effective, purge=purge)


def test_purges_to_verify_are_opt_outs_in_force_with_purge_not_yet_verified():
    now = utc(2026, 11, 26, 12)
    earlier, later = utc(2026, 11, 25), utc(2026, 11, 27)
    states = {
        "100001": state("100001", True, earlier),
        "100002": state("100002", False, earlier),  # no purge asked
        "100003": state("100003", True, later),  # not in force yet
        "100004": state("100004", True, earlier),  # verified for this opt-out
        "100005": state("100005", True, earlier, status="opted_in"),
    }
    verified = {"100004": earlier, "100001": utc(2026, 1, 1)}  # 100001's verification was for an older opt-out
    assert purges_to_verify(states, now, verified) == {"100001": earlier}


def test_pending_purges_gauge_counts_unverified_schools_and_verified_ones_are_not_rescanned():
    effective = utc(2026, 11, 25)
    states = {"100001": state("100001", True, effective), "100002": state("100002", True, effective)}
    destroyed = {"100001": True, "100002": False}
    scanned: list[str] = []

    def verify(urn: str) -> bool:
        scanned.append(urn)
        return destroyed[urn]

    ops = SchedulerOps("lake", dq_at=None, clock=lambda: utc(2026, 11, 26, 12), read_optout_states=lambda: states,
                       verify=verify, purge_check_every_s=0.0)
    ops.tick()
    assert gauge(metrics.OPTOUT_PURGES_PENDING) == 1
    destroyed["100002"] = True
    ops.tick()
    assert gauge(metrics.OPTOUT_PURGES_PENDING) == 0
    assert scanned == ["100001", "100002", "100002"]


def test_purge_checks_wait_for_their_interval_and_a_failed_read_keeps_the_last_value():
    reads: list[int] = []

    def read_states():
        reads.append(1)
        raise TimeoutError("opt-outs topic unreachable")

    metrics.OPTOUT_PURGES_PENDING.set(2)
    ops = SchedulerOps("lake", dq_at=None, read_optout_states=read_states, purge_check_every_s=3600.0)
    ops.tick()
    ops.tick()
    assert len(reads) == 1
    assert gauge(metrics.OPTOUT_PURGES_PENDING) == 2


# --- the command ------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from attendance import cli as attendance_cli
    from attendance.settings import get_settings

    monkeypatch.setenv("ATTENDANCE_LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("ATTENDANCE_METRICS_TEXTFILE", str(tmp_path / "scheduler.prom"))
    get_settings.cache_clear()
    yield attendance_cli.main
    get_settings.cache_clear()


def test_scheduler_once_without_releases_runs_and_exports_its_gauges(cli, tmp_path: Path):
    result = CliRunner().invoke(cli, ["scheduler", "--once", "--optouts", "none", "--dq-at", "off"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "scheduler.prom").read_text()
    assert "attendance_release_scheduled_timestamp_seconds 0.0" in text
    assert "attendance_optout_purges_pending" in text and "attendance_release_status" in text
    assert "attendance_messages_consumed_total" not in text  # only the scheduler's own families


def test_scheduler_rejects_a_bad_dq_time_in_one_line(cli):
    result = CliRunner().invoke(cli, ["scheduler", "--once", "--optouts", "none", "--dq-at", "noon"])
    assert result.exit_code == 2
    assert "--dq-at must be a time as HH:MM" in result.output and "Traceback" not in result.output
