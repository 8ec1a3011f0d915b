"""The aggregation run: recompute only what new or amended marks touched, recorded with Delta versions.

A run (``attendance aggregate``):

1. finds the register days to recompute:

   - days whose ``attendance_sessions`` partitions changed since the version the last run processed
     (stored in ``stats_aggregation_runs``), read from the Delta log between the two versions: the change
     data feed when the table has ``delta.enableChangeDataFeed=true``, else the commit files'
     add/remove actions (their ``date`` partition values), else (no local log) a diff of the two
     versions' file lists. Cost follows the commits since the last run, not the table's history;
   - days held back because their extract was not complete, whose extract is now complete
     (``stats_pending_extracts``);
   - processed days on or after the effective date of an opt-out that changed since the last run;

2. recomputes each day from the sessions partition pinned at the version read: pupil days
   (``stats_pupil_day``), school days (``stats_school_daily``), the day's exact views
   (``stats_attendance_views_unsuppressed``, school zone);

3. brings the running per-enrolment term totals (``stats_pupil_period_totals``) up to date from
   ``stats_pupil_day``'s own Delta log: for each day changed since the version the totals were built from
   (kept as the Delta app transaction ``stats_pupil_day`` on the totals table), subtract the day's old rows
   and add its new ones, in one MERGE that records the new version atomically. A crash between steps
   leaves the totals at a version they can be brought up from: the next run repeats the difference;

4. recomputes the Week rows of the touched weeks, the Term rows of the touched terms and the Year-to-date
   rows of the touched academic years from the stored Day rows (sums, and means for enrolments and
   ``num_schools``) and persistent absence from the running totals;

5. applies disclosure control to every touched academic year and rewrites its partition of the
   LA-and-above table ``stats_attendance_views``: the rows a release as of the latest day would publish
   (:func:`official_stats.ees.controlled_rows`: primary and secondary suppression over all the year's rows
   together, suppressed values stored as null). Suppression of one day can depend on any other day of the
   year (weeks, terms and the year to date are sums of days), so the whole year is redone; the exact
   figures never leave the school zone.

``--full`` recomputes every day and rebuilds the running totals; ``--date D`` recomputes one day (and its
week, term and year) without moving the processed sessions version.

For the change data feed path the lead must enable it on the sink's table:
``delta.enableChangeDataFeed = true`` on ``attendance_sessions`` (``DeltaTable.alter.set_table_properties``);
without it the log path is used, which is exact for partition-level changes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from attendance.errors import UserFacingError
from official_stats import contracts, ees, periods, scope, views
from official_stats.config import StatsConfig, get_stats_config
from official_stats.disclosure import DisclosureRules
from official_stats.measures import COUNT_COLUMNS
from storage.tables import TableContract, Zone, table

log = logging.getLogger(__name__)

PUPIL_DAY_APP_ID = "stats_pupil_day"
_SESSION_COLUMNS = ["urn", "upn", "date", "session", "code", "extract_id"]
_PUPIL_COLUMNS = ["urn", "upn", "date_of_birth", "nc_year_group", "fsm_eligible", "sen_provision"]
_SCHOOL_COLUMNS = [
    "urn",
    "laestab",
    "school_name",
    "old_la_code",
    "new_la_code",
    "la_name",
    "region_code",
    "region_name",
    "status",
    "attendance_phase",
    "open_date",
    "close_date",
]


@dataclass
class AggregationReport:
    run_id: str
    mode: str
    sessions_version: int | None
    dates_recomputed: list[dt.date]
    weeks_recomputed: list[dt.date] = field(default_factory=list)
    academic_years_recomputed: list[int] = field(default_factory=list)
    excluded_marks: dict[str, int] = field(default_factory=dict)
    pending_extracts: int = 0
    pupil_totals_version: int | None = None
    #: Academic years whose disclosure-controlled rows (LA-and-above zone) were rewritten.
    academic_years_controlled: list[int] = field(default_factory=list)
    duration_seconds: float = 0.0
    #: Wall time per step (find_days, reference, days, pupil_totals, periods, disclosure, bookkeeping).
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        days = ", ".join(d.isoformat() for d in self.dates_recomputed[:10])
        more = f" (+{len(self.dates_recomputed) - 10} more)" if len(self.dates_recomputed) > 10 else ""
        return (
            f"{self.mode} run {self.run_id[:8]}: {len(self.dates_recomputed)} day(s) "
            f"recomputed{': ' if days else ''}"
            f"{days}{more}; {len(self.weeks_recomputed)} week(s); academic years "
            f"{', '.join(periods.academic_year_code(y) for y in self.academic_years_recomputed) or '-'}; "
            f"disclosure control on "
            f"{', '.join(periods.academic_year_code(y) for y in self.academic_years_controlled) or '-'}; "
            f"{self.pending_extracts} extract-day(s) pending; {self.duration_seconds:.1f}s"
        )


# --- lake access (thin edge) ------------------------------------------------------------------------------


class Lake:
    """Where the tables are, and the storage options to reach them."""

    def __init__(self, lake_uri: str, storage_options: dict[str, str] | None = None):
        self.uri = lake_uri
        if storage_options is None:
            from storage.lake import storage_options as options_for

            storage_options = options_for(lake_uri=lake_uri)
        self.options = dict(storage_options)

    def path(self, contract: TableContract) -> str:
        return contract.path(self.uri)

    def open(self, contract: TableContract, version: int | None = None) -> DeltaTable | None:
        try:
            return DeltaTable(self.path(contract), version=version, storage_options=self.options)
        except TableNotFoundError:
            return None

    def ensure(self, contract: TableContract) -> DeltaTable:
        from storage.lake import ensure_table

        return ensure_table(contract, self.uri, self.options)

    def read(
        self,
        contract: TableContract,
        columns: list[str] | None = None,
        filter: ds.Expression | None = None,
        version: int | None = None,
    ) -> pl.DataFrame:
        delta = self.open(contract, version)
        if delta is None:
            empty = contract.schema.empty_table()
            return pl.from_arrow(empty.select(columns) if columns else empty)  # type: ignore[return-value]
        dataset = delta.to_pyarrow_dataset()
        try:
            return pl.from_arrow(dataset.to_table(columns=columns, filter=filter))  # type: ignore[return-value]
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
            # Files rewritten by a delta-rs MERGE store strings as string_view, which pyarrow cannot compare
            # with a string literal while pruning (storage.lake.read_table): filter after reading instead.
            # Filters on string columns are written as ``ds.field(c).cast(pa.string())`` to avoid this.
            log.info("%s: filter applied after reading (string_view files)", contract.name)
            read = dataset.to_table(filter=None).filter(filter)
            return pl.from_arrow(read.select(columns) if columns else read)  # type: ignore[return-value]

    def replace(
        self,
        contract: TableContract,
        frame: pl.DataFrame,
        predicate: str,
        commit_properties: CommitProperties | None = None,
    ) -> None:
        """Replace the rows matching ``predicate`` (partition columns only) with ``frame``."""
        delta = self.ensure(contract)
        if frame.height == 0:
            delta.delete(predicate)
            return
        write_deltalake(
            delta,
            to_arrow(frame, contract),
            mode="overwrite",
            predicate=predicate,
            partition_by=list(contract.partition_by) or None,
            storage_options=self.options,
            commit_properties=commit_properties,
        )

    def append(self, contract: TableContract, frame: pl.DataFrame) -> None:
        delta = self.ensure(contract)
        write_deltalake(
            delta,
            to_arrow(frame, contract),
            mode="append",
            partition_by=list(contract.partition_by) or None,
            storage_options=self.options,
        )


def to_arrow(frame: pl.DataFrame, contract: TableContract) -> pa.Table:
    """``frame`` with exactly the contract's columns and types."""
    from storage.lake import conform

    arrow = frame.select([c for c in contract.schema.names if c in frame.columns]).to_arrow()
    return conform(arrow, contract)


