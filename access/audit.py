"""The access audit: one row per query, refusal and subject-access export, appended and never rewritten.

``access_audit`` (zone ``audit``) is written by the read gateway and the subject-access export only,
with ``mode="append"``: no code path overwrites, merges into or deletes from it. A query whose audit row
cannot be written returns no data. No UPN is stored: UPN-shaped text in a query is replaced by
``<UPN>``, and a subject-access row holds the pupil's keyed hash (``subject_pupil_key``), not the UPN.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from storage.tables import UTC_TS, TableContract, Zone, register

#: UPN-shaped text anywhere in a string (schemas.upn.UPN_PATTERN without anchors; lower case too).
_UPN_ANYWHERE = re.compile(r"(?i)(?<![A-Z0-9])[A-HJ-NP-RT-Z]\d{11}[0-9A-HJ-NP-RT-Z](?![A-Z0-9])")

OUTCOMES = ("allowed", "refused", "error")


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


TABLE_VERSION = pa.struct([pa.field("table", pa.string()), pa.field("version", pa.int64())])

ACCESS_AUDIT = register(
    TableContract(
        name="access_audit",
        zone=Zone.AUDIT,
        schema=pa.schema(
            [
                _field("audit_id", pa.string(), "UUID of this audit row", nullable=False),
                _field("audit_date", pa.date32(), "Day of the event (UTC), the partition", nullable=False),
                _field("occurred_at", UTC_TS, "When the query or refusal happened", nullable=False),
                _field("action", pa.string(), "open, query or subject_access", nullable=False),
                _field("user", pa.string(), "Who asked (as given with --user / user=)", nullable=False),
                _field("role", pa.string(), "Role asked for", nullable=False),
                _field("scope", pa.string(), "Scope asked for (URN, trust code, LA code), if any"),
                _field("purpose", pa.string(), "Purpose given"),
                _field("sql", pa.string(), "The query, UPN-shaped text replaced by <UPN>"),
                _field("tables", pa.list_(pa.string()), "Tables the query named (zone/name)"),
                _field(
                    "table_versions",
                    pa.list_(TABLE_VERSION),
                    "Delta version of every table read (null: a file)",
                ),
                _field("rows_returned", pa.int64(), "Rows returned (0 when refused)"),
                _field("allowed", pa.bool_(), "True when data was returned", nullable=False),
                _field("outcome", pa.string(), "allowed, refused or error", nullable=False),
                _field("refusal_rule", pa.string(), "The policy rule or check that refused it"),
                _field("message", pa.string(), "Refusal or error message (UPN-shaped text redacted)"),
                _field("policy_version", pa.int64(), "access/policy.toml version in force"),
                _field("duration_ms", pa.float64(), "Time from request to answer"),
                _field(
                    "subject_pupil_key",
                    pa.string(),
                    "Subject access: HMAC of the pupil's UPN (never the UPN)",
                ),
            ]
        ),
        partition_by=("audit_date",),
        key=("audit_id",),
        purpose="Every read through the gateway and every refusal: who, role, scope, purpose, SQL, "
        "tables and versions, rows, outcome. Append-only.",
        pupil_level=False,
    )
)


def redact(text: str | None) -> str | None:
    """``text`` with every UPN-shaped substring replaced by ``<UPN>``."""
    return None if text is None else _UPN_ANYWHERE.sub("<UPN>", text)


@dataclass(frozen=True)
class AuditEvent:
    action: str
    user: str
    role: str
    scope: str | None
    purpose: str | None
    outcome: str
    sql: str | None = None
    tables: Sequence[str] = ()
    table_versions: Mapping[str, int | None] = field(default_factory=dict)
    rows_returned: int = 0
    refusal_rule: str | None = None
    message: str | None = None
    policy_version: int | None = None
    duration_ms: float | None = None
    subject_pupil_key: str | None = None
    occurred_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")


def audit_rows(events: Sequence[AuditEvent]) -> pa.Table:
    """Audit events as rows of ``access_audit`` (pure: redaction happens here)."""
    now = datetime.now(UTC)
    rows = []
    for e in events:
        at = e.occurred_at or now
        rows.append(
            {
                "audit_id": str(uuid.uuid4()),
                "audit_date": at.astimezone(UTC).date(),
                "occurred_at": at,
                "action": e.action,
                "user": redact(e.user) or "",
                "role": e.role,
                "scope": redact(e.scope),
                "purpose": redact(e.purpose),
                "sql": redact(e.sql),
                "tables": list(e.tables),
                "table_versions": [{"table": t, "version": v} for t, v in e.table_versions.items()],
                "rows_returned": e.rows_returned,
                "allowed": e.outcome == "allowed",
                "outcome": e.outcome,
                "refusal_rule": e.refusal_rule,
                "message": redact(e.message),
                "policy_version": e.policy_version,
                "duration_ms": e.duration_ms,
                "subject_pupil_key": e.subject_pupil_key,
            }
        )
    return pa.Table.from_pylist(rows, schema=ACCESS_AUDIT.schema)


def append(
    lake_uri: str, events: Sequence[AuditEvent], storage_options: Mapping[str, str] | None = None
) -> None:
    """Append ``events`` to ``access_audit`` (creating it on first use). Append only: never anything else."""
    from storage.lake import ensure_table
    from storage.lake import storage_options as lake_storage_options

    opts = dict(storage_options if storage_options is not None else lake_storage_options(lake_uri=lake_uri))
    ensure_table(ACCESS_AUDIT, lake_uri, opts)
    write_deltalake(ACCESS_AUDIT.path(lake_uri), audit_rows(events), mode="append", storage_options=opts)


def read(
    lake_uri: str, since: date | None = None, storage_options: Mapping[str, str] | None = None
) -> pa.Table:
    """The audit rows (from ``since`` on), oldest first; empty when nothing was audited yet."""
    from storage.lake import storage_options as lake_storage_options

    opts = dict(storage_options if storage_options is not None else lake_storage_options(lake_uri=lake_uri))
    try:
        table = DeltaTable(ACCESS_AUDIT.path(lake_uri), storage_options=opts)
    except TableNotFoundError:
        return ACCESS_AUDIT.schema.empty_table()
    frame = pl.scan_delta(table)
    if since is not None:
        frame = frame.filter(pl.col("audit_date") >= since)
    return frame.sort("occurred_at").collect().to_arrow()


def summarise(audit: pa.Table) -> pl.DataFrame:
    """Counts by role, user and outcome: requests, rows returned, refusal rules, first and last time."""
    frame = pl.from_arrow(audit)
    assert isinstance(frame, pl.DataFrame)
    if frame.height == 0:
        return pl.DataFrame(
            schema={
                "role": pl.String,
                "user": pl.String,
                "outcome": pl.String,
                "requests": pl.UInt32,
                "rows_returned": pl.Int64,
                "refusal_rules": pl.String,
                "first": pl.Datetime("us", "UTC"),
                "last": pl.Datetime("us", "UTC"),
            }
        )
    return (
        frame.group_by("role", "user", "outcome")
        .agg(
            pl.len().alias("requests"),
            pl.col("rows_returned").fill_null(0).sum().alias("rows_returned"),
            pl.col("refusal_rule").drop_nulls().unique().sort().str.join(", ").alias("refusal_rules"),
            pl.col("occurred_at").min().alias("first"),
            pl.col("occurred_at").max().alias("last"),
        )
        .sort("role", "user", "outcome")
    )
