"""Release on time: embargo, 09:30 London, verification, metrics, alerts, pre-release access, scheduler."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest

from attendance import metrics
from official_stats import incremental, release, synthetic
from official_stats.config import StatsConfig

RELEASE = dt.date(2026, 11, 26)  # a Thursday (GMT: 09:30 London = 09:30 UTC)
AT = dt.datetime(2026, 11, 26, 9, 30, tzinfo=dt.UTC)
CONFIG = StatsConfig()


@pytest.fixture(scope="module")
def aggregated_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("release_lake")
    roll = synthetic.make_roll(24, 20, 2026, la_codes=["830", "831", "201", "373"])
    synthetic.write_reference(str(lake), roll)
    for offset in range(5):
        sessions, extracts = synthetic.make_day(roll, dt.date(2026, 11, 16) + dt.timedelta(days=offset))
        synthetic.append_day(str(lake), sessions, extracts)
    incremental.run_aggregation(str(lake))
    return lake


@pytest.fixture
def lake(aggregated_lake: Path, tmp_path: Path) -> str:
    """A fresh copy of the aggregated lake per test (release state is per test)."""
    import shutil

    target = tmp_path / "lake"
    shutil.copytree(aggregated_lake, target)
    return str(target)


def gauge(metric) -> float:
    return metric._value.get()


def test_release_time_is_0930_london_on_weekdays_only() -> None:
    assert release.release_at(dt.date(2026, 11, 26), CONFIG) == dt.datetime(2026, 11, 26, 9, 30, tzinfo=dt.UTC)
    assert release.release_at(dt.date(2026, 6, 25), CONFIG) == dt.datetime(2026, 6, 25, 8, 30, tzinfo=dt.UTC)  # BST
    with pytest.raises(release.ReleaseError, match="Saturday"):
        release.release_at(dt.date(2026, 11, 28), CONFIG)


def test_prepare_puts_screened_files_and_a_manifest_under_embargo(lake: str) -> None:
    outcome = release.prepare(lake, RELEASE, AT - dt.timedelta(hours=30), config=CONFIG)
    paths = release.ReleasePaths.for_lake(lake)
    assert outcome.status == release.EMBARGOED and outcome.directory == paths.embargo(RELEASE)
    manifest = json.loads((paths.embargo(RELEASE) / "manifest.json").read_text())
    names = {f["name"] for f in manifest["files"]}
    assert {"attendance_ytd.csv", "attendance_ytd.meta.csv", "attendance_daily_weekly.csv"} <= names
    assert manifest["data_end"] == "2026-11-20"
    assert release.verify(paths.embargo(RELEASE)) == []
    assert not paths.public(RELEASE).exists()
    assert gauge(metrics.RELEASE_STATUS) == release.EMBARGOED
    # idempotent
    again = release.prepare(lake, RELEASE, AT - dt.timedelta(hours=29), config=CONFIG)
    assert again.messages == ["already prepared"]
    assert json.loads((paths.embargo(RELEASE) / "manifest.json").read_text()) == manifest


def test_publishing_before_release_time_is_refused(lake: str) -> None:
    release.prepare(lake, RELEASE, AT - dt.timedelta(hours=30), config=CONFIG)
    with pytest.raises(release.ReleaseError, match="embargoed until"):
        release.publish(lake, RELEASE, AT - dt.timedelta(seconds=1), config=CONFIG)
    assert not release.ReleasePaths.for_lake(lake).public(RELEASE).exists()


def test_publish_at_release_time_makes_files_public_verified_and_sets_metrics(lake: str) -> None:
    release.prepare(lake, RELEASE, AT - dt.timedelta(hours=30), config=CONFIG)
    outcome = release.publish(lake, RELEASE, AT, config=CONFIG)
    paths = release.ReleasePaths.for_lake(lake)
    assert outcome.status == release.PUBLISHED
    assert release.verify(paths.public(RELEASE)) == []
    assert not paths.embargo(RELEASE).exists()
    assert gauge(metrics.RELEASE_STATUS) == release.PUBLISHED
    assert gauge(metrics.LAST_PUBLICATION_TIMESTAMP) == AT.timestamp()
    # re-running is idempotent and does not move the publication time
    again = release.publish(lake, RELEASE, AT + dt.timedelta(hours=1), config=CONFIG)
    assert again.messages == ["already published"]
    assert gauge(metrics.LAST_PUBLICATION_TIMESTAMP) == AT.timestamp()
    assert release.prepare(lake, RELEASE, AT + dt.timedelta(hours=2), config=CONFIG).messages == ["already published"]


def test_late_publication_raises_the_late_alert(lake: str) -> None:
    release.prepare(lake, RELEASE, AT - dt.timedelta(hours=1), config=CONFIG)
    outcome = release.publish(lake, RELEASE, AT + dt.timedelta(minutes=20), config=CONFIG)
    assert outcome.status == release.LATE
    assert gauge(metrics.RELEASE_STATUS) == release.LATE
    alerts = release.ReleasePaths.for_lake(lake).alerts.read_text().splitlines()
    assert json.loads(alerts[-1])["status"] == "late"


def test_a_tampered_embargo_copy_is_not_published_and_is_reported_incomplete(lake: str) -> None:
    release.prepare(lake, RELEASE, AT - dt.timedelta(hours=30), config=CONFIG)
    paths = release.ReleasePaths.for_lake(lake)
    (paths.embargo(RELEASE) / "attendance_ytd.csv").write_text("changed\n")
    outcome = release.publish(lake, RELEASE, AT, config=CONFIG)
    assert outcome.status == release.INCOMPLETE
    assert "attendance_ytd.csv differs from the manifest" in outcome.messages
    assert not paths.public(RELEASE).exists()
    assert gauge(metrics.RELEASE_STATUS) == release.INCOMPLETE
    assert json.loads(paths.alerts.read_text().splitlines()[-1])["status"] == "incomplete"


def test_nothing_prepared_at_release_time_is_incomplete(lake: str) -> None:
    outcome = release.publish(lake, RELEASE, AT, config=CONFIG)
    assert outcome.status == release.INCOMPLETE


def test_pre_release_access_window_and_audit_log(lake: str) -> None:
    release.grant_access(lake, RELEASE, "minister.office", release.PRE_RELEASE)
    release.grant_access(lake, RELEASE, "statistician", release.PRODUCER)
    release.grant_access(lake, RELEASE, "statistician", release.PRODUCER)  # idempotent
    day_before = AT - dt.timedelta(hours=24)
    cases = [
        ("minister.office", day_before - dt.timedelta(minutes=1), False),
        ("minister.office", day_before, True),
        ("minister.office", AT - dt.timedelta(minutes=1), True),
        ("statistician", AT - dt.timedelta(days=3), True),
        ("someone.else", AT - dt.timedelta(minutes=1), False),
        ("someone.else", AT, True),  # public from release time
    ]
    for user, now, allowed in cases:
        assert release.can_view_embargoed(user, RELEASE, now, lake_uri=lake, config=CONFIG) is allowed, (
            user,
            now,
        )
    log_lines = [json.loads(line) for line in release.ReleasePaths.for_lake(lake).access_log.read_text().splitlines()]
    assert [(e["user"], e["allowed"]) for e in log_lines] == [(u, a) for u, _, a in cases]
    assert (
        release.read_access_list(release.ReleasePaths.for_lake(lake).access_list).count(
            {"release_date": "2026-11-26", "user": "statistician", "role": "producer"}
        )
        == 1
    )


def test_embargoed_file_reads_are_enforced(lake: str) -> None:
    release.prepare(lake, RELEASE, AT - dt.timedelta(hours=30), config=CONFIG)
    release.grant_access(lake, RELEASE, "minister.office")
    with pytest.raises(PermissionError):
        release.open_embargoed(
            "minister.office",
            RELEASE,
            "attendance_ytd.csv",
            AT - dt.timedelta(hours=25),
            lake_uri=lake,
            config=CONFIG,
        )
    content = release.open_embargoed(
        "minister.office",
        RELEASE,
        "attendance_ytd.csv",
        AT - dt.timedelta(hours=2),
        lake_uri=lake,
        config=CONFIG,
    )
    assert content.startswith(b"time_period,time_identifier")


def test_scheduler_prepares_then_publishes_on_a_fake_clock(lake: str) -> None:
    clock = {"now": AT - dt.timedelta(hours=30)}
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += dt.timedelta(hours=1)

    scheduler = release.ReleaseScheduler(lake, [RELEASE], clock=lambda: clock["now"], sleep=fake_sleep, config=CONFIG)
    asyncio.run(scheduler.run(max_ticks=100))
    statuses = [(e.status, e.messages[0]) for e in scheduler.events]
    assert statuses[0][0] == release.EMBARGOED  # prepared 24 hours ahead
    assert statuses[-1][0] == release.PUBLISHED
    assert scheduler.pending() == []
    published_at = scheduler.done[RELEASE]
    assert published_at.directory == release.ReleasePaths.for_lake(lake).public(RELEASE)
    assert len(slept) == 30  # woke every tick until 09:30 (hourly fake ticks), no real waiting