def _sql_date(day: dt.date) -> str:
    return f"'{day.isoformat()}'"


def _date_filter(day: dt.date) -> ds.Expression:
    return ds.field("date") == pa.scalar(day, pa.date32())


# --- what changed --------------------------------------------------------------------------------------


def _partition_dates(values: Iterable[object]) -> set[dt.date]:
    out: set[dt.date] = set()
    for value in values:
        if value is None:
            continue
        out.add(value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)))
    return out


def _dates_from_log_files(path: str, first: int, last: int) -> set[dt.date]:
    """``date`` partition values of add/remove actions in commits ``first..last`` (local tables)."""
    log_dir = Path(path) / "_delta_log"
    dates: set[dt.date] = set()
    for version in range(first, last + 1):
        commit = log_dir / f"{version:020d}.json"
        with commit.open("r", encoding="utf-8") as handle:  # FileNotFoundError: log cleaned up -> caller falls back
            for line in handle:
                if not line.strip():
                    continue
                action = json.loads(line)
                for kind in ("add", "remove", "cdc"):
                    body = action.get(kind)
                    if body and body.get("partitionValues", {}).get("date"):
                        dates.add(dt.date.fromisoformat(body["partitionValues"]["date"]))
    return dates


def _file_date_set(delta: DeltaTable) -> set[tuple[str, object]]:
    actions = pa.table(delta.get_add_actions(flatten=True))
    return set(zip(actions.column("path").to_pylist(), actions.column("partition.date").to_pylist(), strict=True))


