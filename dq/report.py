"""The data-quality exception report for one date: read the lake, run ``dq.checks``, store and count.

The only module of ``dq`` that does I/O. It reads school-level counts out of the Delta tables with SQL
(DataFusion, through deltalake's QueryBuilder: no pupil-level rows leave the query except the leavers'
marks, and those without a pupil identifier), writes the exceptions to the ``dq_exceptions`` table
(re-running a date replaces that date's rows) and counts them in Prometheus.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder, write_deltalake

from attendance.errors import UserFacingError
from attendance.metrics import DQ_EXCEPTIONS, DQ_EXCEPTIONS_LAST_REPORT, DQ_LAST_REPORT_TIMESTAMP
from dq.checks import (
    BANK_HOLIDAY_YEARS,
    CHECKS,
    EXCEPTION_COLUMNS,
    DqInputs,
    Thresholds,
    count_by_check,
    is_collection_day,
    run_checks,
)
from storage.lake import storage_options
from storage.sink import fold_staged
from storage.tables import UTC_TS, TableContract, Zone, register, table

log = logging.getLogger(__name__)


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


DQ_EXCEPTIONS_TABLE = register(TableContract(
    name="dq_exceptions",
    zone=Zone.SCHOOL,
    schema=pa.schema([
        _field("date", pa.date32(), "Register day the report is for", nullable=False),
        _field("check", pa.string(), "Check that raised it (see `attendance dq checks`)", nullable=False),
        _field("urn", pa.string(), "School URN; null for an LA-level exception"),
        _field("la_code", pa.string(), "3-digit LA code"),
        _field("register_code", pa.string(), "Register code concerned, where the check is about one"),
        _field("observed", pa.float64(), "The value observed (roll, rate %, share %, marks)"),
        _field("expected", pa.float64(), "What it was compared against"),
        _field("detail", pa.string(), "What is wrong, in one sentence; names no pupil"),
        _field("reported_at", UTC_TS, "When the report ran", nullable=False),
    ]),
    partition_by=("date",),
    # A school has at most one exception per check and date, except reason_code_spike, which is per LA and
    # register code (urn null): hence la_code and register_code in the key.
    key=("date", "check", "urn", "la_code", "register_code"),
    purpose="Data-quality exceptions per date: which school (or LA) failed which check, and why.",
    pupil_level=False,
))


@dataclass
class ReportResult:
    day: dt.date
    exceptions: pl.DataFrame
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


# --- reading ---------------------------------------------------------------------------------------------

def _delta(lake_uri: str, name: str) -> DeltaTable | None:
    path = table(name).path(lake_uri)
    options = storage_options(lake_uri=lake_uri)  # S3 endpoint, credentials, conditional put (storage.lake)
    try:
        if not DeltaTable.is_deltatable(path, storage_options=options):
            return None
        return DeltaTable(path, storage_options=options)
    except OSError as exc:  # unreachable store, bad credentials
        raise UserFacingError(f"cannot open table {name} at {path}: {exc}") from exc


def _query(tables: dict[str, DeltaTable], sql: str) -> pl.DataFrame:
    builder = QueryBuilder()
    for name, delta in tables.items():
        builder = builder.register(name, delta)
    frame = pl.from_arrow(pa.table(builder.execute(sql).read_all()))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _empty(columns: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=columns)


def _lit(day: dt.date) -> str:
    return f"DATE '{day.isoformat()}'"  # from a date object, never from user text


def read_inputs(lake_uri: str, day: dt.date,
                thresholds: Thresholds = Thresholds()) -> tuple[DqInputs, list[str]]:
    """Build the checks' inputs for ``day`` from the lake; also return notes on what was missing."""
    notes: list[str] = []
    first = day - dt.timedelta(days=thresholds.history_calendar_days)
    window = f"BETWEEN {_lit(first)} AND {_lit(day)}"

    schools = _delta(lake_uri, "schools")
    if schools is None:
        raise UserFacingError(
            f"no school register at {table('schools').path(lake_uri)}: load the register before running "
            "the data-quality report")
    register_frame = _query({"schools": schools}, (
        "SELECT urn, old_la_code, status, attendance_phase, open_date, close_date FROM schools"))

    extracts = _delta(lake_uri, "extracts")
    if extracts is None:
        notes.append("no extracts table: every expected school is reported missing")
        extracts_frame = _empty({"extract_id": pl.String(), "urn": pl.String(), "extract_date": pl.Date(),
                                 "generated_at": pl.Datetime("us", "UTC"), "status": pl.String(),
                                 "pupil_count": pl.Int32()})
    else:
        extracts_frame = _query({"extracts": extracts}, (
            "SELECT extract_id, urn, extract_date, generated_at, status, pupil_count FROM extracts "
            f"WHERE extract_date {window}"))

    sessions = _delta(lake_uri, "attendance_sessions")
    pupils = _delta(lake_uri, "pupils")
    if sessions is None:
        notes.append("no attendance_sessions table: checks on marks found nothing to check")
        mark_counts = _empty({"urn": pl.String(), "date": pl.Date(), "session": pl.String(),
                              "code": pl.String(), "marks": pl.Int64()})
        extract_mark_counts = _empty({"urn": pl.String(), "extract_id": pl.String(), "code": pl.String(),
                                      "marks": pl.Int64()})
    else:
        mark_counts = _query({"s": sessions}, (
            "SELECT urn, date, session, code, count(*) AS marks FROM s "
            f"WHERE date {window} GROUP BY urn, date, session, code"))
        extract_mark_counts = _query({"s": sessions}, (
            "SELECT urn, extract_id, code, count(*) AS marks FROM s "
            f"WHERE date = {_lit(day)} GROUP BY urn, extract_id, code"))
    if sessions is None or pupils is None:
        if pupils is None:
            notes.append("no pupils table: marks after leaving not checked")
        leaver_marks = _empty({"urn": pl.String(), "date": pl.Date(), "code": pl.String(),
                               "leaving_date": pl.Date()})
    else:
        # The join only pre-filters (leavers before the day); the rule is dq.checks.marks_after_leaving.
        leaver_marks = _query({"s": sessions, "p": pupils}, (
            "SELECT s.urn AS urn, s.date AS date, s.code AS code, p.leaving_date AS leaving_date "
            "FROM s JOIN p ON s.urn = p.urn AND s.upn = p.upn "
            f"WHERE s.date = {_lit(day)} AND p.leaving_date IS NOT NULL AND p.leaving_date < {_lit(day)}"))
    if day.year not in BANK_HOLIDAY_YEARS:
        notes.append(f"bank holidays for {day.year} are not in dq.checks: "
                     "only weekends count as non-school days")
    if not is_collection_day(day):
        notes.append(f"{day} is a weekend day or bank holiday: missing extracts not checked")
    inputs = DqInputs(schools=register_frame, extracts=extracts_frame, mark_counts=mark_counts,
                      extract_mark_counts=extract_mark_counts, leaver_marks=leaver_marks)
    return inputs, notes


