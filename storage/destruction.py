"""Destruction of pupil-level data: a school's opt-out purge, the retention schedule, and the proof.

Deleting rows from a Delta table only writes a new version: the Parquet files that hold them stay on
storage (time travel reads them) until vacuum deletes them. So every destruction here is
``DELETE`` + ``VACUUM`` with zero retention (``enforce_retention_duration=False``): after it, earlier
versions still *load* but reading them fails, because their files are gone. Each destruction writes one
``destruction_log`` row per table: what, why, rows, files removed, versions before and after, who, when.

Zero-retention vacuum runs in delta-rs' "lite" mode, which removes only files the log marks as removed,
so a concurrent writer's not-yet-committed files are never touched. Files no version references at all
(left by a write that failed to commit) are removed by a second, full vacuum once they are older than
``orphan_grace_hours``; ``verify_destroyed`` reads every Parquet file under each table, referenced or not,
so an orphan younger than that is reported, never missed.

What the Delta log still holds after a purge: see docs/tables.md ("What the Delta log keeps").
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import write_deltalake

from attendance.errors import UserFacingError
from storage import lake
from storage.tables import ATTENDANCE_SESSIONS, DESTRUCTION_LOG, PUPILS, QUARANTINE, TABLES, TableContract

log = logging.getLogger(__name__)

LONDON = ZoneInfo("Europe/London")
URN_PATTERN = re.compile(r"^\d{6}$")

#: Years pupil-level data is kept after the end (31 August) of the academic year it belongs to.
#: Placeholders until the retention schedule is agreed; the lead moves them into Settings.
DEFAULT_RETENTION_YEARS = 3
RETENTION_YEARS_BY_TABLE: dict[str, int] = {
    ATTENDANCE_SESSIONS.name: DEFAULT_RETENTION_YEARS,
    PUPILS.name: DEFAULT_RETENTION_YEARS,
    QUARANTINE.name: 1,
}
#: The column that dates a row for retention. A pupil row is re-dated by every extract that carries the
#: pupil (generated_at moves on), so a pupil on roll is never destroyed; one not seen for years is.
#: Tables not listed are dated by the first of ``date``, ``academic_year_start``, ``generated_at`` they have.
RETENTION_DATE_COLUMNS: dict[str, str] = {
    ATTENDANCE_SESSIONS.name: "date",
    PUPILS.name: "generated_at",
    QUARANTINE.name: "quarantined_at",
}
_FALLBACK_DATE_COLUMNS = ("date", "academic_year_start", "generated_at")
DEFAULT_ORPHAN_GRACE_HOURS = 1


@dataclass(frozen=True)
class DestructionRecord:
    """One destruction_log row."""

    destruction_id: str
    action: str  # "purge" (opt-out) or "retention"
    urn: str | None
    table_name: str
    predicate: str
    reason: str
    rows_deleted: int
    files_removed: int
    version_before: int
    version_after: int
    requested_by: str
    executed_at: datetime


@dataclass(frozen=True)
class VerificationResult:
    urn: str
    rows_remaining: dict[str, int]  # table -> rows of the school in the current version
    files_remaining: list[str]  # Parquet files (referenced or not) that still hold a row of the school
    files_scanned: int
    log_files_mentioning_urn: int  # _delta_log entries naming the URN (statistics, predicates): no pupil data
    tables_without_urn: list[str] = field(default_factory=list)  # pupil-level tables that cannot be checked

    @property
    def destroyed(self) -> bool:
        return not any(self.rows_remaining.values()) and not self.files_remaining


def check_urn(urn: str) -> str:
    if not URN_PATTERN.match(urn or ""):
        raise UserFacingError(f"URN must be 6 digits, got {urn!r}")
    return urn


def retention_cutoff(today: date, years: int) -> date:
    """The last data date whose retention has expired on ``today``.

    Data dated in academic year Y-1/Y (1 Sept Y-1 .. 31 Aug Y) is kept until 31 August Y+years and
    destroyed from the day after: e.g. on 2026-11-20 with 3 years, 2022/23 data (to 2023-08-31) has
    expired (kept until 2026-08-31), 2023/24 data has not (kept until 2027-08-31).
    """
    if years < 0:
        raise UserFacingError(f"retention years must be >= 0, got {years}")
    this_years_end = date(today.year, 8, 31)
    latest_expired = (today.year if today > this_years_end else today.year - 1) - years
    return date(latest_expired, 8, 31)


def _retention_column(contract: TableContract, configured: Mapping[str, str]) -> str | None:
    if contract.name in configured:
        return configured[contract.name]
    return next((name for name in _FALLBACK_DATE_COLUMNS if name in contract.schema.names), None)


def retention_predicate(contract: TableContract, column: str, cutoff: date) -> str:
    kind = contract.schema.field(column).type
    if pa.types.is_integer(kind):  # an academic year by its starting calendar year: Y means Y/Y+1
        return f"{column} <= {cutoff.year - 1}"
    if pa.types.is_timestamp(kind):
        # Data dated up to the end of 31 August in England: before 1 September 00:00 London time.
        start_of_next_year = datetime.combine(cutoff + timedelta(days=1), time(0), LONDON)
        return f"{column} < '{start_of_next_year.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}'"
    return f"{column} <= '{cutoff.isoformat()}'"


def pupil_level_tables() -> list[TableContract]:
    """Every pupil-level table contract, including those other packages declare with
    ``storage.tables.register`` (``storage.lake.TABLE_MODULES``)."""
    lake.load_all_contracts()
    return [contract for contract in TABLES.values() if contract.pupil_level]


def purge_school(urn: str, lake_uri: str, storage_options: Mapping[str, str] | None = None, *,
                 requested_by: str, reason: str, orphan_grace_hours: int = DEFAULT_ORPHAN_GRACE_HOURS,
                 now: datetime | None = None) -> list[DestructionRecord]:
    """Delete the school's rows from every pupil-level table and physically remove the files that held
    them. Returns (and logs to destruction_log) one record per table."""
    check_urn(urn)
    if not requested_by or not reason:
        raise UserFacingError("a purge needs who asked for it (--by) and why (--reason)")
    executed_at = now or datetime.now(UTC)
    destruction_id = str(uuid.uuid4())
    records = []
    # Staging first: a fold writes only rows whose school is still staged (storage.sink), so a fold running
    # alongside cannot write the school's staged rows back into a table purged before them.
    staging_first = sorted(pupil_level_tables(), key=lambda contract: not contract.name.startswith("staged_"))
    for contract in staging_first:
        if "urn" not in contract.schema.names:
            log.warning("%s is pupil-level but has no urn column: not purged by URN", contract.name)
            continue
        record = _destroy(contract, lake_uri, storage_options, f"urn = '{urn}'", orphan_grace_hours,
                          destruction_id=destruction_id, action="purge", urn=urn, reason=reason,
                          requested_by=requested_by, executed_at=executed_at)
        if record is not None:
            records.append(record)
    write_destruction_log(records, lake_uri, storage_options)
    return records


def apply_retention(lake_uri: str, today: date, retention_years: int | Mapping[str, int] | None = None,
                    storage_options: Mapping[str, str] | None = None, *,
                    requested_by: str = "retention schedule",
                    date_columns: Mapping[str, str] | None = None,
                    orphan_grace_hours: int = DEFAULT_ORPHAN_GRACE_HOURS,
                    now: datetime | None = None) -> list[DestructionRecord]:
    """Destroy pupil-level rows whose retention has expired on ``today`` (see ``retention_cutoff``).

    ``retention_years``: one number for every table, or per table (missing tables use
    ``RETENTION_YEARS_BY_TABLE`` / ``DEFAULT_RETENTION_YEARS``). Pupil-level tables without a dating
    column in ``date_columns`` are skipped with a warning.
    """
    columns = dict(RETENTION_DATE_COLUMNS if date_columns is None else date_columns)
    executed_at = now or datetime.now(UTC)
    destruction_id = str(uuid.uuid4())
    records = []
    for contract in pupil_level_tables():
        column = _retention_column(contract, columns)
        if column is None:
            log.warning("%s is pupil-level but has no retention date column: skipped", contract.name)
            continue
        if isinstance(retention_years, int):
            years = retention_years
        else:
            years = dict(retention_years or {}).get(
                contract.name, RETENTION_YEARS_BY_TABLE.get(contract.name, DEFAULT_RETENTION_YEARS))
        cutoff = retention_cutoff(today, years)
        predicate = retention_predicate(contract, column, cutoff)
        reason = (f"retention: data of academic years ending on or before {cutoff.isoformat()} "
                  f"kept {years} year(s) after 31 August")
        record = _destroy(contract, lake_uri, storage_options, predicate, orphan_grace_hours,
                          destruction_id=destruction_id, action="retention", urn=None, reason=reason,
                          requested_by=requested_by, executed_at=executed_at)
        if record is not None:
            records.append(record)
    write_destruction_log(records, lake_uri, storage_options)
    return records


def _destroy(contract: TableContract, lake_uri: str, storage_options: Mapping[str, str] | None,
             predicate: str, orphan_grace_hours: int, **record: object) -> DestructionRecord | None:
    delta = lake.open_table(contract, lake_uri, storage_options)
    if delta is None:
        return None
    version_before = delta.version()
    deleted = delta.delete(predicate, writer_properties=lake.WRITER_PROPERTIES)
    # Lite vacuum, zero retention: every file the log marks as removed, now (incl. those just deleted).
    removed = delta.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    # Full vacuum with a grace period: files never committed (failed writes) older than the grace.
    orphans = delta.vacuum(retention_hours=orphan_grace_hours, enforce_retention_duration=False,
                           dry_run=False, full=True)
    delta.update_incremental()
    log.info("%s: destroyed %s row(s), removed %d file(s)", contract.name, deleted.get("num_deleted_rows", 0),
             len(removed) + len(orphans))
    return DestructionRecord(
        table_name=contract.name, predicate=predicate, rows_deleted=int(deleted.get("num_deleted_rows", 0)),
        files_removed=len(removed) + len(orphans), version_before=version_before,
        version_after=delta.version(), **record,  # type: ignore[arg-type]
    )


def write_destruction_log(records: Iterable[DestructionRecord], lake_uri: str,
                          storage_options: Mapping[str, str] | None = None) -> None:
    rows = [asdict(record) for record in records]
    if not rows:
        return
    table = pa.Table.from_pylist(rows, schema=DESTRUCTION_LOG.schema)
    delta = lake.ensure_table(DESTRUCTION_LOG, lake_uri, storage_options)
    write_deltalake(delta, table, mode="append")


def verify_destroyed(urn: str, lake_uri: str, storage_options: Mapping[str, str] | None = None
                     ) -> VerificationResult:
    """Prove that no row and no file of the school remains in any pupil-level table: the current version
    is queried, and every Parquet file under each table directory (referenced by any version or by none)
    is read, so no earlier version can be time-travelled to either."""
    check_urn(urn)
    rows_remaining: dict[str, int] = {}
    files_remaining: list[str] = []
    files_scanned = 0
    log_mentions = 0
    without_urn: list[str] = []
    for contract in pupil_level_tables():
        if "urn" not in contract.schema.names:
            without_urn.append(contract.name)
            continue
        delta = lake.open_table(contract, lake_uri, storage_options)
        if delta is not None:
            # cast: files rewritten by MERGE hold string_view (see storage.lake.read_table)
            matching = pc.field("urn").cast(pa.string()) == urn
            current = delta.to_pyarrow_dataset().to_table(columns=["urn"], filter=matching)
            rows_remaining[contract.name] = current.num_rows
        fs, _ = lake.filesystem(contract.path(lake_uri), storage_options)
        for path in lake.data_files(contract.path(lake_uri), storage_options):
            files_scanned += 1
            with fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                if "urn" not in parquet.schema_arrow.names:
                    continue
                urns = parquet.read(columns=["urn"]).column("urn").cast(pa.string())
            if pc.any(pc.equal(urns, urn)).as_py():
                files_remaining.append(path)
        log_mentions += _log_mentions(contract, lake_uri, storage_options, urn)
    return VerificationResult(urn, rows_remaining, files_remaining, files_scanned, log_mentions, without_urn)


def _log_mentions(contract: TableContract, lake_uri: str, storage_options: Mapping[str, str] | None,
                  urn: str) -> int:
    fs, root = lake.filesystem(contract.path(lake_uri), storage_options)
    log_dir = f"{root}/_delta_log"
    infos = fs.get_file_info(lake.pafs.FileSelector(log_dir, allow_not_found=True))
    count = 0
    needle = urn.encode()
    for info in infos:
        if info.type == lake.pafs.FileType.File and info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as stream:
                count += needle in stream.read()
    return count