def changed_dates(lake: Lake, contract: TableContract, since_version: int | None, until_version: int) -> set[dt.date]:
    """Register days whose partitions changed after ``since_version`` up to ``until_version``.

    ``since_version`` None: every day in the table at ``until_version``.
    """
    delta = lake.open(contract, until_version)
    if delta is None:
        return set()
    if since_version is None:
        return _partition_dates(pa.table(delta.get_add_actions(flatten=True)).column("partition.date").to_pylist())
    if since_version >= until_version:
        return set()
    if delta.metadata().configuration.get("delta.enableChangeDataFeed") == "true":
        try:
            reader = delta.load_cdf(starting_version=since_version + 1, ending_version=until_version, columns=["date"])
            return _partition_dates(pa.RecordBatchReader.from_stream(reader).read_all().column("date").to_pylist())
        except Exception as exc:  # CDF enabled after since_version, or cleaned up: use the log
            log.info("change data feed unavailable for %s (%s); reading the log", contract.name, type(exc).__name__)
    path = lake.path(contract)
    if "://" not in path or path.startswith("file://"):
        try:
            return _dates_from_log_files(path.removeprefix("file://"), since_version + 1, until_version)
        except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError):
            log.info("commit files of %s unavailable; diffing file lists", contract.name)
    before = lake.open(contract, since_version)
    old = _file_date_set(before) if before is not None else set()
    new = _file_date_set(delta)
    return _partition_dates(d for _, d in old ^ new)


def optouts_fingerprint(optouts: pl.DataFrame | None) -> str:
    if optouts is None or optouts.height == 0:
        return "[]"
    rows = (
        optouts.select(
            pl.col("urn").cast(pl.String),
            pl.col("status").cast(pl.String),
            pl.col("effective_at").cast(pl.String),
        )
        .sort("urn", "effective_at", "status")
        .rows()
    )
    return json.dumps(rows)


def optout_change_start(previous: str | None, current: str, timezone: str) -> dt.date | None:
    """Earliest effective date of an opt-out event added or removed since the previous run (None: no
    change)."""
    before = {tuple(r) for r in json.loads(previous or "[]")}
    after = {tuple(r) for r in json.loads(current)}
    changed = before ^ after
    if not changed:
        return None
    stamps = pl.Series([r[2] for r in changed]).str.to_datetime(time_zone="UTC", strict=False)
    return min(stamps.dt.convert_time_zone(timezone).dt.date().drop_nulls().to_list(), default=dt.date.min)


# --- per-day recomputation -----------------------------------------------------------------------------


@dataclass
class Reference:
    """What every day's scoping needs, read once per run."""

    pupils: pl.DataFrame
    schools: pl.DataFrame
    optouts: pl.DataFrame | None


def _extracts_for(lake: Lake, extract_ids: pl.Series, earliest: dt.date | None = None) -> pl.DataFrame:
    """Status of the given extracts. A mark is carried by an extract taken on or after its day, so
    ``earliest`` (the earliest mark date) lets row-group statistics skip older extracts."""
    ids = extract_ids.unique().drop_nulls().to_list()
    if not ids:
        return pl.DataFrame(schema={"extract_id": pl.String, "status": pl.String})
    predicate = ds.field("extract_id").cast(pa.string()).isin(ids)  # cast: string_view files (see Lake.read)
    if earliest is not None:
        predicate = (ds.field("extract_date") >= pa.scalar(earliest, pa.date32())) & predicate
    return lake.read(table("extracts"), ["extract_id", "status"], predicate)


@dataclass
class DayResult:
    pending: pl.DataFrame
    excluded: dict[str, int]
    coverage: pl.DataFrame


def recompute_day(
    lake: Lake, day: dt.date, sessions_version: int | None, ref: Reference, config: StatsConfig
) -> DayResult:
    marks = lake.read(table("attendance_sessions"), _SESSION_COLUMNS, _date_filter(day), version=sessions_version)
    extracts = _extracts_for(lake, marks["extract_id"], day)
    result = scope.apply_scope(
        marks,
        extracts=extracts,
        pupils=ref.pupils,
        schools=ref.schools,
        optouts=ref.optouts,
        timezone=config.timezone,
    )
    pupil_days = views.pupil_day_rows(result.counted)
    cells = views.cell_rows(pupil_days)
    register = scope.schools_in_scope(ref.schools, day)
    day_rows = views.day_rows(cells, register) if cells.height else pl.DataFrame()
    school_rows = (
        views.school_day_rows(cells).join(ref.schools.select("urn", "laestab", "school_name"), on="urn", how="left")
        if cells.height
        else pl.DataFrame()
    )

    predicate = f"date = {_sql_date(day)}"
    lake.replace(contracts.PUPIL_DAY, pupil_days, predicate)
    lake.replace(contracts.SCHOOL_DAILY, school_rows, predicate)
    lake.replace(
        contracts.VIEWS_UNSUPPRESSED, day_rows, f"time_frame = '{views.DAY}' AND period_start = {_sql_date(day)}"
    )
    coverage = (
        day_rows.filter(
            (pl.col("geographic_level") == views.LOCAL_AUTHORITY) & (pl.col("education_phase") == views.TOTAL)
        ).select("old_la_code", "school_submitted_count", "school_all_count")
        if day_rows.height
        else pl.DataFrame()
    )
    return DayResult(result.pending_extracts, result.excluded, coverage)


