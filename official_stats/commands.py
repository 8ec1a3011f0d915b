"""``attendance aggregate | publish | release | scheduler | screen | pre-release-access``."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

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


@click.command("scheduler")
@click.option("--release", "releases", multiple=True, required=True, help="A release date (repeatable).")
@click.option("--once", is_flag=True, help="Run one pass and exit.")
@click.option(
    "--aggregate/--no-aggregate",
    "aggregate_first",
    default=True,
    show_default=True,
    help="Run an incremental aggregation before preparing a release.",
)
@click.option("--optouts", default="kafka", show_default=True, help=_OPTOUTS_HELP)
def scheduler(releases: tuple[str, ...], once: bool, aggregate_first: bool, optouts: str) -> None:
    """Prepare releases under embargo and publish them at 09:30 (Europe/London)."""
    from official_stats import release as rel
    from official_stats.incremental import run_aggregation

    lake_uri = get_settings().lake_uri

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
        lake_uri, [_date(r, "--release") for r in releases], before_prepare=before_prepare, on_tick=heartbeat
    )
    try:
        if once:
            for outcome in loop.tick():
                click.echo(f"{outcome.release}: status {outcome.status}: {'; '.join(outcome.messages)}")
            _export_metrics("attendance_scheduler", RELEASE_METRICS)
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
