"""The Delta sink: exactly-once writes of consumed batches, in the manner of delta-io/kafka-delta-ingest.

The worker (Faust, Kafka) hands over a ``SinkBatch``: Arrow tables for every table a batch touches, and
the last Kafka offset processed per (topic, partition). The sink

1. reads, per (topic, partition), the offset already stored in Delta (the ``txn`` action of
   ``app_id = f"{prefix}-{topic}-{partition}"``) and skips the batch when Delta already holds an offset
   >= the batch's (a replay after a crash or rebalance: delta-rs accepts a lower version, so the writer
   must check);
2. MERGEs the batch into pupils, extracts, quarantine and optout_audit (idempotent: newest wins, or
   insert-if-absent on the key);
3. commits the sessions MERGE LAST, with the offsets in the SAME Delta commit
   (``CommitProperties(app_transactions=[Transaction(app_id, offset), ...])``).

**The offsets table is ``attendance_sessions``**: every batch ends with one commit to it, carrying its
offsets, even when the batch has no session rows (then a commit with no data files, only ``txn``
actions). A crash before step 3 leaves the offset where it was: the batch is re-consumed and every MERGE
is replayed harmlessly. A crash after step 3 is a replay that step 1 skips.

Amendments: one row per (urn, upn, date, session); the newest ``generated_at`` wins, also against a late
older extract. Within a batch the newest row per key is kept first (column-wise, Polars).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from attendance import metrics
from storage import lake
from storage.tables import ATTENDANCE_SESSIONS, EXTRACTS, OPTOUT_AUDIT, PUPILS, QUARANTINE, TableContract

log = logging.getLogger(__name__)

#: The table whose commits carry the Kafka offsets (see module docstring).
OFFSETS_TABLE = ATTENDANCE_SESSIONS

#: Pupil columns whose change makes a new version of the pupil (``current_since`` moves).
PUPIL_CHARACTERISTICS = tuple(
    name for name in PUPILS.schema.names
    if name not in ("urn", "upn", "extract_id", "generated_at", "current_since")
)

TopicPartition = tuple[str, int]
_Offsets = dict[TopicPartition, int]


@dataclass
class _Progress:
    conflicts: int = 0
    table_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SinkBatch:
    """What one consumed batch writes. Any table may be None or empty.

    sessions: ATTENDANCE_SESSIONS columns (``ingested_at`` optional: the sink sets it at commit).
    pupils: PUPILS columns (``current_since`` optional: set by the sink when a version becomes current).
    extracts: EXTRACTS rows, the state of each extract as of this batch (newest ``last_seen_at`` wins).
    quarantine, optout_audit: rows of those tables (inserted once per key; replays add nothing).
    offsets: last processed Kafka offset per (topic, partition) covered by this batch.
    """

    sessions: pa.Table | None = None
    pupils: pa.Table | None = None
    extracts: pa.Table | None = None
    quarantine: pa.Table | None = None
    optout_audit: pa.Table | None = None
    offsets: Mapping[TopicPartition, int] = field(default_factory=dict)
    #: Last offset whose message this batch judged, per partition, when beyond ``offsets`` (a worker holding an
    #: incomplete extract commits behind its first chunk but writes the complete extracts after it).
    processed_through: Mapping[TopicPartition, int] | None = None


@dataclass(frozen=True)
class CommitResult:
    """What ``write_batch`` did."""

    replay_skipped: bool  # Delta already held every offset of the batch: nothing was written
    offsets_committed: dict[TopicPartition, int]  # offsets this batch advanced
    offsets_already_stored: dict[TopicPartition, int]  # (topic, partition) -> offset Delta already held
    rows_written: dict[str, int]  # table -> rows inserted or updated
    sessions_version: int | None  # Delta version of the sessions+offsets commit
    conflicts: int  # commit conflicts met (all retried)
    seconds: float  # the whole batch
    table_seconds: dict[str, float] = field(default_factory=dict)  # table -> seconds (incl. retries)


class DeltaCommitError(RuntimeError):
    """A commit still conflicted after the bounded retries: the batch was not committed (replay it)."""


def _is_conflict(exc: BaseException) -> bool:
    """A commit lost to a concurrent writer, or a read of files a concurrent destruction vacuumed away
    (``storage.destruction`` vacuums with zero retention): both succeed when retried on a fresh snapshot."""
    if isinstance(exc, CommitFailedError):
        return True
    if isinstance(exc, DeltaError | OSError):
        text = str(exc).lower()
        return any(sign in text for sign in (
            "concurrent", "conflict", "version already exists", "not found", "no such file"))
    return False


def _stale(offsets: Mapping[TopicPartition, int], stored: Mapping[TopicPartition, int]) -> bool:
    """Delta holds a later offset for one of the batch's partitions: the batch comes from a writer that lost
    the partition (or is an old replay). Equal is not stale (see ``SinkBatch.processed_through``)."""
    return any(stored.get(tp, -1) > offset for tp, offset in offsets.items())


def _replay(batch: SinkBatch, stored: Mapping[TopicPartition, int]) -> bool:
    """Skip the batch: it is stale, or every message it judged is already covered by Delta's offsets."""
    if not batch.offsets:
        return False
    processed = batch.processed_through or batch.offsets
    covered = all(tp in stored and stored[tp] >= offset for tp, offset in processed.items())
    return _stale(batch.offsets, stored) or covered


