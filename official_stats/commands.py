"""``attendance aggregate | publish | release | scheduler | screen | pre-release-access``."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import pyarrow as pa

from attendance.errors import UserFacingError
from attendance.settings import get_settings
from official_stats import contracts as _contracts  # noqa: F401  (registers the statistics tables)
from official_stats.config import get_stats_config

AGGREGATE_METRICS = (
    "attendance_last_successful_aggregation",
    "attendance_schools_submitted",
    "attendance_schools_expected",
)
RELEASE_METRICS = ("attendance_release_status", "attendance_last_successful_publication")
SCHEDULER_METRICS = (*RELEASE_METRICS, "attendance_release_scheduled", "attendance_last_successful_aggregation",
                     "attendance_optout_purges_pending", "attendance_dq_")

log = logging.getLogger(__name__)


def _export_metrics(job: str, prefixes: tuple[str, ...]) -> None:
    """Run-once commands export their own metrics (textfile / Pushgateway, when configured)."""
    from attendance.http import export_run_once_metrics

    for line in export_run_once_metrics(job, prefixes):
        click.echo(line)


def _date(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UserFacingError(f"{name} must be a date as YYYY-MM-DD, not {value!r}") from None


def load_optouts(source: str) -> pa.Table | None:
    """The opt-outs list (``urn, status, effective_at``) from ``kafka`` (the compacted topic), a Parquet
    or CSV file, or ``none``."""
    if source == "none":
        return None
    if source == "kafka":
        from attendance.broker import bootstrap_servers
        from streams.optouts import read_optouts

        settings = get_settings()
        try:
            states = read_optouts(bootstrap_servers(settings), settings.topic_optouts)
        except UserFacingError:
            raise
        except Exception as exc:
            raise UserFacingError(
                f"could not read the opt-outs topic ({type(exc).__name__}: {exc}); "
                "pass --optouts FILE or --optouts none"
            ) from None
        return pa.table(
            {
                "urn": pa.array([s.urn for s in states.values()], pa.string()),
                "status": pa.array([s.status for s in states.values()], pa.string()),
                "effective_at": pa.array([s.effective_at for s in states.values()], pa.timestamp("us", tz="UTC")),
            }
        )
    path = Path(source)
    if not path.is_file():
        raise UserFacingError(f"--optouts: no file {path} (use kafka, none, or a .parquet/.csv file)")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow.csv as pacsv

        return pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={
                    "urn": pa.string(),
                    "status": pa.string(),
                    "effective_at": pa.timestamp("us", tz="UTC"),
                }
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserFacingError(f"--optouts {path}: cannot read it ({exc})") from None


_OPTOUTS_HELP = (
    "Opt-outs list: 'kafka' (the compacted topic), a .parquet/.csv file (urn,status,effective_at), or 'none'."
)


@click.command("aggregate")
@click.option("--date", "day", default=None, help="Recompute this register day (YYYY-MM-DD) and its periods only.")
@click.option("--full", is_flag=True, help="Recompute every day and rebuild the per-pupil running totals.")
@click.option("--optouts", default="kafka", show_default=True, help=_OPTOUTS_HELP)
def aggregate(day: str | None, full: bool, optouts: str) -> None:
    """Aggregate attendance into the statistics tables (only days touched since the last run)."""
    from official_stats.incremental import run_aggregation

    if day and full:
        raise UserFacingError("use either --date or --full, not both")
    report = run_aggregation(
        get_settings().lake_uri,
        optouts=load_optouts(optouts),
        day=_date(day, "--date") if day else None,
        full=full,
    )
    click.echo(report.summary())
    _export_metrics("attendance_aggregate", AGGREGATE_METRICS)
    if report.excluded_marks:
        click.echo("marks not counted: " + ", ".join(f"{k} {v}" for k, v in sorted(report.excluded_marks.items()) if v))


@click.command("publish")
@click.option("--release", "release_date", required=True, help="Release date (YYYY-MM-DD, a weekday).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the EES files here instead of the embargo directory of the published zone.",
)
@click.option(
    "--now",
    "immediately",
    is_flag=True,
    help="Ad hoc publication: include data up to and including the release date and, without --out, make "
    "the files public at once instead of waiting for 09:30.",
)
def publish(release_date: str, out: Path | None, immediately: bool) -> None:
    """Write the release's EES CSV and .meta.csv files (disclosure-controlled, screened)."""
    from official_stats import release as rel
    from official_stats.publication import build_release, write_release

    release = _date(release_date, "--release")
    lake_uri = get_settings().lake_uri
    if out is not None:
        built = build_release(lake_uri, release, include_release_date=immediately)
        for path in write_release(built, out):
            click.echo(path)
        click.echo(
            f"data to {built.data_end}; rows suppressed {built.suppressed_rows} "
            f"({built.secondary_suppressed_rows} secondary)"
        )
        return
    now = rel.utc_now()
    outcome = rel.prepare(lake_uri, release, now, include_release_date=immediately)
    click.echo(f"{release}: {'; '.join(outcome.messages)} -> {outcome.directory}")
    if immediately:
        outcome = rel.publish(lake_uri, release, now, not_before_release_time=False)
        click.echo(f"{release}: {'; '.join(outcome.messages)} -> {outcome.directory}")
    _export_metrics("attendance_publish", RELEASE_METRICS)


