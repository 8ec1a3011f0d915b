"""Subject access: everything the platform holds about one pupil, exported for the data protection officer.

Every table in the lake is considered, not a fixed list, so a table added later is not missed:

* a table with a ``upn`` column: the rows of that UPN (restricted sessions and pupils);
* a table with a ``pupil_key`` column: the rows of HMAC(key, UPN) (the pseudonymised zone);
* ``quarantine`` (no UPN column): the rejections whose stored message contains the UPN; the message
  bytes are not exported, because a message carries other pupils' records too;
* ``access_audit``: earlier subject-access requests about this pupil (by ``subject_pupil_key``);
* a pupil-level table with none of these columns is listed in the manifest as "review by hand";
* every other table holds no pupil-level data (school-level and LA-level aggregates, published files,
  the register, extract bookkeeping) and is listed as such.

The export is one CSV per table with rows, and ``manifest.json`` (tables searched, Delta versions, row
counts, notes). The request is audited like every other read; the audit row holds the pupil's keyed
hash, never the UPN.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from access import audit
from access.gateway import Source, build_catalogue
from access.policy import AccessRefused, TableInfo, load_policy, policy
from access.pseudonymise import PupilKeyer
from attendance.errors import UserFacingError
from schemas.upn import is_valid_upn
from storage.tables import Zone

ROLE = "data_protection_officer"

GENERAL_NOTES = (
    "School-level and local-authority-level aggregate tables hold counts over many pupils and no "
    "pupil-level data; they are not exported.",
    "Published statistics files contain nothing identifying a child.",
    "Extract messages are also kept on the Kafka extracts topic for its retention period (14 days by "
    "default) and on the dead-letter topic (30 days); they are deleted by age and are not searched here.",
    "Quarantine rows are matched by searching the stored message for the UPN; rejections stored without "
    "the message (a single pupil's or mark's rejection) cannot be linked to a pupil.",
)


@dataclass(frozen=True)
class SubjectAccessResult:
    out_dir: Path
    manifest: Path
    rows_by_table: Mapping[str, int]

    @property
    def total_rows(self) -> int:
        return sum(self.rows_by_table.values())


def _flat(frame: pl.DataFrame) -> pl.DataFrame:
    """Nested columns as JSON text and binary dropped, so the rows fit a CSV file."""
    out = []
    for name, dtype in frame.schema.items():
        if dtype == pl.Binary:
            continue
        if isinstance(dtype, (pl.List, pl.Struct, pl.Array)):
            out.append(
                pl.Series(name, [json.dumps(v, default=str) for v in frame[name].to_list()], pl.String)
            )
        else:
            out.append(frame[name])
    return pl.DataFrame(out) if out else pl.DataFrame()


def _match(info: TableInfo, upn: str, key: str) -> tuple[str, pl.Expr] | None:
    columns = set(info.columns)
    if "upn" in columns:
        return "upn", pl.col("upn") == upn
    if "pupil_key" in columns:
        return "pupil_key", pl.col("pupil_key") == key
    if "subject_pupil_key" in columns:
        return "subject_pupil_key", pl.col("subject_pupil_key") == key
    if "raw_message" in columns:
        return "raw_message contains the UPN", pl.col("raw_message").bin.contains(upn.encode("utf-8"))
    return None


def _scan(source: Source, storage_options: Mapping[str, str]) -> tuple[pl.LazyFrame | None, int | None]:
    if source.kind == "delta":
        try:
            table = DeltaTable(source.uri, storage_options=dict(storage_options))
        except TableNotFoundError:
            return None, None
        return pl.scan_delta(table), table.version()
    if source.kind == "csv":
        return pl.scan_csv(source.uri, infer_schema=False), None
    return pl.scan_parquet(source.uri), None


def subject_access(
    upn: str,
    out_dir: Path,
    *,
    lake_uri: str,
    key: str | bytes,
    user: str,
    reference: str | None = None,
    storage_options: Mapping[str, str] | None = None,
    role: str = ROLE,
) -> SubjectAccessResult:
    """Export everything held about the pupil with ``upn`` into ``out_dir`` (created; must be empty)."""
    from storage.lake import storage_options as lake_storage_options

    started = time.perf_counter()
    opts = dict(storage_options if storage_options is not None else lake_storage_options(lake_uri=lake_uri))
    pol = load_policy()
    purpose = "subject access request" + (f" {reference}" if reference else "")

    def refuse(rule: str, message: str, subject_key: str | None = None) -> AccessRefused:
        audit.append(
            lake_uri,
            [
                audit.AuditEvent(
                    action="subject_access",
                    user=user,
                    role=role,
                    scope=None,
                    purpose=purpose,
                    outcome="refused",
                    refusal_rule=rule,
                    message=message,
                    policy_version=pol.version,
                    subject_pupil_key=subject_key,
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
            ],
            opts,
        )
        return AccessRefused(rule, message)

    try:
        grant = policy(role, None, pol=pol)
    except AccessRefused as exc:
        raise refuse(exc.rule, exc.reason) from None
    if not grant.subject_access:
        raise refuse(
            "subject-access-role", f"role {role!r} may not export subject access requests; use --role {ROLE}"
        )
    upn = upn.strip().upper()
    if not is_valid_upn(upn):
        raise refuse("upn-invalid", "the UPN given is not a valid UPN (13 characters, check letter first)")
    keyer = PupilKeyer(key)
    subject_key = keyer.hexdigest(upn)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserFacingError(f"{out_dir} is not empty: give a new directory for the export")

    catalogue, sources = build_catalogue(lake_uri, opts)
    catalogue[audit.ACCESS_AUDIT.name] = TableInfo.from_contract(audit.ACCESS_AUDIT)
    sources[audit.ACCESS_AUDIT.name] = Source("delta", audit.ACCESS_AUDIT.path(lake_uri), Zone.AUDIT)

    entries: list[dict[str, object]] = []
    exports: list[tuple[str, pl.DataFrame]] = []
    rows_by_table: dict[str, int] = {}
    versions: dict[str, int | None] = {}
    for name in sorted(catalogue, key=lambda n: (list(Zone).index(catalogue[n].zone), n)):
        info = catalogue[name]
        qualified = f"{info.zone.value}/{name}"
        entry: dict[str, object] = {"table": qualified, "zone": info.zone.value}
        match = _match(info, upn, subject_key)
        if match is None:
            entry["note"] = (
                "pupil-level table without a UPN or pupil_key column: review by hand"
                if info.pupil_level
                else "holds no pupil-level data"
            )
            entries.append(entry)
            continue
        frame, version = _scan(sources[name], opts)
        if frame is None:
            entry["note"] = "not written yet"
            entries.append(entry)
            continue
        matched_by, predicate = match
        rows = frame.filter(predicate).collect()
        versions[qualified] = version
        entry.update({"version": version, "matched_by": matched_by, "rows": rows.height})
        if "raw_message" in rows.columns:
            entry["note"] = "raw_message withheld: it carries other pupils' records"
        if rows.height:
            file_name = f"{info.zone.value}__{name}.csv"
            exports.append((file_name, _flat(rows)))
            entry["file"] = file_name
        rows_by_table[qualified] = rows.height
        entries.append(entry)

    manifest = {
        "request": {
            "reference": reference,
            "requested_by": user,
            "role": role,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "policy_version": pol.version,
            "subject_pupil_key": subject_key,
            "lake_uri": lake_uri,
        },
        "tables": entries,
        "notes": list(GENERAL_NOTES),
    }
    # Audit first: no export leaves without its audit row.
    audit.append(
        lake_uri,
        [
            audit.AuditEvent(
                action="subject_access",
                user=user,
                role=role,
                scope=None,
                purpose=purpose,
                outcome="allowed",
                sql=None,
                tables=sorted(versions),
                table_versions=versions,
                rows_returned=sum(rows_by_table.values()),
                policy_version=pol.version,
                subject_pupil_key=subject_key,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        ],
        opts,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for file_name, rows in exports:
        rows.write_csv(out_dir / file_name)
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return SubjectAccessResult(out_dir=out_dir, manifest=manifest_path, rows_by_table=rows_by_table)