def dedupe_newest(data: pa.Table, key: tuple[str, ...], order_by: str) -> pa.Table:
    """One row per key: the one with the greatest ``order_by`` (the last such row in batch order on ties).

    Column-wise: a row hash finds the keys that occur more than once (usually none, or a few); only those
    rows are sorted and deduplicated exactly, the rest pass through untouched.
    """
    if data.num_rows < 2:
        return data
    frame = pl.from_arrow(data, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    hashes = frame.select(key).hash_rows()
    if hashes.n_unique() == frame.height:
        return data  # distinct hashes: distinct keys
    repeated = hashes.is_duplicated()
    position = pl.int_range(0, frame.height, eager=True).alias("__position")
    repeated_rows = (
        frame.with_columns(position).filter(repeated)
        .sort([order_by, "__position"], descending=True, nulls_last=True)
        .unique(subset=list(key), keep="first", maintain_order=False)
    )
    unique_positions = pl.Series("__position", position.filter(~repeated))
    kept = pl.concat([unique_positions, repeated_rows["__position"]]).sort()
    return data.take(kept.to_arrow())


def _null_safe_match(columns: tuple[str, ...]) -> str:
    return " AND ".join(f"(t.{name} IS NOT DISTINCT FROM s.{name})" for name in columns)


def _equal_match(columns: tuple[str, ...]) -> str:
    return " AND ".join(f"t.{name} = s.{name}" for name in columns)


class DeltaSink:
    """Writes ``SinkBatch``es to the lake exactly once per Kafka offset."""

    def __init__(self, lake_uri: str, storage_options: Mapping[str, str] | None = None,
                 app_id_prefix: str = "attendance-sink", *, max_attempts: int = 12,
                 backoff_base_s: float = 0.05, backoff_max_s: float = 5.0,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.lake_uri = lake_uri
        self.storage_options = dict(storage_options or {})
        self.app_id_prefix = app_id_prefix
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tables: dict[str, DeltaTable] = {}
        # The worker calls in from executor threads: one call at a time shares the cached tables.
        self._lock = threading.RLock()

    # --- offsets -------------------------------------------------------------------------------------

    def app_id(self, topic: str, partition: int) -> str:
        return f"{self.app_id_prefix}-{topic}-{partition}"

    def committed_offset(self, topic: str, partition: int) -> int | None:
        """The last Kafka offset of (topic, partition) durably written, or None if none yet.
        The worker resumes consuming at ``committed_offset + 1``."""
        with self._lock:
            return self._table(OFFSETS_TABLE, refresh=True).transaction_version(self.app_id(topic, partition))

    def _stored_offsets(self, delta: DeltaTable, offsets: Mapping[TopicPartition, int]
                        ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Split ``offsets`` into those that advance Delta's and those Delta already holds (>=)."""
        advancing: dict[TopicPartition, int] = {}
        stored: dict[TopicPartition, int] = {}
        for (topic, partition), offset in offsets.items():
            if offset < 0:
                raise ValueError(f"offset of {topic}[{partition}] must be >= 0, got {offset}")
            current = delta.transaction_version(self.app_id(topic, partition))
            if current is not None and current >= offset:
                stored[(topic, partition)] = current
            else:
                advancing[(topic, partition)] = offset
        return advancing, stored

    # --- writing -------------------------------------------------------------------------------------

    def write_batch(self, batch: SinkBatch) -> CommitResult:
        """Write one batch exactly once (see the module docstring). Thread-safe; raises
        ``DeltaCommitError`` when conflicts outlast the retries (nothing of the offsets was committed)."""
        with self._lock:
            return self._write_batch(batch)

    def _write_batch(self, batch: SinkBatch) -> CommitResult:
        started = time.perf_counter()
        progress = _Progress()
        offsets_table = self._table(OFFSETS_TABLE, refresh=True)
        advancing, stored = self._stored_offsets(offsets_table, batch.offsets)
        if _replay(batch, stored):
            log.info("replayed batch skipped: Delta already holds offsets %s", stored)
            return CommitResult(True, {}, stored, {}, None, 0, time.perf_counter() - started)

        now = self._clock()
        rows_written: dict[str, int] = {}
        if _has_rows(batch.pupils):
            rows_written[PUPILS.name] = self._merge_pupils(batch.pupils, now, advancing, progress)
        if _has_rows(batch.extracts):
            rows_written[EXTRACTS.name] = self._merge_extracts(batch.extracts, progress)
        if _has_rows(batch.quarantine):
            rows_written[QUARANTINE.name] = self._insert_new(QUARANTINE, batch.quarantine, progress)
        if _has_rows(batch.optout_audit):
            rows_written[OPTOUT_AUDIT.name] = self._insert_new(OPTOUT_AUDIT, batch.optout_audit, progress)

        sessions_rows, version, committed, already = self._commit_sessions_and_offsets(
            batch.sessions, batch.offsets, now, progress)
        rows_written[ATTENDANCE_SESSIONS.name] = sessions_rows
        stored.update(already)
        return CommitResult(
            replay_skipped=bool(batch.offsets) and not committed and sessions_rows == 0,
            offsets_committed=committed, offsets_already_stored=stored, rows_written=rows_written,
            sessions_version=version, conflicts=progress.conflicts, seconds=time.perf_counter() - started,
            table_seconds=progress.table_seconds,
        )

    def _commit_sessions_and_offsets(
        self, sessions: pa.Table | None, offsets: Mapping[TopicPartition, int], now: datetime,
        progress: _Progress,
    ) -> tuple[int, int | None, _Offsets, _Offsets]:
        """The batch's last commit: its offsets, with its session rows of school-days new to the table.

        Rows of a (urn, date) the table already holds (second extract of a day, amendments of earlier
        days) are MERGEd first (newest generated_at wins; idempotent, no offsets). Rows of a (urn, date)
        the table does not hold yet cannot match anything, so they are appended: no scan of the day's
        partition, and the append carries the offsets. Two writers can only race on the same school if
        they consume the same Kafka partition (extracts are keyed by URN), and then they commit the same
        app_id, which delta-rs refuses to commit twice concurrently: the loser retries, sees the school-day
        present and MERGEs instead. So no key is ever stored twice.
        """
        source = None
        if _has_rows(sessions):
            assert sessions is not None
            source = dedupe_newest(
                lake.conform(sessions, ATTENDANCE_SESSIONS, fill={"ingested_at": now}),
                ATTENDANCE_SESSIONS.key, "generated_at")
            source_school_days = _school_day_keys(source)

        def attempt() -> tuple[int, int | None, _Offsets, _Offsets]:
            delta = self._table(ATTENDANCE_SESSIONS, refresh=True)
            advancing, already = self._stored_offsets(delta, offsets)
            if _stale(offsets, already):
                return 0, None, {}, already  # another writer committed this batch meanwhile
            properties = CommitProperties(
                app_transactions=[Transaction(self.app_id(t, p), o) for (t, p), o in advancing.items()])
            version_before = delta.version()
            written = 0
            offsets_written = not advancing
            if source is not None:
                present = pc.is_in(source_school_days, value_set=self._present_school_days(delta, source))
                known, fresh = source.filter(present), source.filter(pc.invert(present))
                if known.num_rows:
                    result = (
                        delta.merge(known, _sessions_merge_predicate(known), source_alias="s",
                                    target_alias="t")
                        .when_matched_update_all(predicate="s.generated_at > t.generated_at")
                        .when_not_matched_insert_all()
                        .execute()
                    )
                    written += _rows_changed(result)
                if fresh.num_rows:
                    write_deltalake(delta, fresh, mode="append", commit_properties=properties)
                    written += fresh.num_rows
                    offsets_written = True
            if not offsets_written:
                # No new school-day rows: commit the offsets alone, as a commit with no data files
                # (a MERGE that changes nothing commits nothing in delta-rs, so it cannot carry them).
                delta.create_write_transaction(
                    [], mode="append", schema=ATTENDANCE_SESSIONS.schema,
                    partition_by=list(ATTENDANCE_SESSIONS.partition_by), commit_properties=properties)
            delta.update_incremental()
            version = delta.version() if delta.version() != version_before else None
            return written, version, advancing, already

        written, version, committed, already = self._with_retries(ATTENDANCE_SESSIONS, attempt, progress)
        metrics.DELTA_ROWS_WRITTEN.labels(table=ATTENDANCE_SESSIONS.name).inc(written)
        return written, version, committed, already

    @staticmethod
    def _present_school_days(delta: DeltaTable, source: pa.Table) -> pa.Array:
        """``urn|date`` of the source's school-days that the table already holds (partition-pruned query)."""
        query = (
            "SELECT DISTINCT urn, date FROM sessions WHERE "
            f"{lake.in_list('date', source.column('date').cast(pa.string()))} "
            f"AND {lake.in_list('urn', source.column('urn'))}"
        )
        present = pa.table(QueryBuilder().register("sessions", delta).execute(query).read_all())
        return _school_day_keys(present).combine_chunks() if present.num_rows else pa.array([], pa.string())

    def _merge_pupils(self, pupils: pa.Table, now: datetime, fence: Mapping[TopicPartition, int],
                      progress: _Progress) -> int:
        """Newest generated_at wins per (urn, upn). Pupils of schools the table does not hold yet are
        appended (nothing to match); the append carries the batch's app_ids as ``txn`` so that two writers
        of the same Kafka partition cannot both append the same school (the second commit conflicts,
        retries, finds the school present and MERGEs). Those ``txn`` versions are never read."""
        source = dedupe_newest(lake.conform(pupils, PUPILS, fill={"current_since": now}),
                               PUPILS.key, "generated_at")
        changed = " OR ".join(f"(t.{name} IS DISTINCT FROM s.{name})" for name in PUPIL_CHARACTERISTICS)
        newer = "s.generated_at > t.generated_at"
        properties = CommitProperties(
            app_transactions=[Transaction(self.app_id(t, p), o) for (t, p), o in fence.items()])

        def attempt() -> int:
            delta = self._table(PUPILS, refresh=True)
            query = f"SELECT DISTINCT urn FROM pupils WHERE {lake.in_list('urn', source.column('urn'))}"
            present_urns = pa.table(QueryBuilder().register("pupils", delta).execute(query).read_all())
            present = pc.is_in(source.column("urn"), value_set=present_urns.column("urn").cast(pa.string()))
            known, fresh = source.filter(present), source.filter(pc.invert(present))
            written = 0
            if known.num_rows:
                predicate = f"{_equal_match(PUPILS.key)} AND {lake.in_list('t.urn', known.column('urn'))}"
                result = (
                    delta.merge(known, predicate, source_alias="s", target_alias="t")
                    # A newer extract with different characteristics: a new version, current from now.
                    .when_matched_update_all(predicate=f"{newer} AND ({changed})")
                    # A newer extract saying the same: only the provenance moves (newest wins stays exact).
                    .when_matched_update(
                        updates={"extract_id": "s.extract_id", "generated_at": "s.generated_at"},
                        predicate=newer)
                    .when_not_matched_insert_all()
                    .execute()
                )
                written += _rows_changed(result)
            if fresh.num_rows:
                write_deltalake(delta, fresh, mode="append", commit_properties=properties)
                written += fresh.num_rows
            return written

        written = self._with_retries(PUPILS, attempt, progress)
        metrics.DELTA_ROWS_WRITTEN.labels(table=PUPILS.name).inc(written)
        return written

    def _merge_extracts(self, extracts: pa.Table, progress: _Progress) -> int:
        source = dedupe_newest(lake.conform(extracts, EXTRACTS), EXTRACTS.key, "last_seen_at")
        predicate = f"{_equal_match(EXTRACTS.key)} AND {lake.in_list('t.urn', source.column('urn'))}"

        def attempt() -> int:
            result = (
                self._table(EXTRACTS, refresh=True)
                .merge(source, predicate, source_alias="s", target_alias="t")
                .when_matched_update_all(
                    predicate="t.last_seen_at IS NULL OR s.last_seen_at >= t.last_seen_at",
                    except_cols=["extract_id", "first_seen_at"])
                .when_not_matched_insert_all()
                .execute()
            )
            return _rows_changed(result)

        written = self._with_retries(EXTRACTS, attempt, progress)
        metrics.DELTA_ROWS_WRITTEN.labels(table=EXTRACTS.name).inc(written)
        return written

    def _insert_new(self, contract: TableContract, data: pa.Table, progress: _Progress) -> int:
        """Insert the rows whose key is not in the table yet (key columns may be null: null-safe match)."""
        source = lake.conform(data, contract)
        frame = pl.from_arrow(source)
        assert isinstance(frame, pl.DataFrame)
        if frame.select(contract.key).is_duplicated().any():
            source = source.take(
                frame.with_row_index("__position").unique(subset=list(contract.key), keep="first")
                .sort("__position")["__position"].to_arrow())
        predicate = _null_safe_match(contract.key)
        if "urn" in contract.key and source.column("urn").null_count == 0:
            predicate += f" AND {lake.in_list('t.urn', source.column('urn'))}"

        def attempt() -> int:
            result = (
                self._table(contract, refresh=True)
                .merge(source, predicate, source_alias="s", target_alias="t")
                .when_not_matched_insert_all()
                .execute()
            )
            return int(result["num_target_rows_inserted"])

        written = self._with_retries(contract, attempt, progress)
        metrics.DELTA_ROWS_WRITTEN.labels(table=contract.name).inc(written)
        return written

    # --- plumbing ------------------------------------------------------------------------------------

    def _table(self, contract: TableContract, refresh: bool = False) -> DeltaTable:
        delta = self._tables.get(contract.name)
        if delta is None:
            delta = lake.ensure_table(contract, self.lake_uri, self.storage_options)
            self._tables[contract.name] = delta
        elif refresh:
            delta.update_incremental()
        return delta

    def _with_retries(self, contract: TableContract, attempt: Callable[[], Any], progress: _Progress) -> Any:
        first_started = time.perf_counter()
        for number in range(1, self.max_attempts + 1):
            started = time.perf_counter()
            try:
                outcome = attempt()
            except Exception as exc:
                if not _is_conflict(exc):
                    raise
                progress.conflicts += 1
                metrics.DELTA_COMMIT_CONFLICTS.labels(table=contract.name).inc()
                self._tables.pop(contract.name, None)  # reload from scratch next attempt
                if number == self.max_attempts:
                    raise DeltaCommitError(
                        f"{contract.name}: commit still conflicting after {number} attempts") from exc
                metrics.DELTA_COMMIT_RETRIES.labels(table=contract.name).inc()
                # Full jitter: uniform in [0, min(cap, base * 2^n)], so that colliding writers spread out.
                time.sleep(random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** number)))
                continue
            finished = time.perf_counter()
            metrics.DELTA_COMMIT_SECONDS.labels(table=contract.name).observe(finished - started)
            progress.table_seconds[contract.name] = (
                progress.table_seconds.get(contract.name, 0.0) + finished - first_started)
            return outcome
        raise AssertionError("unreachable")


def _school_day_keys(data: pa.Table) -> pa.ChunkedArray:
    urn = data.column("urn").cast(pa.string())
    return pc.binary_join_element_wise(urn, data.column("date").cast(pa.string()), "|")


def _sessions_merge_predicate(source: pa.Table) -> str:
    return " AND ".join([
        _equal_match(ATTENDANCE_SESSIONS.key),
        # Literal partition values and URNs: concurrent MERGEs into other days never conflict, and the
        # target scan and the conflict check are pruned to these files (stack notes).
        lake.in_list("t.date", source.column("date").cast(pa.string())),
        lake.in_list("t.urn", source.column("urn")),
    ])


def _rows_changed(merge_metrics: Mapping[str, Any]) -> int:
    return int(merge_metrics["num_target_rows_inserted"]) + int(merge_metrics["num_target_rows_updated"])


def _has_rows(data: pa.Table | None) -> bool:
    return data is not None and data.num_rows > 0