@click.command("release")
@click.option("--release", "release_date", required=True, help="Release date (YYYY-MM-DD).")
def release_now(release_date: str) -> None:
    """Make a prepared release public now (only at or after its release time), and verify it."""
    from official_stats import release as rel

    outcome = rel.publish(get_settings().lake_uri, _date(release_date, "--release"), rel.utc_now())
    click.echo(f"{outcome.release}: {'; '.join(outcome.messages)} -> {outcome.directory}")
    _export_metrics("attendance_release", RELEASE_METRICS)
    if outcome.status == rel.INCOMPLETE:
        raise UserFacingError("the release is incomplete (see alerts.jsonl in the published zone)")


# --- the scheduler's operational jobs (besides releases) ----------------------------------------------------


def dq_report_due(now: dt.datetime, at: dt.time, last_day: dt.date | None, timezone: str = "Europe/London"
                  ) -> dt.date | None:
    """The UK date whose data-quality report is due at ``now`` (once a day, from ``at`` UK time), or None."""
    local = now.astimezone(ZoneInfo(timezone))
    if local.time() < at or local.date() == last_day:
        return None
    return local.date()


def purges_to_verify(states: Mapping[str, Any], now: dt.datetime, verified: Mapping[str, dt.datetime]
                     ) -> dict[str, dt.datetime]:
    """Schools whose opt-out asked for a purge (in force at ``now``) and whose destruction has not been
    verified for that opt-out yet: URN -> the opt-out's effective time."""
    from streams.optouts import is_opted_out

    return {urn: state.effective_at for urn, state in states.items()
            if state.purge and is_opted_out(state, now) and verified.get(urn) != state.effective_at}


