"""The pseudonymised zone: pupil-level rows without a UPN or a date of birth, for DfE analysts.

* ``pupil_sessions_pseudo``: ``attendance_sessions`` with ``upn`` replaced by
  ``pupil_key = HMAC-SHA256(key, upn)`` (lower-case hex, 64 characters).
* ``pupils_pseudo``: ``pupils`` without ``upn`` and ``date_of_birth``; instead ``pupil_key``, the
  ``academic_year`` of the row (from when its extract was taken) and ``age_at_31_august``, the pupil's
  age on 31 August before that academic year: the age the attendance statistics use ("age as at start
  of academic year", EES methodology pupil-attendance-in-schools; the school census counts "pupils aged
  between 5 and 15 years as at 31/08").

The key comes from ``ATTENDANCE_PSEUDONYMISATION_KEY`` (at least 32 characters; generate one with
``python -c "import secrets; print(secrets.token_hex(32))"``) and lives in a secret store, never in the
lake: without it a ``pupil_key`` cannot be turned back into a UPN by trying every UPN. There is no
default key, not even in development; tests pass one explicitly.

HMAC is computed once per distinct UPN of each batch of rows (Arrow dictionary encoding), with the key's
inner and outer SHA-256 states precomputed (RFC 2104): a day's two sessions of a pupil cost one HMAC, and
the one Python loop runs over distinct pupils, not rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from attendance.errors import UserFacingError
from storage.tables import ATTENDANCE_SESSIONS, PUPILS, UTC_TS, TableContract, Zone, register

log = logging.getLogger(__name__)

KEY_ENV = "ATTENDANCE_PSEUDONYMISATION_KEY"
MIN_KEY_LENGTH = 32
_SHA256_BLOCK = 64


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


def _copied(contract: TableContract, names: Iterable[str]) -> list[pa.Field]:
    return [contract.schema.field(name) for name in names]


_PUPIL_KEY = _field(
    "pupil_key", pa.string(), "HMAC-SHA256 of the UPN under a key held outside the lake (hex)", nullable=False
)
_PSEUDONYMISED_AT = _field("pseudonymised_at", UTC_TS, "When this row was written to the pseudonymised zone")

PUPIL_SESSIONS_PSEUDO = register(
    TableContract(
        name="pupil_sessions_pseudo",
        zone=Zone.PSEUDONYMISED,
        schema=pa.schema(
            _copied(ATTENDANCE_SESSIONS, ["urn"])
            + [_PUPIL_KEY]
            + _copied(
                ATTENDANCE_SESSIONS,
                [
                    "date",
                    "session",
                    "code",
                    "is_possible",
                    "is_present",
                    "is_approved_educational_activity",
                    "is_authorised",
                    "is_unauthorised",
                    "is_late",
                    "extract_id",
                    "generated_at",
                    "ingested_at",
                ],
            )
            + [_PSEUDONYMISED_AT]
        ),
        partition_by=("date",),
        key=("urn", "pupil_key", "date", "session"),
        purpose="attendance_sessions with the UPN replaced by a keyed hash (pupil_key): for DfE analysts.",
        pupil_level=True,
    )
)

_PUPILS_KEPT = [
    "sex",
    "nc_year_group",
    "ethnicity",
    "fsm_eligible",
    "sen_provision",
    "looked_after",
    "child_in_need",
    "child_protection_plan",
    "admission_date",
    "leaving_date",
    "extract_id",
    "generated_at",
    "current_since",
]

PUPILS_PSEUDO = register(
    TableContract(
        name="pupils_pseudo",
        zone=Zone.PSEUDONYMISED,
        schema=pa.schema(
            _copied(PUPILS, ["urn"])
            + [
                _PUPIL_KEY,
                _field("academic_year", pa.string(), "Academic year of the row (YYYYZZ, e.g. 202526)"),
                _field("age_at_31_august", pa.int16(), "Age on 31 August before that academic year"),
            ]
            + _copied(PUPILS, _PUPILS_KEPT)
            + [_PSEUDONYMISED_AT]
        ),
        partition_by=(),
        key=("urn", "pupil_key"),
        purpose="pupils without UPN or date of birth: keyed hash and age at 31 August instead. "
        "For DfE analysts.",
        pupil_level=True,
    )
)


# --- the key and the hash --------------------------------------------------------------------------------


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes:
    """The pseudonymisation key from ``ATTENDANCE_PSEUDONYMISATION_KEY``; a clear error when it is unset."""
    value = (os.environ if environ is None else environ).get(KEY_ENV, "")
    if not value:
        raise UserFacingError(
            f"{KEY_ENV} is not set: the pseudonymisation key comes from the secret store and is never kept "
            'in the lake (generate one with: python -c "import secrets; print(secrets.token_hex(32))")'
        )
    return check_key(value)


def check_key(key: str | bytes) -> bytes:
    """``key`` as bytes (UTF-8 for text), refused when shorter than 32 characters."""
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_LENGTH:
        raise UserFacingError(f"the pseudonymisation key must be at least {MIN_KEY_LENGTH} characters long")
    return raw


class PupilKeyer:
    """HMAC-SHA256 with a fixed key, the pads' SHA-256 states computed once (RFC 2104)."""

    def __init__(self, key: str | bytes) -> None:
        raw = check_key(key)
        if len(raw) > _SHA256_BLOCK:
            raw = hashlib.sha256(raw).digest()
        raw = raw.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in raw))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in raw))

    def hexdigest(self, value: str) -> str:
        inner = self._inner.copy()
        inner.update(value.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def keys(self, upns: pa.Array | pa.ChunkedArray) -> pa.Array:
        """``pupil_key`` for every value of ``upns`` (nulls stay null), one HMAC per distinct value."""
        if isinstance(upns, pa.ChunkedArray):
            upns = upns.combine_chunks() if upns.num_chunks else pa.array([], pa.string())
        encoded = pc.dictionary_encode(upns.cast(pa.string()))
        inner, outer = self._inner, self._outer
        digests = []
        for value in encoded.dictionary.to_pylist():  # distinct values only: the one Python loop
            i = inner.copy()
            i.update(value.encode("utf-8"))
            o = outer.copy()
            o.update(i.digest())
            digests.append(o.hexdigest())
        return pc.take(pa.array(digests, pa.string()), encoded.indices)


def pupil_key(key: str | bytes, upn: str) -> str:
    """The pseudonymised key of one UPN (for subject access and tests)."""
    return PupilKeyer(key).hexdigest(upn)


# --- column-wise transforms (pure) ------------------------------------------------------------------------


def academic_year_start(day: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The calendar year in which the academic year containing ``day`` began (1 September)."""
    year = pc.year(day)
    return pc.if_else(pc.greater_equal(pc.month(day), 9), year, pc.subtract(year, 1))


def age_at_31_august(
    date_of_birth: pa.Array | pa.ChunkedArray, start_year: pa.Array | pa.ChunkedArray
) -> pa.Array | pa.ChunkedArray:
    """Age in whole years on 31 August of ``start_year``: born in September or later of a year, the
    birthday has not come yet by 31 August."""
    age = pc.subtract(start_year, pc.year(date_of_birth))
    return pc.if_else(pc.greater(pc.month(date_of_birth), 8), pc.subtract(age, 1), age).cast(pa.int16())


def academic_year_label(start_year: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """YYYYZZ labels (2025 -> "202526"), the EES time_period form."""
    following = pc.cast(pc.add(start_year, 1), pa.string())
    return pc.binary_join_element_wise(
        pc.cast(start_year, pa.string()), pc.utf8_slice_codeunits(following, 2, 4), ""
    )


def pseudonymise_sessions(sessions: pa.Table, keyer: PupilKeyer, pseudonymised_at: datetime) -> pa.Table:
    """attendance_sessions rows -> pupil_sessions_pseudo rows (column-wise)."""
    columns = {}
    for f in PUPIL_SESSIONS_PSEUDO.schema:
        if f.name == "pupil_key":
            columns[f.name] = keyer.keys(sessions.column("upn"))
        elif f.name == "pseudonymised_at":
            columns[f.name] = pa.repeat(pa.scalar(pseudonymised_at, UTC_TS), sessions.num_rows)
        else:
            columns[f.name] = sessions.column(f.name).cast(f.type)
    return pa.Table.from_pydict(columns, schema=PUPIL_SESSIONS_PSEUDO.schema)


def pseudonymise_pupils(pupils: pa.Table, keyer: PupilKeyer, pseudonymised_at: datetime) -> pa.Table:
    """pupils rows -> pupils_pseudo rows (column-wise): UPN and date of birth dropped."""
    as_of = pupils.column("generated_at")
    fallback = pa.scalar(pseudonymised_at.date(), pa.date32())
    row_day = (
        pc.fill_null(pc.cast(as_of, pa.date32()), fallback) if pupils.num_rows else pa.array([], pa.date32())
    )
    start = academic_year_start(row_day)
    columns: dict[str, object] = {
        "urn": pupils.column("urn"),
        "pupil_key": keyer.keys(pupils.column("upn")),
        "academic_year": academic_year_label(start),
        "age_at_31_august": age_at_31_august(pupils.column("date_of_birth"), start),
    }
    for name in _PUPILS_KEPT:
        columns[name] = pupils.column(name)
    columns["pseudonymised_at"] = pa.repeat(pa.scalar(pseudonymised_at, UTC_TS), pupils.num_rows)
    return pa.Table.from_pydict(columns, schema=PUPILS_PSEUDO.schema)


# --- the edge: refresh the zone from the restricted tables ------------------------------------------------


@dataclass(frozen=True)
class PseudonymiseResult:
    sessions_source_version: int | None
    pupils_source_version: int | None
    session_rows: int
    pupil_rows: int
    dates_refreshed: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return (self.session_rows + self.pupil_rows) / self.seconds if self.seconds > 0 else 0.0


def _open(path: str, storage_options: Mapping[str, str], version: int | None = None) -> DeltaTable | None:
    try:
        return DeltaTable(path, version=version, storage_options=dict(storage_options))
    except TableNotFoundError:
        return None


def _dates_of(table: DeltaTable) -> dict[str, date]:
    """Data file path -> its date partition value."""
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return {}
    return dict(
        zip(actions.column("path").to_pylist(), actions.column("partition.date").to_pylist(), strict=True)
    )


def changed_dates(
    path: str, since_version: int, storage_options: Mapping[str, str] | None = None
) -> set[date]:
    """Date partitions of a date-partitioned Delta table whose data files changed after ``since_version``
    (files added or removed: writes, merges, purges and retention deletes alike)."""
    opts = dict(storage_options or {})
    now = _open(path, opts)
    if now is None:
        return set()
    then = _open(path, opts, version=since_version)
    before = _dates_of(then) if then is not None else {}
    after = _dates_of(now)
    return {after[p] for p in after.keys() - before.keys()} | {
        before[p] for p in before.keys() - after.keys()
    }


def last_source_version(lake_uri: str, storage_options: Mapping[str, str] | None = None) -> int | None:
    """The attendance_sessions version the pseudonymised sessions were last refreshed from, if recorded."""
    target = _open(PUPIL_SESSIONS_PSEUDO.path(lake_uri), dict(storage_options or {}))
    if target is None:
        return None
    for commit in target.history():
        if "source_version" in commit:
            return int(commit["source_version"])
    return None


def _date_list(dates: Iterable[date]) -> str:
    return ", ".join(f"'{d.isoformat()}'" for d in sorted(dates))


def pseudonymise(
    lake_uri: str,
    key: str | bytes,
    since_version: int | None = None,
    *,
    storage_options: Mapping[str, str] | None = None,
    dates_per_commit: int = 1,
    batch_rows: int = 1_000_000,
    now: datetime | None = None,
) -> PseudonymiseResult:
    """Rebuild (``since_version=None``) or refresh the pseudonymised zone from the restricted tables.

    Sessions: every date partition of ``attendance_sessions`` (or only those whose files changed after
    ``since_version``) is rewritten in ``pupil_sessions_pseudo`` with a partition-scoped overwrite, so
    rows deleted upstream (opt-out purge, retention) disappear here too; dates present here but gone
    upstream are emptied. Pupils: ``pupils_pseudo`` is rebuilt whole (one row per pupil and school).
    Each commit records the source version it was built from (``last_source_version``).
    """
    from storage.lake import ensure_table
    from storage.lake import storage_options as lake_storage_options

    started = time.perf_counter()
    keyer = PupilKeyer(key)
    now = now or datetime.now(UTC)
    opts = dict(storage_options if storage_options is not None else lake_storage_options(lake_uri=lake_uri))

    # Marks and pupil records a worker staged but has not folded yet count (storage.current).
    from storage.sink import fold_staged

    fold_staged(lake_uri, opts)
    session_rows = 0
    dates_refreshed = 0
    sessions = _open(ATTENDANCE_SESSIONS.path(lake_uri), opts)
    sessions_version = sessions.version() if sessions is not None else None
    target_path = PUPIL_SESSIONS_PSEUDO.path(lake_uri)
    if sessions is not None:
        target = ensure_table(PUPIL_SESSIONS_PSEUDO, lake_uri, opts)
        source_dates = {date.fromisoformat(p["date"]) for p in sessions.partitions()}
        target_dates = {date.fromisoformat(p["date"]) for p in target.partitions()}
        if since_version is None:
            todo = source_dates | target_dates
        else:
            todo = changed_dates(ATTENDANCE_SESSIONS.path(lake_uri), since_version, opts) | (
                target_dates - source_dates
            )
        dataset = sessions.to_pyarrow_dataset()
        ordered = sorted(todo)
        for start in range(0, len(ordered), dates_per_commit):
            batch = ordered[start : start + dates_per_commit]
            counter = [0]

            # The source rows are read before the write starts: deltalake cannot read a table from inside
            # its own writer's stream (nested runtime). The pseudonymised rows are then streamed in batches.
            source = dataset.to_table(filter=pc.field("date").isin(pa.array(batch, pa.date32())))

            def pseudonymised_batches(
                source: pa.Table = source, counter: list[int] = counter
            ) -> Iterator[pa.RecordBatch]:
                for rows in source.to_batches(max_chunksize=batch_rows):
                    pseudo = pseudonymise_sessions(pa.Table.from_batches([rows]), keyer, now)
                    counter[0] += pseudo.num_rows
                    yield from pseudo.to_batches()

            write_deltalake(
                target_path,
                pa.RecordBatchReader.from_batches(PUPIL_SESSIONS_PSEUDO.schema, pseudonymised_batches()),
                mode="overwrite",
                predicate=f"date IN ({_date_list(batch)})",
                partition_by=list(PUPIL_SESSIONS_PSEUDO.partition_by),
                storage_options=opts,
                commit_properties=CommitProperties(custom_metadata={"source_version": str(sessions_version)}),
            )
            session_rows += counter[0]
            dates_refreshed += len(batch)

    pupil_rows = 0
    pupils = _open(PUPILS.path(lake_uri), opts)
    pupils_version = pupils.version() if pupils is not None else None
    if pupils is not None:
        ensure_table(PUPILS_PSEUDO, lake_uri, opts)
        pupil_counter = [0]
        pupil_source = pupils.to_pyarrow_dataset().to_table()

        def pseudonymised_pupils() -> Iterator[pa.RecordBatch]:
            for rows in pupil_source.to_batches(max_chunksize=batch_rows):
                pseudo = pseudonymise_pupils(pa.Table.from_batches([rows]), keyer, now)
                pupil_counter[0] += pseudo.num_rows
                yield from pseudo.to_batches()

        write_deltalake(
            PUPILS_PSEUDO.path(lake_uri),
            pa.RecordBatchReader.from_batches(PUPILS_PSEUDO.schema, pseudonymised_pupils()),
            mode="overwrite",
            storage_options=opts,
            commit_properties=CommitProperties(custom_metadata={"source_version": str(pupils_version)}),
        )
        pupil_rows = pupil_counter[0]

    seconds = time.perf_counter() - started
    log.info(
        "pseudonymised %d session rows over %d dates and %d pupil rows in %.2fs",
        session_rows,
        dates_refreshed,
        pupil_rows,
        seconds,
    )
    return PseudonymiseResult(
        sessions_version, pupils_version, session_rows, pupil_rows, dates_refreshed, seconds
    )