# --- running per-enrolment totals ----------------------------------------------------------------------

_TOTAL_KEYS = ["academic_year_start", "term", "urn", "upn"]


def _term_totals(rows: pl.DataFrame) -> pl.DataFrame:
    return (
        rows.sort("date")
        .group_by(_TOTAL_KEYS)
        .agg(
            pl.col("possible_sessions").sum().cast(pl.Int64),
            pl.col("overall_absence").sum().cast(pl.Int64),
            pl.col("fsm_status").last(),
            pl.col("sen_status").last(),
            pl.col("year_group").last(),
        )
    )


def update_pupil_totals(lake: Lake, now: dt.datetime, rebuild: bool = False) -> int | None:
    """Bring ``stats_pupil_period_totals`` up to ``stats_pupil_day``'s current version; returns that
    version."""
    pupil_day = lake.open(contracts.PUPIL_DAY)
    if pupil_day is None:
        return None
    current = pupil_day.version()
    totals_table = lake.ensure(contracts.PUPIL_PERIOD_TOTALS)
    applied = totals_table.transaction_version(PUPIL_DAY_APP_ID)
    if applied is not None and applied >= current and not rebuild:
        return current
    commit = CommitProperties(app_transactions=[Transaction(PUPIL_DAY_APP_ID, current)])
    if not rebuild and applied is not None:
        try:
            return _apply_pupil_day_changes(lake, totals_table, applied, current, commit, now)
        except (OSError, DeltaError) as exc:  # the old version was vacuumed or its log cleaned: rebuild
            log.warning(
                "stats_pupil_day version %s unreadable (%s): rebuilding the running totals",
                applied,
                type(exc).__name__,
            )
    everything = _term_totals(lake.read(contracts.PUPIL_DAY, version=current))
    everything = everything.with_columns(pl.lit(now).alias("updated_at"))
    write_deltalake(
        totals_table,
        to_arrow(everything, contracts.PUPIL_PERIOD_TOTALS),
        mode="overwrite",
        partition_by=list(contracts.PUPIL_PERIOD_TOTALS.partition_by),
        storage_options=lake.options,
        commit_properties=commit,
    )
    return current


def _apply_pupil_day_changes(
    lake: Lake,
    totals_table: DeltaTable,
    applied: int,
    current: int,
    commit: CommitProperties,
    now: dt.datetime,
) -> int:
    """Subtract the old rows and add the new rows of every stats_pupil_day partition changed since
    ``applied``, in one MERGE that records ``current``."""
    days = changed_dates(lake, contracts.PUPIL_DAY, applied, current)
    if not days:
        return applied  # nothing to apply; the next run diffs from ``applied`` again
    day_filter = ds.field("date").isin([pa.scalar(d, pa.date32()) for d in sorted(days)])
    new = _term_totals(lake.read(contracts.PUPIL_DAY, filter=day_filter, version=current))
    old = _term_totals(lake.read(contracts.PUPIL_DAY, filter=day_filter, version=applied))
    delta = new.join(old, on=_TOTAL_KEYS, how="full", coalesce=True, suffix="_old").select(
        *_TOTAL_KEYS,
        (pl.col("possible_sessions").fill_null(0) - pl.col("possible_sessions_old").fill_null(0)).alias("d_possible"),
        (pl.col("overall_absence").fill_null(0) - pl.col("overall_absence_old").fill_null(0)).alias("d_absence"),
        pl.coalesce("fsm_status", "fsm_status_old").alias("fsm_status"),
        pl.coalesce("sen_status", "sen_status_old").alias("sen_status"),
        pl.coalesce("year_group", "year_group_old").alias("year_group"),
        pl.lit(now).alias("updated_at"),
    )
    years = ", ".join(str(y) for y in delta["academic_year_start"].unique().to_list())
    terms = ", ".join(f"'{t}'" for t in delta["term"].unique().to_list())
    source = delta.to_arrow()
    predicate = (
        f"t.academic_year_start IN ({years}) AND t.term IN ({terms}) AND "
        "t.academic_year_start = s.academic_year_start AND t.term = s.term AND t.urn = s.urn AND t.upn = "
        "s.upn"
    )
    (
        totals_table.merge(source, predicate=predicate, source_alias="s", target_alias="t", commit_properties=commit)
        .when_matched_update(
            updates={
                "possible_sessions": "t.possible_sessions + s.d_possible",
                "overall_absence": "t.overall_absence + s.d_absence",
                "fsm_status": "s.fsm_status",
                "sen_status": "s.sen_status",
                "year_group": "s.year_group",
                "updated_at": "s.updated_at",
            }
        )
        .when_not_matched_insert(
            updates={
                "academic_year_start": "s.academic_year_start",
                "term": "s.term",
                "urn": "s.urn",
                "upn": "s.upn",
                "possible_sessions": "s.d_possible",
                "overall_absence": "s.d_absence",
                "fsm_status": "s.fsm_status",
                "sen_status": "s.sen_status",
                "year_group": "s.year_group",
                "updated_at": "s.updated_at",
            }
        )
        .execute()
    )
    return current