@dataclass
class SchedulerOps:
    """What the scheduler does for operations on every tick, each job cheap unless due:

    - the daily data-quality report (``dq.report.run_report``) for the UK date, from ``dq_at`` UK time;
    - ``attendance_optout_purges_pending``: opt-outs with ``purge`` whose school is not verified destroyed
      (``storage.destruction.verify_destroyed``). Verification reads every Parquet file of every pupil-level
      table, so it runs at most every ``purge_check_every_s`` per pending school, and a school verified
      destroyed for its opt-out is not checked again.

    ``load_last_times`` sets the last aggregation and publication times from the lake at start-up. With
    ``background`` (the service), the due jobs run in a thread, one run at a time, so a long report or
    verification delays neither a 09:30 publication nor the heartbeat.
    """

    lake_uri: str
    dq_at: dt.time | None = dt.time(12, 0)
    purge_check_every_s: float = 900.0
    read_optout_states: Callable[[], Mapping[str, Any]] | None = None  # None: purges not checked
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    run_report: Callable[[str, dt.date], Any] | None = None  # default dq.report.run_report
    verify: Callable[[str], bool] | None = None  # default: storage.destruction.verify_destroyed(...).destroyed
    dq_retry_s: float = 600.0
    background: bool = False
    last_dq_day: dt.date | None = None
    verified: dict[str, dt.datetime] = field(default_factory=dict)
    _last_purge_check: float = field(default=float("-inf"), init=False)
    _last_dq_failure: float = field(default=float("-inf"), init=False)
    _job: threading.Thread | None = field(default=None, init=False)

    def load_last_times(self) -> None:
        from attendance import metrics
        from official_stats import release as rel
        from official_stats.incremental import Lake, last_run

        try:
            run = last_run(Lake(self.lake_uri))
            if run is not None:
                metrics.LAST_AGGREGATION_TIMESTAMP.set(run["run_at"].timestamp())
        except Exception as exc:  # noqa: BLE001 - a gauge left at 0 must not stop the scheduler
            log.warning("could not read the last aggregation time: %s", exc)
        try:
            published = rel.last_publication_time(self.lake_uri)
            if published is not None:
                metrics.LAST_PUBLICATION_TIMESTAMP.set(published.timestamp())
        except UserFacingError as exc:  # a lake the release code cannot use (not local)
            log.warning("could not read the last publication time: %s", exc)

    def tick(self) -> None:
        if self._job is not None and self._job.is_alive():
            return  # the previous run is still going
        if not self.background:
            self.run_due(self.clock())
            return
        self._job = threading.Thread(target=self.run_due, args=(self.clock(),), name="scheduler-ops", daemon=True)
        self._job.start()

    def run_due(self, now: dt.datetime) -> None:
        self.daily_dq_report(now)
        self.check_purges(now)

    def daily_dq_report(self, now: dt.datetime) -> None:
        day = dq_report_due(now, self.dq_at, self.last_dq_day) if self.dq_at is not None else None
        if day is None or time.monotonic() - self._last_dq_failure < self.dq_retry_s:
            return
        run_report = self.run_report
        if run_report is None:
            from dq.report import run_report
        try:
            run_report(self.lake_uri, day)
        except Exception as exc:  # noqa: BLE001 - logged and retried later; the releases go on
            self._last_dq_failure = time.monotonic()
            log.error("data-quality report for %s failed (retrying in %.0f s): %s", day, self.dq_retry_s, exc)
            return
        self.last_dq_day = day
        log.info("data-quality report for %s done", day)

    def check_purges(self, now: dt.datetime) -> None:
        from attendance import metrics

        if self.read_optout_states is None or time.monotonic() - self._last_purge_check < self.purge_check_every_s:
            return
        self._last_purge_check = time.monotonic()
        try:
            due = purges_to_verify(self.read_optout_states(), now, self.verified)
            pending = 0
            for urn, since in due.items():
                if self._destroyed(urn):
                    self.verified[urn] = since
                else:
                    pending += 1
        except Exception as exc:  # noqa: BLE001 - keep the last value; try again next interval
            log.warning("could not check opt-out purges: %s", exc)
            return
        metrics.OPTOUT_PURGES_PENDING.set(pending)

    def _destroyed(self, urn: str) -> bool:
        if self.verify is not None:
            return self.verify(urn)
        from storage.destruction import verify_destroyed
        from storage.lake import storage_options

        return verify_destroyed(urn, self.lake_uri, storage_options(lake_uri=self.lake_uri)).destroyed


def _kafka_optout_states() -> Mapping[str, Any]:
    from attendance.broker import bootstrap_servers
    from streams.optouts import read_optouts

    settings = get_settings()
    return read_optouts(bootstrap_servers(settings), settings.topic_optouts)


def _time_of_day(value: str | None, name: str) -> dt.time | None:
    if value is None or value == "off":
        return None
    try:
        return dt.time.fromisoformat(value)
    except ValueError:
        raise UserFacingError(f"{name} must be a time as HH:MM (UK) or 'off', not {value!r}") from None