# --- writing ---------------------------------------------------------------------------------------------

def exceptions_arrow(exceptions: pl.DataFrame, reported_at: dt.datetime) -> pa.Table:
    """The exceptions as an Arrow table of the ``dq_exceptions`` contract."""
    frame = exceptions.select(list(EXCEPTION_COLUMNS)).with_columns(
        pl.lit(reported_at).cast(pl.Datetime("us", "UTC")).alias("reported_at"))
    return frame.to_arrow().cast(DQ_EXCEPTIONS_TABLE.schema)


def write_exceptions(lake_uri: str, day: dt.date, exceptions: pl.DataFrame, reported_at: dt.datetime) -> str:
    """Replace ``day``'s rows of ``dq_exceptions`` with ``exceptions`` (idempotent per date)."""
    path = DQ_EXCEPTIONS_TABLE.path(lake_uri)
    write_deltalake(path, exceptions_arrow(exceptions, reported_at), mode="overwrite",
                    partition_by=list(DQ_EXCEPTIONS_TABLE.partition_by),
                    predicate=f"date = '{day.isoformat()}'",
                    storage_options=storage_options(lake_uri=lake_uri))
    return path


def record_metrics(counts: dict[str, int], finished_at: float | None = None) -> None:
    for check, n in counts.items():
        DQ_EXCEPTIONS.labels(check=check).inc(n)
        DQ_EXCEPTIONS_LAST_REPORT.labels(check=check).set(n)
    DQ_LAST_REPORT_TIMESTAMP.set(time.time() if finished_at is None else finished_at)


def run_report(lake_uri: str, day: dt.date, thresholds: Thresholds = Thresholds(),
               checks: tuple[str, ...] | None = None, write: bool = True) -> ReportResult:
    """Run the data-quality checks for ``day``, store them (unless ``write`` is False) and count them."""
    # Marks, pupils and extracts a worker staged but has not folded yet count (storage.current).
    fold_staged(lake_uri, storage_options(lake_uri=lake_uri))
    inputs, notes = read_inputs(lake_uri, day, thresholds)
    exceptions = run_checks(inputs, day, thresholds, checks)
    counts = count_by_check(exceptions)
    if checks is not None:
        counts = {c: n for c, n in counts.items() if c in checks}
    if write:
        if checks is not None and set(checks) != set(CHECKS):
            notes.append("only some checks ran: dq_exceptions not written (it holds whole reports)")
        else:
            path = write_exceptions(lake_uri, day, exceptions, dt.datetime.now(dt.UTC))
            notes.append(f"{exceptions.height} exception(s) written to {path} for {day}")
    record_metrics(counts)
    log.info("dq report %s: %s", day, counts)
    return ReportResult(day=day, exceptions=exceptions, counts=counts, notes=notes)