# --- period views ----------------------------------------------------------------------------------------


def _school_attributes(schools: pl.DataFrame) -> pl.DataFrame:
    return schools.select("urn", pl.col("attendance_phase").alias("education_phase"), *scope.GEOGRAPHY_COLUMNS)


def pa_inputs(lake: Lake, year: int, schools: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per-enrolment Term totals, per-enrolment Year-to-date totals) of academic year ``year``."""
    totals = lake.read(contracts.PUPIL_PERIOD_TOTALS, filter=ds.field("academic_year_start") == year)
    totals = totals.join(_school_attributes(schools), on="urn", how="inner").filter(
        pl.col("education_phase").is_in(list(scope.IN_SCOPE_PHASES))
    )
    term = pl.col("term")
    term_start = (
        pl.when(term == periods.Term.AUTUMN.value)
        .then(pl.lit(periods.term_bounds(year, periods.Term.AUTUMN)[0]))
        .when(term == periods.Term.SPRING.value)
        .then(pl.lit(periods.term_bounds(year, periods.Term.SPRING)[0]))
        .otherwise(pl.lit(periods.term_bounds(year, periods.Term.SUMMER)[0]))
    )
    by_term = totals.with_columns(term_start.alias("period_start"))
    attributes = ["education_phase", *scope.GEOGRAPHY_COLUMNS]
    ytd = (
        totals.sort("term")
        .group_by(["urn", "upn", *attributes])
        .agg(
            pl.col("possible_sessions").sum(),
            pl.col("overall_absence").sum(),
            pl.col("fsm_status").last(),
            pl.col("sen_status").last(),
            pl.col("year_group").last(),
        )
        .with_columns(pl.lit(dt.date(year, 9, 1)).alias("period_start"))
    )
    return by_term, ytd


#: What period rows are built from: the Day rows' dimensions, counts and daily means (not their rates).
_DAY_COLUMNS = [*views.VIEW_DIMENSIONS, *COUNT_COLUMNS, *views.PUPIL_COUNT_COLUMNS]


def recompute_periods(
    lake: Lake, touched: Iterable[dt.date], schools: pl.DataFrame, all_weeks: bool = False
) -> tuple[list[dt.date], list[int]]:
    """Recompute the Week, Term and Year-to-date rows touched by ``touched`` days."""
    touched = sorted(set(touched))
    years = sorted({periods.academic_year_start(d) for d in touched})
    weeks_done: list[dt.date] = []
    for year in years:
        first, last = periods.academic_year_bounds(year)
        in_year = [d for d in touched if first <= d <= last]
        day_filter = (
            (ds.field("time_frame") == views.DAY)
            & (ds.field("period_start") >= pa.scalar(first, pa.date32()))
            & (ds.field("period_start") <= pa.scalar(last, pa.date32()))
        )
        days = lake.read(contracts.VIEWS_UNSUPPRESSED, _DAY_COLUMNS, filter=day_filter)
        school_days = lake.read(
            contracts.SCHOOL_DAILY,
            ["date", "urn", "education_phase", *scope.GEOGRAPHY_COLUMNS],
            (ds.field("date") >= pa.scalar(first, pa.date32())) & (ds.field("date") <= pa.scalar(last, pa.date32())),
        )
        register = scope.schools_in_scope(schools, days["period_end"].max() if days.height else last)
        by_term, ytd = pa_inputs(lake, year, schools)
        pa_term = views.pa_rows(by_term) if by_term.height else None
        pa_ytd = views.pa_rows(ytd) if ytd.height else None
        rows = views.all_period_rows(days, school_days, register, pa_term, pa_ytd)

        week_starts = sorted({periods.week_bounds(d)[0] for d in in_year})
        if all_weeks:
            week_starts = sorted(
                set(week_starts)
                | set(rows.filter(pl.col("time_frame") == views.WEEK)["period_start"].unique().to_list())
            )
        for start in week_starts:
            part = rows.filter((pl.col("time_frame") == views.WEEK) & (pl.col("period_start") == start))
            lake.replace(
                contracts.VIEWS_UNSUPPRESSED,
                part,
                f"time_frame = '{views.WEEK}' AND period_start = {_sql_date(start)}",
            )
        weeks_done += week_starts
        for term in sorted({periods.term_of(d) for d in in_year}):
            start = periods.term_bounds(year, term)[0]
            part = rows.filter((pl.col("time_frame") == views.TERM) & (pl.col("period_start") == start))
            lake.replace(
                contracts.VIEWS_UNSUPPRESSED,
                part,
                f"time_frame = '{views.TERM}' AND period_start = {_sql_date(start)}",
            )
        part = rows.filter(pl.col("time_frame") == views.YEAR_TO_DATE)
        lake.replace(
            contracts.VIEWS_UNSUPPRESSED,
            part,
            f"time_frame = '{views.YEAR_TO_DATE}' AND period_start = {_sql_date(first)}",
        )
    return weeks_done, years


# --- disclosure control: the LA-and-above zone ------------------------------------------------------------


def rules_from(config: StatsConfig) -> DisclosureRules:
    return DisclosureRules(config.single_school_max, config.min_pupil_count, config.rate_dp, config.count_dp)


def _partition_values(delta: DeltaTable | None, column: str) -> list[object]:
    if delta is None:
        return []
    actions = pa.table(delta.get_add_actions(flatten=True))
    return actions.column(f"partition.{column}").to_pylist() if actions.num_rows else []


def unsuppressed_years(lake: Lake) -> set[int]:
    """Academic years with Day rows in the exact views (from partition values: no data file is read)."""
    return {periods.academic_year_start(d) for d in _processed_days(lake)}


def controlled_years(lake: Lake) -> set[int]:
    """Academic years present in the disclosure-controlled table (``YYYYZZ`` partitions)."""
    return {int(str(code)[:4]) for code in _partition_values(lake.open(contracts.VIEWS), "academic_year") if code}


def control_year(lake: Lake, year: int, rules: DisclosureRules, now: dt.datetime) -> int:
    """Rewrite academic year ``year`` of ``stats_attendance_views`` from the exact views; returns the number
    of suppressed rows."""
    code = periods.academic_year_code(year)
    first, last = periods.academic_year_bounds(year)
    year_filter = (
        (ds.field("period_start") >= pa.scalar(first - dt.timedelta(days=6), pa.date32()))
        & (ds.field("period_start") <= pa.scalar(last, pa.date32()))
        & (ds.field("academic_year") == code)
    )
    exact = lake.read(contracts.VIEWS_UNSUPPRESSED, filter=year_filter)
    controlled = ees.controlled_rows(exact, rules).with_columns(pl.lit(now).alias("controlled_at"))
    lake.replace(contracts.VIEWS, controlled, f"academic_year = '{code}'")
    return int(controlled["suppressed"].sum()) if controlled.height else 0


def apply_disclosure_control(
    lake: Lake, touched_years: Iterable[int], rules: DisclosureRules, now: dt.datetime
) -> list[int]:
    """Bring ``stats_attendance_views`` in line with the exact views: every touched academic year and every
    year the controlled table lacks is (re)controlled; years no longer in the exact views are removed."""
    exact_years = unsuppressed_years(lake)
    have = controlled_years(lake)
    todo = sorted((set(touched_years) | (exact_years - have)) & exact_years)
    for year in todo:
        control_year(lake, year, rules, now)
    for year in sorted(have - exact_years):
        lake.ensure(contracts.VIEWS).delete(f"academic_year = '{periods.academic_year_code(year)}'")
    return todo


def _legacy_path(lake: Lake, zone: Zone, name: str) -> str:
    return f"{lake.uri.rstrip('/')}/{zone.value}/{name}"


def _remove_table_directory(lake: Lake, uri: str) -> None:
    from storage.lake import filesystem

    fs, root = filesystem(uri, lake.options)
    fs.delete_dir(root)


def migrate_legacy_layout(lake: Lake) -> list[str]:
    """Move tables of the layout before disclosure control was stored out of the LA-and-above zone.

    Earlier versions kept the exact views (``stats_attendance_views`` without a ``suppressed`` column) and
    the run bookkeeping (``stats_aggregation_runs``, whose opt-outs fingerprint names schools) in
    ``la_aggregates``. Their rows are copied to the new homes (school zone, restricted zone) when those do
    not exist yet, and the old directories are deleted, files and log, so that nothing before disclosure
    control stays readable in that zone. Returns what was moved.
    """
    moved: list[str] = []
    old_runs = _legacy_path(lake, Zone.LA_AND_ABOVE, contracts.AGGREGATION_STATE.name)
    if contracts.AGGREGATION_STATE.zone is not Zone.LA_AND_ABOVE:
        try:
            legacy = DeltaTable(old_runs, storage_options=lake.options)
        except TableNotFoundError:
            legacy = None
        if legacy is not None:
            if lake.open(contracts.AGGREGATION_STATE) is None:
                rows = pl.from_arrow(legacy.to_pyarrow_table())
                if rows.height:
                    lake.append(contracts.AGGREGATION_STATE, rows)  # type: ignore[arg-type]
            _remove_table_directory(lake, old_runs)
            moved.append(f"{Zone.LA_AND_ABOVE.value}/{contracts.AGGREGATION_STATE.name}")
    old_views = lake.open(contracts.VIEWS)
    if old_views is not None and "suppressed" not in old_views.schema().to_arrow().names:  # type: ignore[union-attr]
        if lake.open(contracts.VIEWS_UNSUPPRESSED) is None:
            rows = pl.from_arrow(old_views.to_pyarrow_table())
            lake.ensure(contracts.VIEWS_UNSUPPRESSED)
            if rows.height:
                lake.append(contracts.VIEWS_UNSUPPRESSED, rows)  # type: ignore[arg-type]
        _remove_table_directory(lake, lake.path(contracts.VIEWS))
        moved.append(f"{Zone.LA_AND_ABOVE.value}/{contracts.VIEWS.name} (before disclosure control)")
    for name in moved:
        log.warning("moved %s out of the LA-and-above zone", name)
    return moved


# --- the run -------------------------------------------------------------------------------------------


def last_run(lake: Lake) -> dict | None:
    runs = lake.read(contracts.AGGREGATION_STATE)
    if runs.height == 0:
        return None
    return runs.sort("run_at").row(-1, named=True)


def _optouts_frame(optouts: pa.Table | pl.DataFrame | None) -> pl.DataFrame | None:
    if optouts is None:
        return None
    frame = optouts if isinstance(optouts, pl.DataFrame) else pl.from_arrow(optouts)
    missing = {"urn", "status", "effective_at"} - set(frame.columns)
    if missing:
        raise UserFacingError(f"the opt-outs list needs columns urn, status, effective_at (missing: {sorted(missing)})")
    return frame.select("urn", "status", "effective_at")  # type: ignore[union-attr]


def _processed_days(lake: Lake) -> set[dt.date]:
    views_table = lake.open(contracts.VIEWS_UNSUPPRESSED)
    if views_table is None:
        return set()
    actions = pa.table(views_table.get_add_actions(flatten=True))
    frames = actions.column("partition.time_frame").to_pylist()
    starts = actions.column("partition.period_start").to_pylist()
    return _partition_dates(s for f, s in zip(frames, starts, strict=True) if f == views.DAY)


def run_aggregation(
    lake_uri: str,
    *,
    optouts: pa.Table | pl.DataFrame | None = None,
    day: dt.date | None = None,
    full: bool = False,
    now: dt.datetime | None = None,
    storage_options: dict[str, str] | None = None,
    config: StatsConfig | None = None,
) -> AggregationReport:
    """One aggregation run (see the module docstring). ``optouts``: Arrow table ``urn, status,
    effective_at``."""
    config = config or get_stats_config()
    started = time.monotonic()
    now = now or dt.datetime.now(dt.UTC)
    lake = Lake(lake_uri, storage_options)
    migrate_legacy_layout(lake)
    for contract in contracts.CONTRACTS:
        lake.ensure(contract)
    sessions = lake.open(table("attendance_sessions"))
    if sessions is None:
        raise UserFacingError(
            f"no attendance_sessions table under {lake_uri}: nothing to aggregate yet "
            "(run the stream worker first, or check ATTENDANCE_LAKE_URI)"
        )
    # Amendments and pupil records a worker staged but has not folded yet count from this run on.
    from storage.sink import fold_staged

    folded = fold_staged(lake_uri, storage_options)
    if folded is not None and folded.sessions.changed:
        sessions = lake.open(table("attendance_sessions"))
        assert sessions is not None
    sessions_version = sessions.version()
    optout_frame = _optouts_frame(optouts)
    fingerprint = optouts_fingerprint(optout_frame)
    previous = last_run(lake)
    mode = "full" if full else "date" if day is not None else "incremental"

    pending = lake.read(contracts.PENDING_EXTRACTS)
    if full:
        dates = changed_dates(lake, table("attendance_sessions"), None, sessions_version) | _processed_days(lake)
    elif day is not None:
        dates = {day}
    else:
        since = None if previous is None else previous["sessions_version"]
        dates = changed_dates(lake, table("attendance_sessions"), since, sessions_version)
        if pending.height:
            now_complete = _extracts_for(lake, pending["extract_id"], pending["date"].min()).filter(
                pl.col("status") == "complete"
            )
            dates |= set(pending.join(now_complete, on="extract_id", how="semi")["date"].to_list())
        if previous is not None:
            start = optout_change_start(previous["optouts_fingerprint"], fingerprint, config.timezone)
            if start is not None:
                dates |= {d for d in _processed_days(lake) if d >= start}

    timings = {"find_days": time.monotonic() - started}
    mark = time.monotonic()
    ref = Reference(
        pupils=lake.read(table("pupils"), _PUPIL_COLUMNS),
        schools=lake.read(table("schools"), _SCHOOL_COLUMNS),
        optouts=optout_frame,
    )
    timings["reference"] = time.monotonic() - mark
    mark = time.monotonic()
    excluded: dict[str, int] = {}
    new_pending: list[pl.DataFrame] = []
    latest_coverage: tuple[dt.date, pl.DataFrame] | None = None
    for current in sorted(dates):
        result = recompute_day(lake, current, sessions_version, ref, config)
        for reason, count in result.excluded.items():
            excluded[reason] = excluded.get(reason, 0) + count
        if result.pending.height:
            new_pending.append(result.pending)
        if result.coverage.height and (latest_coverage is None or current >= latest_coverage[0]):
            latest_coverage = (current, result.coverage)

    timings["days"] = time.monotonic() - mark
    mark = time.monotonic()
    totals_version = update_pupil_totals(lake, now, rebuild=full)
    timings["pupil_totals"] = time.monotonic() - mark
    mark = time.monotonic()
    weeks, years = recompute_periods(lake, dates, ref.schools, all_weeks=full) if dates else ([], [])
    timings["periods"] = time.monotonic() - mark
    mark = time.monotonic()
    controlled = apply_disclosure_control(lake, years, rules_from(config), now)
    timings["disclosure"] = time.monotonic() - mark
    mark = time.monotonic()

    # pending = earlier entries for days not recomputed now + what this run held back
    kept = pending.filter(~pl.col("date").is_in(sorted(dates))) if pending.height else pending
    fresh = (
        pl.concat(new_pending).with_columns(pl.lit(now).alias("first_seen_at"))
        if new_pending
        else pl.DataFrame(schema={"extract_id": pl.String, "urn": pl.String, "date": pl.Date})
    )
    all_pending = pl.concat([kept, fresh], how="diagonal_relaxed") if fresh.height else kept
    cutoff = (now - dt.timedelta(days=config.pending_extract_max_age_days)).date()
    if all_pending.height:
        all_pending = all_pending.filter(pl.col("date") >= cutoff).unique(["extract_id", "date"])
    write_deltalake(
        lake.ensure(contracts.PENDING_EXTRACTS),
        to_arrow(all_pending, contracts.PENDING_EXTRACTS)
        if all_pending.height
        else contracts.PENDING_EXTRACTS.schema.empty_table(),
        mode="overwrite",
        storage_options=lake.options,
    )

    report = AggregationReport(
        run_id=str(uuid.uuid4()),
        mode=mode,
        sessions_version=sessions_version if day is None else (previous or {}).get("sessions_version"),
        dates_recomputed=sorted(dates),
        weeks_recomputed=weeks,
        academic_years_recomputed=years,
        excluded_marks=excluded,
        pending_extracts=all_pending.height,
        pupil_totals_version=totals_version,
        academic_years_controlled=controlled,
    )
    timings["bookkeeping"] = time.monotonic() - mark
    report.timings = timings
    report.duration_seconds = time.monotonic() - started
    state = pl.DataFrame(
        {
            "run_id": [report.run_id],
            "run_at": [now],
            "mode": [mode],
            "sessions_version": [report.sessions_version],
            "optouts_fingerprint": [
                fingerprint if day is None else (previous or {}).get("optouts_fingerprint", fingerprint)
            ],
            "dates_recomputed": [report.dates_recomputed],
            "excluded_marks": [json.dumps(excluded, sort_keys=True)],
            "duration_seconds": [report.duration_seconds],
        },
        schema_overrides={"sessions_version": pl.Int64, "dates_recomputed": pl.List(pl.Date)},
    )
    lake.append(contracts.AGGREGATION_STATE, state)
    _set_metrics(now, latest_coverage)
    log.info("%s", report.summary())
    return report


def _set_metrics(now: dt.datetime, coverage: tuple[dt.date, pl.DataFrame] | None) -> None:
    from attendance import metrics

    metrics.LAST_AGGREGATION_TIMESTAMP.set(now.timestamp())
    if coverage is None:
        return
    for la_code, submitted, expected in coverage[1].rows():
        metrics.SCHOOLS_SUBMITTED_TODAY.labels(la_code=la_code).set(submitted)
        metrics.SCHOOLS_EXPECTED_TODAY.labels(la_code=la_code).set(expected)


def views_frame(
    lake_uri: str, storage_options: dict[str, str] | None = None, academic_year: str | None = None
) -> pl.DataFrame:
    """Exact rows (``stats_attendance_views_unsuppressed``, before disclosure control; optionally one
    academic year, ``YYYYZZ``)."""
    lake = Lake(lake_uri, storage_options)
    filter = ds.field("academic_year") == academic_year if academic_year else None
    return lake.read(contracts.VIEWS_UNSUPPRESSED, filter=filter)


def controlled_views_frame(
    lake_uri: str, storage_options: dict[str, str] | None = None, academic_year: str | None = None
) -> pl.DataFrame:
    """Disclosure-controlled rows (``stats_attendance_views``, LA-and-above zone)."""
    lake = Lake(lake_uri, storage_options)
    filter = ds.field("academic_year") == academic_year if academic_year else None
    return lake.read(contracts.VIEWS, filter=filter)


__all__ = [
    "AggregationReport",
    "Lake",
    "changed_dates",
    "run_aggregation",
    "update_pupil_totals",
    "views_frame",
    "controlled_views_frame",
    "apply_disclosure_control",
    "migrate_legacy_layout",
    "COUNT_COLUMNS",
]