@click.command("scheduler")
@click.option("--release", "releases", multiple=True, help="A release date (repeatable); none: only the daily jobs.")
@click.option("--once", is_flag=True, help="Run one pass and exit.")
@click.option(
    "--aggregate/--no-aggregate",
    "aggregate_first",
    default=True,
    show_default=True,
    help="Run an incremental aggregation before preparing a release.",
)
@click.option("--optouts", default="kafka", show_default=True, help=_OPTOUTS_HELP)
@click.option("--dq-at", default="12:00", show_default=True,
              help="UK time of the daily data-quality report (for that day), or 'off'.")
def scheduler(releases: tuple[str, ...], once: bool, aggregate_first: bool, optouts: str, dq_at: str) -> None:
    """Prepare releases under embargo and publish them at 09:30 (Europe/London); run the daily data-quality
    report; export release, aggregation, publication and opt-out purge metrics."""
    from official_stats import release as rel
    from official_stats.incremental import run_aggregation

    lake_uri = get_settings().lake_uri
    ops = SchedulerOps(lake_uri, dq_at=_time_of_day(dq_at, "--dq-at"), background=not once,
                       read_optout_states=_kafka_optout_states if optouts == "kafka" else None)
    ops.load_last_times()

    def before_prepare() -> None:
        if aggregate_first:
            run_aggregation(lake_uri, optouts=load_optouts(optouts))

    settings = get_settings()
    server, heartbeat = None, None
    if settings.metrics_port and not once:
        from attendance.http import Readiness, start_http_server

        readiness = Readiness(needs_partitions=False, heartbeat_timeout_s=4 * get_stats_config().scheduler_tick_seconds)
        server, heartbeat = start_http_server(settings.metrics_port, readiness), readiness.heartbeat
    loop = rel.ReleaseScheduler(
        lake_uri, [_date(r, "--release") for r in releases], before_prepare=before_prepare, on_tick=heartbeat,
        after_tick=ops.tick, keep_running=not once,
    )
    try:
        if once:
            for outcome in loop.tick():
                click.echo(f"{outcome.release}: status {outcome.status}: {'; '.join(outcome.messages)}")
            _export_metrics("attendance_scheduler", SCHEDULER_METRICS)
            return
        asyncio.run(loop.run())
    finally:
        if server is not None:
            server.stop()


@click.command("screen")
@click.argument("data_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("meta_csv", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def screen(data_csv: Path, meta_csv: Path | None) -> None:
    """Run the EES screener checks (a port of DfE's eesyscreener) on a data file and its .meta.csv."""
    from official_stats.screener import screen_files

    meta_csv = meta_csv or data_csv.with_name(data_csv.name.replace(".csv", ".meta.csv"))
    if not meta_csv.is_file():
        raise UserFacingError(f"no meta file {meta_csv}")
    result = screen_files(data_csv, meta_csv)
    for item in result.results:
        if item.result != "PASS":
            click.echo(f"{item.result:7} {item.stage}: {item.check}: {item.message}")
    click.echo(
        f"{'PASSED' if result.passed else 'FAILED'}: {len(result.results)} checks, "
        f"{len(result.failures)} failed, {len(result.warnings)} warnings"
    )
    if not result.passed:
        raise SystemExit(1)


@click.command("pre-release-access")
@click.option("--release", "release_date", required=True, help="Release date (YYYY-MM-DD).")
@click.option("--user", required=True, help="User name to grant.")
@click.option("--role", type=click.Choice(["pre_release", "producer"]), default="pre_release", show_default=True)
def pre_release_access(release_date: str, user: str, role: str) -> None:
    """Add a user to a release's pre-release access list."""
    from official_stats.release import grant_access

    grant_access(get_settings().lake_uri, _date(release_date, "--release"), user, role)
    click.echo(f"{user} ({role}) may see release {release_date} under embargo")


COMMANDS: list[click.Command | click.Group] = [
    aggregate,
    publish,
    release_now,
    scheduler,
    screen,
    pre_release_access,
]
