"""Table contracts: every Delta table's Arrow schema, partitioning, zone and purpose, in one place.

``docs/tables.md`` is the analysts' data dictionary rendered from these definitions
(``attendance lake dictionary`` regenerates it). Tables live at ``<lake_uri>/<zone>/<name>``: each zone is
a separate storage root so that permissions can be set on the storage itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa


class Zone(StrEnum):
    REFERENCE = "reference"  # public reference data (the GIAS school register)
    RESTRICTED = "restricted"  # identifiable pupil-level data, quarantine, opt-out audit, destruction log
    PSEUDONYMISED = "pseudonymised"  # pupil-level rows with a keyed hash for the UPN, age not date of birth
    SCHOOL = "school_aggregates"  # school-level aggregates
    LA_AND_ABOVE = "la_aggregates"  # LA, regional and national aggregates
    PUBLISHED = "published"  # released EES files
    AUDIT = "audit"  # read-gateway audit, append-only


UTC_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TableContract:
    name: str
    zone: Zone
    schema: pa.Schema
    partition_by: tuple[str, ...]
    key: tuple[str, ...]  # the columns that identify one row (what MERGE matches on)
    purpose: str
    pupil_level: bool  # holds rows about individual pupils (subject to opt-out purge and retention)

    def path(self, lake_uri: str) -> str:
        return f"{lake_uri.rstrip('/')}/{self.zone.value}/{self.name}"


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


SCHOOLS = TableContract(
    name="schools",
    zone=Zone.REFERENCE,
    schema=pa.schema([
        _field("urn", pa.string(), "6-digit Unique Reference Number", nullable=False),
        _field("laestab", pa.string(), "3-digit LA code + 4-digit establishment number"),
        _field("school_name", pa.string(), "EstablishmentName from GIAS"),
        _field("old_la_code", pa.string(), "3-digit LA code"),
        _field("new_la_code", pa.string(), "9-character GSS LA code"),
        _field("la_name", pa.string(), "Local authority name"),
        _field("region_code", pa.string(), "GSS region code (E12...)"),
        _field("region_name", pa.string(), "Region name"),
        _field("type_of_establishment", pa.string(), "TypeOfEstablishment (name) from GIAS"),
        _field("establishment_type_group", pa.string(), "EstablishmentTypeGroup (name) from GIAS"),
        _field("status", pa.string(), "EstablishmentStatus (name): Open, Closed, ..."),
        _field("phase_of_education", pa.string(), "PhaseOfEducation (name) from GIAS"),
        _field("attendance_phase", pa.string(),
               "Phase in the attendance statistics: Primary, Secondary, Special, or Out of scope"),
        _field("trust_code", pa.string(), "Trusts (code): the academy trust, if any"),
        _field("trust_name", pa.string(), "Trusts (name)"),
        _field("open_date", pa.date32(), "OpenDate"),
        _field("close_date", pa.date32(), "CloseDate"),
        _field("loaded_at", UTC_TS, "When this register version was loaded"),
    ]),
    partition_by=(),
    key=("urn",),
    purpose="The school register (Get Information About Schools): school -> LA, region, trust, phase.",
    pupil_level=False,
)

ATTENDANCE_SESSIONS = TableContract(
    name="attendance_sessions",
    zone=Zone.RESTRICTED,
    schema=pa.schema([
        _field("urn", pa.string(), "School URN", nullable=False),
        _field("upn", pa.string(), "Unique Pupil Number", nullable=False),
        _field("date", pa.date32(), "Register day of the mark", nullable=False),
        _field("session", pa.string(), "AM or PM", nullable=False),
        _field("code", pa.string(), "Register code", nullable=False),
        _field("is_possible", pa.bool_(), "Counts in possible sessions"),
        _field("is_present", pa.bool_(), "Present (/, \\, L)"),
        _field("is_approved_educational_activity", pa.bool_(), "Approved educational activity (B, J, K, P, V, W)"),
        _field("is_authorised", pa.bool_(), "Authorised absence"),
        _field("is_unauthorised", pa.bool_(), "Unauthorised absence"),
        _field("is_late", pa.bool_(), "Late (L or U)"),
        _field("extract_id", pa.string(), "Extract that carried this version of the mark"),
        _field("generated_at", UTC_TS, "When the contractor took that extract (newest wins)"),
        _field("ingested_at", UTC_TS, "When this row was committed"),
    ]),
    partition_by=("date",),
    key=("urn", "upn", "date", "session"),
    purpose="One row per pupil, date and session: the latest mark (newest generated_at wins).",
    pupil_level=True,
)

PUPILS = TableContract(
    name="pupils",
    zone=Zone.RESTRICTED,
    schema=pa.schema([
        _field("urn", pa.string(), "School URN", nullable=False),
        _field("upn", pa.string(), "Unique Pupil Number", nullable=False),
        _field("date_of_birth", pa.date32(), "Date of birth"),
        _field("sex", pa.string(), "M or F"),
        _field("nc_year_group", pa.string(), "National curriculum year group"),
        _field("ethnicity", pa.string(), "Census ethnicity code"),
        _field("fsm_eligible", pa.bool_(), "Eligible for free school meals"),
        _field("sen_provision", pa.string(), "N none, K SEN support, E EHC plan"),
        _field("looked_after", pa.bool_(), "Looked-after child"),
        _field("child_in_need", pa.bool_(), "Child in need (null: unknown)"),
        _field("child_protection_plan", pa.bool_(), "On a child protection plan (null: unknown)"),
        _field("admission_date", pa.date32(), "Admission date"),
        _field("leaving_date", pa.date32(), "Leaving date, if left"),
        _field("extract_id", pa.string(), "Extract that carried this version"),
        _field("generated_at", UTC_TS, "When that extract was taken (newest wins)"),
        _field("current_since", UTC_TS, "When this version became current in the table"),
    ]),
    partition_by=(),
    key=("urn", "upn"),
    purpose="The latest characteristics of each pupil at each school.",
    pupil_level=True,
)

# Staging: the worker appends here what would otherwise be a MERGE per batch (marks of school-days the
# sessions table already holds, and every pupil record); ``storage.sink.DeltaSink.fold`` MERGEs them into
# attendance_sessions and pupils, newest wins, and removes what it folded. A MERGE rewrites every file it
# touches, and amendments touch most files of their day: one MERGE per fold instead of one per batch keeps
# the cost of a day's writes proportional to the day, not to batches x history (docs/tables.md).
STAGED_SESSIONS = TableContract(
    name="staged_sessions",
    zone=Zone.RESTRICTED,
    schema=ATTENDANCE_SESSIONS.schema,
    partition_by=("date",),
    key=("urn", "upn", "date", "session", "generated_at"),
    purpose="Marks awaiting the next fold into attendance_sessions: amendments of earlier days and repeated "
            "extracts of a school-day already stored. Empty after a fold.",
    pupil_level=True,
)

STAGED_PUPILS = TableContract(
    name="staged_pupils",
    zone=Zone.RESTRICTED,
    schema=PUPILS.schema.append(_field(
        "fold_range", pa.int32(), "URN range the fold rewrites this row in (storage.sink: one range at a time)",
        nullable=False)),
    partition_by=("fold_range",),
    key=("urn", "upn", "generated_at"),
    purpose="Pupil records awaiting the next fold into pupils (current_since: when the record was staged). "
            "Empty after a fold.",
    pupil_level=True,
)

SESSION_SCHOOL_DAYS = TableContract(
    name="session_school_days",
    zone=Zone.RESTRICTED,
    schema=pa.schema([
        _field("urn", pa.string(), "School URN", nullable=False),
        _field("date", pa.date32(), "Register day", nullable=False),
    ]),
    partition_by=("date",),
    key=("urn", "date"),
    purpose="Every school-day attendance_sessions may hold, written before the rows themselves: the sink appends "
            "a school-day's marks without a MERGE only when it is not here. May hold a school-day the sessions "
            "table does not (a crash between the two commits), never the reverse.",
    pupil_level=False,
)

EXTRACTS = TableContract(
    name="extracts",
    zone=Zone.RESTRICTED,
    schema=pa.schema([
        _field("extract_id", pa.string(), "Extract id (UUID)", nullable=False),
        _field("urn", pa.string(), "School URN", nullable=False),
        _field("laestab", pa.string(), "LAESTAB as sent"),
        _field("extract_date", pa.date32(), "Register day the extract was taken for"),
        _field("generated_at", UTC_TS, "When the contractor took it"),
        _field("chunk_count", pa.int32(), "Chunks the extract declared"),
        _field("chunks_received", pa.int32(), "Distinct chunks that arrived"),
        _field("pupil_count", pa.int32(), "Pupils the extract declared"),
        _field("pupils_accepted", pa.int32(), "Pupils stored"),
        _field("pupils_rejected", pa.int32(), "Pupils quarantined"),
        _field("marks_accepted", pa.int32(), "Marks stored"),
        _field("marks_rejected", pa.int32(), "Marks quarantined"),
        _field("status", pa.string(), "complete, incomplete, rejected, or dropped_opt_out"),
        _field("first_seen_at", UTC_TS, "First chunk consumed"),
        _field("last_seen_at", UTC_TS, "Last chunk consumed"),
    ]),
    partition_by=(),
    key=("extract_id",),
    purpose="One row per school-day extract: what arrived, what was kept, and its status.",
    pupil_level=False,
)

# Staged like the marks and pupils above: a MERGE into `extracts` per batch cost 0.1-0.3 s (growing with the
# day's files) of a national day's ~0.65 s batch write; the fold MERGEs them once.
STAGED_EXTRACTS = TableContract(
    name="staged_extracts",
    zone=Zone.RESTRICTED,
    schema=EXTRACTS.schema,
    partition_by=(),
    key=("extract_id", "last_seen_at"),
    purpose="Extract rows awaiting the next fold into extracts (newest last_seen_at wins; first_seen_at the "
            "earliest). Empty after a fold.",
    pupil_level=False,
)

QUARANTINE = TableContract(
    name="quarantine",
    zone=Zone.RESTRICTED,
    schema=pa.schema([
        _field("extract_id", pa.string(), "Extract id, when it could be read"),
        _field("urn", pa.string(), "School URN, when it could be read"),
        _field("extract_date", pa.date32(), "Extract date, when it could be read"),
        _field("chunk_index", pa.int32(), "Chunk, when it could be read"),
        _field("topic", pa.string(), "Kafka topic"),
        _field("partition", pa.int32(), "Kafka partition"),
        _field("offset", pa.int64(), "Kafka offset of the message"),
        _field("pupil_position", pa.int32(), "0-based pupil position in the chunk (pupil/mark rejections)"),
        _field("mark_position", pa.int32(), "0-based mark position within the pupil (mark rejections)"),
        _field("field", pa.string(), "The field at fault"),
        _field("reason_code", pa.string(), "Stable reason code (see `attendance rules`)", nullable=False),
        _field("severity", pa.string(), "message, pupil, mark or warn", nullable=False),
        _field("detail", pa.string(), "What is wrong, never a pupil's value"),
        _field("raw_message", pa.binary(), "The message bytes, for message-level rejections (replay)"),
        _field("quarantined_at", UTC_TS, "When it was quarantined", nullable=False),
        _field("replayed_at", UTC_TS, "When it was re-submitted, if it was"),
    ]),
    partition_by=(),
    key=("topic", "partition", "offset", "pupil_position", "mark_position", "reason_code"),
    purpose="Everything rejected, with a reason an analyst can send to the contractor.",
    pupil_level=True,
)

OPTOUT_AUDIT = TableContract(
    name="optout_audit",
    zone=Zone.RESTRICTED,
    schema=pa.schema([
        _field("urn", pa.string(), "School URN", nullable=False),
        _field("extract_id", pa.string(), "Extract whose data was dropped"),
        _field("extract_date", pa.date32(), "Its register day"),
        _field("pupils_dropped", pa.int32(), "Pupils not stored"),
        _field("marks_dropped", pa.int32(), "Marks not stored"),
        _field("optout_effective_at", UTC_TS, "When the opt-out took effect"),
        _field("dropped_at", UTC_TS, "When the data was dropped", nullable=False),
    ]),
    partition_by=(),
    key=("urn", "extract_id"),
    purpose="Count-level record of data dropped because its school had opted out: no pupil field.",
    pupil_level=False,
)

DESTRUCTION_LOG = TableContract(
    name="destruction_log",
    zone=Zone.RESTRICTED,
    schema=pa.schema([
        _field("destruction_id", pa.string(), "UUID of this destruction", nullable=False),
        _field("action", pa.string(), "purge (opt-out) or retention", nullable=False),
        _field("urn", pa.string(), "School, for a purge"),
        _field("table_name", pa.string(), "Table destroyed from", nullable=False),
        _field("predicate", pa.string(), "What was deleted"),
        _field("reason", pa.string(), "Why"),
        _field("rows_deleted", pa.int64(), "Rows deleted"),
        _field("files_removed", pa.int64(), "Parquet files physically removed by vacuum"),
        _field("version_before", pa.int64(), "Delta version before"),
        _field("version_after", pa.int64(), "Delta version after"),
        _field("requested_by", pa.string(), "Who asked"),
        _field("executed_at", UTC_TS, "When", nullable=False),
    ]),
    partition_by=(),
    key=("destruction_id", "table_name"),
    purpose="Every destruction of pupil-level data: what, why, rows, files, versions, who and when.",
    pupil_level=False,
)

TABLES: dict[str, TableContract] = {
    t.name: t for t in (SCHOOLS, ATTENDANCE_SESSIONS, PUPILS, EXTRACTS, QUARANTINE, OPTOUT_AUDIT, DESTRUCTION_LOG,
                        STAGED_SESSIONS, STAGED_PUPILS, STAGED_EXTRACTS, SESSION_SCHOOL_DAYS)
}


def table(name: str) -> TableContract:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(sorted(TABLES))}") from None


def register(contract: TableContract) -> TableContract:
    """Add a table contract (statistics and access modules declare theirs through this)."""
    TABLES[contract.name] = contract
    return contract
