"""The Delta sink: exactly-once writes of consumed batches, in the manner of delta-io/kafka-delta-ingest.

The worker (Faust, Kafka) hands over a ``SinkBatch``: Arrow tables for every table a batch touches, and
the last Kafka offset processed per (topic, partition). The sink

1. reads, per (topic, partition), the offset already stored in Delta (the ``txn`` action of
   ``app_id = f"{prefix}-{topic}-{partition}"``) and skips the batch when Delta already holds an offset
   >= the batch's (a replay after a crash or rebalance: delta-rs accepts a lower version, so the writer
   must check);
2. appends the batch's pupil records to ``staged_pupils`` and extract states to ``staged_extracts``, and
   inserts quarantine and optout_audit rows once per key (idempotent: staged rows fold newest-wins), on a
   second thread while step 3 prepares the marks; step 3's offsets commit waits for them;
3. splits the session marks by school-day: marks of a school-day the sessions table may already hold
   (``session_school_days``) are appended to ``staged_sessions``; the others are new to the table and are
   appended to ``attendance_sessions`` directly, LAST, with the offsets in the SAME Delta commit
   (``CommitProperties(app_transactions=[Transaction(app_id, offset), ...])``).

**The offsets table is ``attendance_sessions``**: every batch ends with one commit to it, carrying its
offsets, even when the batch has no new school-days (then a commit with no data files, only ``txn``
actions). A crash before step 3 leaves the offset where it was: the batch is re-consumed, staged rows are
staged again (a fold keeps one), MERGEs are replayed harmlessly. A crash after step 3 is a replay that
step 1 skips.

**Fold** (``DeltaSink.fold``): staged rows are MERGEd into attendance_sessions and pupils, newest
``generated_at`` wins per key (also against a late older extract), and then removed from staging. A
MERGE rewrites every Parquet file holding a row it changes, and a day's amendments touch most files of
the days they amend; folding once per run (or per interval) instead of once per batch keeps that cost
proportional to the day's data rather than to batches x history. The worker folds when it is idle, at a
bounded interval and at the end of ``--until-drained``; ``attendance aggregate`` folds before it reads.
Folding is idempotent, so a crash mid-fold is repaired by the next fold.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from attendance import metrics
from storage import lake
from storage.current import current_extracts, resolved_pupils
from storage.tables import (
    ATTENDANCE_SESSIONS,
    EXTRACTS,
    OPTOUT_AUDIT,
    PUPILS,
    QUARANTINE,
    SCHOOLS,
    SESSION_SCHOOL_DAYS,
    STAGED_EXTRACTS,
    STAGED_PUPILS,
    STAGED_SESSIONS,
    TableContract,
)

log = logging.getLogger(__name__)

#: The table whose commits carry the Kafka offsets (see module docstring).
OFFSETS_TABLE = ATTENDANCE_SESSIONS

#: URN ranges a pupils fold works in, one rewrite each (see ``DeltaSink._fold_pupils``): one per
#: ``SCHOOLS_PER_FOLD_RANGE`` schools (about 250,000 pupils), so that a fold's memory stays bounded whatever
#: the day's size, and at least this many. Every batch writes one staging file per range it touches, so more
#: ranges than memory needs only cost writes (16 at 2,000 schools: 0.1 s of a day's 1.7 s of batches).
PUPIL_FOLD_RANGES = 4
SCHOOLS_PER_FOLD_RANGE = 650

TopicPartition = tuple[str, int]
_Offsets = dict[TopicPartition, int]


@dataclass
class _Progress:
    conflicts: int = 0
    table_seconds: dict[str, float] = field(default_factory=dict)
    staged: dict[str, int] = field(default_factory=dict)  # staging table -> rows appended

    def merge(self, other: _Progress) -> None:
        self.conflicts += other.conflicts
        for mine, theirs in ((self.table_seconds, other.table_seconds), (self.staged, other.staged)):
            for name, value in theirs.items():
                mine[name] = mine.get(name, 0) + value


@dataclass(frozen=True)
class SinkBatch:
    """What one consumed batch writes. Any table may be None or empty.

    sessions: ATTENDANCE_SESSIONS columns (``ingested_at`` optional: the sink sets it at commit).
    pupils: PUPILS columns (``current_since`` is set by the fold that makes a version current).
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
    rows_written: dict[str, int]  # table -> rows inserted or updated (staging tables: rows staged)
    sessions_version: int | None  # Delta version of the sessions+offsets commit
    conflicts: int  # commit conflicts met (all retried)
    seconds: float  # the whole batch
    table_seconds: dict[str, float] = field(default_factory=dict)  # table -> seconds (incl. retries)


@dataclass(frozen=True)
class FoldCount:
    """One staging table's fold."""

    staged: int  # staged rows read (duplicates of a replay included)
    changed: int  # rows inserted or updated in the target table
    removed: int  # rows removed from staging


@dataclass(frozen=True)
class FoldResult:
    """What ``DeltaSink.fold`` did."""

    sessions: FoldCount
    pupils: FoldCount
    conflicts: int
    seconds: float
    extracts: FoldCount = FoldCount(0, 0, 0)


class _OtherTablesFailed(Exception):
    """A batch's other tables failed (see ``DeltaSink._write_batch``); its cause is re-raised."""


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


def _read_partition(snapshot: DeltaTable, column: str, value: Any) -> pa.Table:
    """One partition of a table version. Its files are chosen from the Delta log before any is opened
    (``to_pyarrow_table(filters=...)`` builds a fragment for every file of the table first: a fold reading
    one partition after another then spent O(partitions x files), seconds for a national day)."""
    return snapshot.to_pyarrow_dataset(file_pruning_predicate=[(column, "=", value)]).to_table()


def dedupe_newest(data: pa.Table, key: tuple[str, ...], order_by: str) -> pa.Table:
    """One row per key: the one with the greatest ``order_by`` (the last such row in batch order on ties).

    Column-wise: a row hash finds the keys that occur more than once (usually none, or a few); only those
    rows are sorted and deduplicated exactly, the rest pass through untouched.
    """
    if data.num_rows < 2:
        return data
    # Only the key and the order column go to Polars (a conversion copies strings): memory and time.
    frame = pl.from_arrow(data.select([*dict.fromkeys([*key, order_by])]), rechunk=False)
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
        self._boundaries: list[str] | None = None
        self._side: ThreadPoolExecutor | None = None  # writes a batch's other tables beside its marks
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

    def quarantined_messages(self, messages: list[tuple[str, int, int]]) -> set[tuple[str, int, int]]:
        """Which of these (topic, partition, offset) messages the quarantine table already holds: a message
        judged again after a re-read (behind a held extract, or after a crash) was dead-lettered already."""
        if not messages:
            return set()
        with self._lock:
            delta = self._table(QUARANTINE, refresh=True)
        offsets = ", ".join(str(int(offset)) for _, _, offset in messages)
        found = pa.table(QueryBuilder().register("quarantine", delta).execute(
            f"SELECT DISTINCT topic, partition, \"offset\" FROM quarantine WHERE \"offset\" IN ({offsets})").read_all())
        held = set(zip(found.column("topic").to_pylist(), found.column("partition").to_pylist(),
                       found.column("offset").to_pylist(), strict=True))
        return {message for message in messages if message in held}

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
        _, stored = self._stored_offsets(offsets_table, batch.offsets)
        if _replay(batch, stored):
            log.info("replayed batch skipped: Delta already holds offsets %s", stored)
            return CommitResult(True, {}, stored, {}, None, 0, time.perf_counter() - started)

        now = self._clock()
        # The batch's other tables are independent of its marks: written on a second thread while this one
        # prepares and stages the marks; the offsets commit waits for them (an offset only moves once
        # everything of its batch is durable).
        side_progress = _Progress()
        side = self._side_writer().submit(self._write_other_tables, batch, now, side_progress)

        def other_tables_written() -> None:
            try:
                side.result()
            except Exception as exc:
                raise _OtherTablesFailed() from exc  # not a conflict of the marks' commit: no retry

        try:
            sessions_rows, version, committed, already = self._commit_sessions_and_offsets(
                batch.sessions, batch.offsets, now, progress, before_offsets=other_tables_written)
        except _OtherTablesFailed as failed:
            assert failed.__cause__ is not None
            raise failed.__cause__ from None
        except BaseException:
            wait([side])  # the marks failed: let the other tables finish before the batch is tried again
            raise
        rows_written = side.result()
        progress.merge(side_progress)
        rows_written[ATTENDANCE_SESSIONS.name] = sessions_rows
        rows_written.update(progress.staged)
        stored.update(already)
        return CommitResult(
            replay_skipped=bool(batch.offsets) and not committed and sessions_rows == 0 and not progress.staged,
            offsets_committed=committed, offsets_already_stored=stored, rows_written=rows_written,
            sessions_version=version, conflicts=progress.conflicts, seconds=time.perf_counter() - started,
            table_seconds=progress.table_seconds,
        )

    def _side_writer(self) -> ThreadPoolExecutor:
        if self._side is None:
            self._side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delta-sink-side")
        return self._side

    def _write_other_tables(self, batch: SinkBatch, now: datetime, progress: _Progress) -> dict[str, int]:
        """Stage the batch's pupil records and extract states; insert its quarantine and opt-out audit rows
        (once per key). Touches none of the tables the marks' side writes."""
        rows_written: dict[str, int] = {}
        if _has_rows(batch.pupils):
            assert batch.pupils is not None
            # current_since: when the record was staged (the version it makes is current from then on).
            staged = dedupe_newest(lake.conform(batch.pupils.drop_columns(
                [c for c in ("current_since",) if c in batch.pupils.column_names]), PUPILS,
                fill={"current_since": now}), PUPILS.key, "generated_at")
            ranges = fold_ranges(staged.column("urn"), self._urn_boundaries())
            self._append(STAGED_PUPILS, staged.append_column("fold_range", ranges), progress)
        if _has_rows(batch.extracts):
            assert batch.extracts is not None
            self._append(STAGED_EXTRACTS, batch.extracts, progress)
        if _has_rows(batch.quarantine):
            rows_written[QUARANTINE.name] = self._insert_new(QUARANTINE, batch.quarantine, progress)
        if _has_rows(batch.optout_audit):
            rows_written[OPTOUT_AUDIT.name] = self._insert_new(OPTOUT_AUDIT, batch.optout_audit, progress)
        return rows_written

    def _commit_sessions_and_offsets(
        self, sessions: pa.Table | None, offsets: Mapping[TopicPartition, int], now: datetime,
        progress: _Progress, before_offsets: Callable[[], Any] = lambda: None,
    ) -> tuple[int, int | None, _Offsets, _Offsets]:
        """The batch's last commit: its offsets, with its session rows of school-days new to the table.

        Rows of a school-day the table may already hold (second extract of a day, amendments of earlier
        days) are staged for the next fold. Rows of a school-day it cannot hold yet cannot match anything,
        so they are appended, with the offsets: no scan of the day's files. Their school-days are recorded
        in ``session_school_days`` first, so that whatever writes next stages rather than appends. Two
        writers can only race on the same school if they consume the same Kafka partition (extracts are
        keyed by URN), and then they commit the same app_id, which delta-rs refuses to commit twice
        concurrently: the loser retries, finds the school-day recorded and stages instead. So no key is
        ever stored twice.
        """
        source = None
        if _has_rows(sessions):
            assert sessions is not None
            source = dedupe_newest(
                lake.conform(sessions, ATTENDANCE_SESSIONS, fill={"ingested_at": now}),
                ATTENDANCE_SESSIONS.key, "generated_at")

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
            fresh = None
            if source is not None:
                days = _school_days(source)
                recorded = days.join(self._recorded_school_days(days), on=["urn", "date"], how="semi")
                present = _rows_of_school_days(source, recorded)
                known, fresh = source.filter(present), source.filter(pc.invert(present))
                if known.num_rows:
                    self._append(STAGED_SESSIONS, known, progress)
                if fresh.num_rows:
                    self._append(SESSION_SCHOOL_DAYS, days.join(recorded, on=["urn", "date"], how="anti").to_arrow(),
                                 progress, count=False)
            before_offsets()  # everything else of the batch is durable before its offsets are
            if fresh is not None and fresh.num_rows:
                write_deltalake(delta, fresh, mode="append", commit_properties=properties,
                                writer_properties=lake.WRITER_PROPERTIES)
                written += fresh.num_rows
                offsets_written = True
            if not offsets_written:
                # No new school-day rows: commit the offsets alone, as a commit with no data files.
                delta.create_write_transaction(
                    [], mode="append", schema=ATTENDANCE_SESSIONS.schema,
                    partition_by=list(ATTENDANCE_SESSIONS.partition_by), commit_properties=properties)
            delta.update_incremental()
            version = delta.version() if delta.version() != version_before else None
            return written, version, advancing, already

        written, version, committed, already = self._with_retries(ATTENDANCE_SESSIONS, attempt, progress)
        metrics.DELTA_ROWS_WRITTEN.labels(table=ATTENDANCE_SESSIONS.name).inc(written)
        return written, version, committed, already

    def _recorded_school_days(self, days: pl.DataFrame) -> pl.DataFrame:
        """(urn, date) recorded in ``session_school_days`` for the dates of ``days`` (files chosen from the
        Delta log by partition before any is opened)."""
        delta = self._table(SESSION_SCHOOL_DAYS, refresh=True)
        dates = days.get_column("date").unique().to_list()
        recorded = pl.from_arrow(delta.to_pyarrow_dataset(
            file_pruning_predicate=[("date", "in", [str(day) for day in dates])]).to_table(columns=["urn", "date"]))
        assert isinstance(recorded, pl.DataFrame)
        return recorded

    def _record_school_days(self, rows: pa.Table, progress: _Progress) -> None:
        """Record the school-days of ``rows`` not recorded yet, before the rows themselves are committed
        (blind append: a school-day recorded twice is harmless, one never recorded is not)."""
        days = _school_days(rows)
        days = days.join(self._recorded_school_days(days), on=["urn", "date"], how="anti")
        if days.height:
            self._append(SESSION_SCHOOL_DAYS, days.to_arrow(), progress, count=False)

    def _append(self, contract: TableContract, data: pa.Table, progress: _Progress, *, count: bool = True) -> int:
        """A blind append (no read, no conflict with other appends)."""
        rows = lake.conform(data, contract)

        def attempt() -> int:
            write_deltalake(self._table(contract, refresh=True), rows, mode="append",
                            writer_properties=lake.WRITER_PROPERTIES)
            return rows.num_rows

        written = self._with_retries(contract, attempt, progress)
        if count:
            metrics.DELTA_ROWS_WRITTEN.labels(table=contract.name).inc(written)
            if contract in (STAGED_SESSIONS, STAGED_PUPILS, STAGED_EXTRACTS):
                metrics.STAGED_ROWS.labels(table=contract.name).inc(written)
                progress.staged[contract.name] = progress.staged.get(contract.name, 0) + written
        return written

    # --- fold ----------------------------------------------------------------------------------------

    def fold(self) -> FoldResult:
        """MERGE every staged row into attendance_sessions and pupils (newest wins), then remove the folded
        rows from staging. Idempotent; safe alongside workers (rows staged meanwhile wait for the next
        fold). Thread-safe."""
        with self._lock:
            started = time.perf_counter()
            progress = _Progress()
            sessions = self._fold_sessions(progress)
            pupils = self._fold_pupils(progress)
            extracts = self._fold_extracts(progress)
            seconds = time.perf_counter() - started
            metrics.FOLD_SECONDS.observe(seconds)
            metrics.LAST_FOLD_TIMESTAMP.set(time.time())
            for contract in (STAGED_SESSIONS, STAGED_PUPILS, STAGED_EXTRACTS):
                metrics.STAGED_ROWS.labels(table=contract.name).set(0)
            return FoldResult(sessions, pupils, progress.conflicts, seconds, extracts)

    def _staged_partitions(self, contract: TableContract) -> tuple[DeltaTable, list[Any]]:
        """A staging table's current version (its own DeltaTable object, never refreshed: see
        ``_remove_staged``) and the values of its partition column that hold rows, in order (``[None]`` for
        an unpartitioned table holding rows)."""
        snapshot = lake.ensure_table(contract, self.lake_uri, self.storage_options)
        actions = pa.table(snapshot.get_add_actions(flatten=True))
        if not actions.num_rows:
            return snapshot, []
        if not contract.partition_by:
            return snapshot, [None]
        return snapshot, sorted(set(actions.column(f"partition.{contract.partition_by[0]}").to_pylist()))

    def _fold_sessions(self, progress: _Progress) -> FoldCount:
        """One MERGE per amended day (staging is partitioned by date, so each reads only its day): memory
        follows one day's amendments, and the day as a literal prunes the target to that partition (and two
        folds into different days never conflict: stack notes)."""
        snapshot, days = self._staged_partitions(STAGED_SESSIONS)
        if not days:
            return FoldCount(0, 0, 0)
        staged = changed = 0
        for day in days:
            part = _read_partition(snapshot, "date", day)
            staged += part.num_rows
            source = dedupe_newest(part, ATTENDANCE_SESSIONS.key, "generated_at")
            del part
            self._record_school_days(source, progress)
            predicate = f"{_equal_match(ATTENDANCE_SESSIONS.key)} AND t.date = {lake.sql_literal(day)}"

            def attempt(source: pa.Table = source, predicate: str = predicate, day: Any = day) -> int:
                source = source.filter(pc.is_in(source.column("urn"),
                                                value_set=self._urns_still_staged(STAGED_SESSIONS, "date", day)))
                if not source.num_rows:
                    return 0
                result = (
                    self._table(ATTENDANCE_SESSIONS, refresh=True)
                    .merge(source, predicate, source_alias="s", target_alias="t",
                           writer_properties=lake.WRITER_PROPERTIES)
                    .when_matched_update_all(predicate="s.generated_at > t.generated_at")
                    .when_not_matched_insert_all()
                    .execute()
                )
                return _rows_changed(result)

            changed += self._with_retries(ATTENDANCE_SESSIONS, attempt, progress)
            del source
        metrics.DELTA_ROWS_WRITTEN.labels(table=ATTENDANCE_SESSIONS.name).inc(changed)
        removed = self._remove_staged(STAGED_SESSIONS, snapshot, progress)
        metrics.FOLDED_ROWS.labels(table=STAGED_SESSIONS.name).inc(removed)
        return FoldCount(staged, changed, removed)

    def _fold_pupils(self, progress: _Progress) -> FoldCount:
        """Write what ``storage.current.resolved_pupils`` says is current for every pupil a staged record
        changes: newest generated_at wins per (urn, upn); a newer record with different characteristics is
        a new version, current since it was staged; a newer record saying the same moves only the provenance
        (so that a late older extract can never win). Each URN range is read, resolved and rewritten whole
        (an overwrite with the range as predicate, committed on the snapshot it was read from: a concurrent
        fold or purge of the range makes the commit conflict, and the range is read and resolved again).

        Staged pupil records are partitioned by URN range (``fold_range``: ``PUPIL_FOLD_RANGES`` ranges cut
        at quantiles of the register's URNs, about 250,000 pupils each), and the fold works one range at a
        time: its memory follows one range of the table and of what is staged, whatever the day's size, so a
        worker can fold a whole national day at once. Every file a range's rewrite writes holds URNs of that range only,
        so the other ranges' files are pruned (URN statistics) and a fold rewrites the table once.
        """
        snapshot, fold_ranges_staged = self._staged_partitions(STAGED_PUPILS)
        if not fold_ranges_staged:
            return FoldCount(0, 0, 0)
        staged = written = 0
        for fold_range in fold_ranges_staged:
            part = _read_partition(snapshot, "fold_range", fold_range)
            staged += part.num_rows
            staged_rows = pl.from_arrow(lake.conform(part.drop_columns(["fold_range"]), PUPILS))
            assert isinstance(staged_rows, pl.DataFrame)
            del part
            low, high = staged_rows.get_column("urn").min(), staged_rows.get_column("urn").max()

            def attempt(staged_rows: pl.DataFrame = staged_rows, low: str = low, high: str = high,
                        fold_range: Any = fold_range) -> int:
                still = self._urns_still_staged(STAGED_PUPILS, "fold_range", fold_range)
                staged_rows = staged_rows.filter(pl.col("urn").is_in(pl.Series(still).implode()))
                delta = self._table(PUPILS, refresh=True)
                in_range = (f"urn >= {lake.sql_literal(low)} AND urn <= {lake.sql_literal(high)}")
                stored = pl.scan_delta(delta).filter(pl.col("urn").is_between(pl.lit(low), pl.lit(high))).collect()
                resolved = resolved_pupils(stored.lazy(), staged_rows.lazy()).collect()
                if not resolved.height:
                    return 0
                kept = stored.join(resolved.select(PUPILS.key), on=list(PUPILS.key), how="anti")
                # The range rewritten whole, from the snapshot it was read at: a concurrent fold or purge of
                # the range makes this commit conflict (and the range is read and resolved again).
                write_deltalake(delta, lake.conform(pl.concat([kept, resolved]).to_arrow(), PUPILS),
                                mode="overwrite", predicate=in_range, writer_properties=lake.WRITER_PROPERTIES)
                return resolved.height

            written += self._with_retries(PUPILS, attempt, progress)
            del staged_rows
        metrics.DELTA_ROWS_WRITTEN.labels(table=PUPILS.name).inc(written)
        removed = self._remove_staged(STAGED_PUPILS, snapshot, progress)
        metrics.FOLDED_ROWS.labels(table=STAGED_PUPILS.name).inc(removed)
        return FoldCount(staged, written, removed)

    def _urns_still_staged(self, contract: TableContract, column: str, value: Any) -> pa.Array:
        """The URNs a staging partition holds now. A fold writes only the rows of its snapshot whose school
        is still staged: a purge since the snapshot removed that school's rows (purges empty staging before
        the tables), and they must not be written back; rows another fold took in meanwhile are skipped
        too (it wrote them)."""
        now = lake.ensure_table(contract, self.lake_uri, self.storage_options)
        urns = now.to_pyarrow_dataset(file_pruning_predicate=[(column, "=", value)]).to_table(columns=["urn"])
        return pc.unique(urns.column("urn"))

    def _urn_boundaries(self) -> list[str]:
        """Where the pupils fold cuts its URN ranges: quantiles of the register's URNs (stable from day to
        day, so files stay within one range). No register: no cuts (one range)."""
        if self._boundaries is None:
            try:
                register = lake.read_table(SCHOOLS, self.lake_uri, storage_options=self.storage_options,
                                           columns=["urn"])
                urns = sorted(set(register.column("urn").to_pylist()))
            except Exception:  # noqa: BLE001 - no register table (yet): one range
                urns = []
            ranges = max(PUPIL_FOLD_RANGES, len(urns) // SCHOOLS_PER_FOLD_RANGE)
            self._boundaries = [urns[len(urns) * i // ranges] for i in range(1, ranges)
                                ] if len(urns) >= ranges * 4 else []
        return self._boundaries

    def _remove_staged(self, contract: TableContract, snapshot: DeltaTable, progress: _Progress) -> int:
        """Remove the folded rows from staging: a DELETE without predicate through the snapshot the rows were
        read from removes exactly that version's files (delta-rs does not refresh the snapshot: files appended
        since are kept; ``test_rows_staged_during_a_fold_wait_for_the_next_one`` pins this).

        When that commit conflicts (another worker's fold, or a purge, removed some of those files meanwhile),
        nothing is removed: the rows left are folded again by the next fold, which changes nothing (newest
        wins, and a row equal to the stored one is no newer), and removed then.
        """
        started = time.perf_counter()
        try:
            removed = int(snapshot.delete()["num_deleted_rows"])
        except Exception as exc:
            if not _is_conflict(exc):
                raise
            progress.conflicts += 1
            metrics.DELTA_COMMIT_CONFLICTS.labels(table=contract.name).inc()
            log.info("%s: a concurrent fold or purge changed staging; what is left is removed by the next fold",
                     contract.name)
            return 0
        metrics.DELTA_COMMIT_SECONDS.labels(table=contract.name).observe(time.perf_counter() - started)
        return removed

    def _fold_extracts(self, progress: _Progress) -> FoldCount:
        """One MERGE of every staged extract row: per extract the newest ``last_seen_at`` wins, keeping the
        earliest ``first_seen_at`` (staged or stored)."""
        snapshot, staged_any = self._staged_partitions(STAGED_EXTRACTS)
        if not staged_any:
            return FoldCount(0, 0, 0)
        staged = lake.conform(snapshot.to_pyarrow_table(), EXTRACTS)
        rows = pl.from_arrow(staged)
        assert isinstance(rows, pl.DataFrame)
        # The staged rows resolved among themselves (storage.current's rule); the MERGE resolves them
        # against what is stored.
        source = lake.conform(current_extracts(rows.lazy().clear(), rows.lazy()).collect().to_arrow(), EXTRACTS)
        changed = self._merge_extracts(source, progress)
        removed = self._remove_staged(STAGED_EXTRACTS, snapshot, progress)
        metrics.FOLDED_ROWS.labels(table=STAGED_EXTRACTS.name).inc(removed)
        return FoldCount(staged.num_rows, changed, removed)

    def _merge_extracts(self, source: pa.Table, progress: _Progress) -> int:
        """MERGE extract rows (one per extract_id) into ``extracts``: a newer ``last_seen_at`` updates the row
        (its ``first_seen_at`` stays the earlier of the two); a new extract is inserted."""
        predicate = f"{_equal_match(EXTRACTS.key)} AND {lake.in_list('t.urn', source.column('urn'))}"

        def attempt() -> int:
            result = (
                self._table(EXTRACTS, refresh=True)
                .merge(source, predicate, source_alias="s", target_alias="t",
                       writer_properties=lake.WRITER_PROPERTIES)
                .when_matched_update(
                    updates={**{name: f"s.{name}" for name in EXTRACTS.schema.names
                                if name not in ("extract_id", "first_seen_at")},
                             "first_seen_at": "CASE WHEN t.first_seen_at IS NULL OR s.first_seen_at < "
                                              "t.first_seen_at THEN s.first_seen_at ELSE t.first_seen_at END"},
                    predicate="t.last_seen_at IS NULL OR s.last_seen_at >= t.last_seen_at")
                # An older state of the extract that saw it first still lowers first_seen_at.
                .when_matched_update(
                    updates={"first_seen_at": "s.first_seen_at"},
                    predicate="s.first_seen_at IS NOT NULL AND (t.first_seen_at IS NULL OR "
                              "s.first_seen_at < t.first_seen_at)")
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
                .merge(source, predicate, source_alias="s", target_alias="t",
                       writer_properties=lake.WRITER_PROPERTIES)
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


def fold_staged(lake_uri: str, storage_options: Mapping[str, str] | None = None) -> FoldResult | None:
    """Fold what workers have staged, for a batch job about to read whole tables (aggregation,
    pseudonymisation, the data-quality report): its outputs then derive from the stored tables, and an
    incremental job sees the amendments in the tables' own history. None when the lake holds no staging
    table (the sink never wrote it)."""
    if all(lake.open_table(contract, lake_uri, storage_options) is None
           for contract in (STAGED_SESSIONS, STAGED_PUPILS, STAGED_EXTRACTS)):
        return None
    return DeltaSink(lake_uri, storage_options).fold()


def fold_ranges(urns: pa.Array | pa.ChunkedArray, boundaries: list[str]) -> pa.Array:
    """The fold range of each URN: the number of ``boundaries`` at or below it (0 .. len(boundaries)).
    Searched once per distinct URN (a batch holds a few hundred schools), then spread to the rows."""
    encoded = pc.dictionary_encode(urns).combine_chunks() if isinstance(urns, pa.ChunkedArray) \
        else pc.dictionary_encode(urns)
    if not boundaries:
        return pa.array(np.zeros(len(urns), dtype=np.int32))
    per_urn = np.searchsorted(np.array(boundaries, dtype=object),
                              encoded.dictionary.to_numpy(zero_copy_only=False), side="right").astype(np.int32)
    return pa.array(per_urn[encoded.indices.to_numpy(zero_copy_only=False)])


def _school_days(rows: pa.Table) -> pl.DataFrame:
    """The distinct (urn, date) of ``rows``."""
    days = pl.from_arrow(rows.select(["urn", "date"]), rechunk=False)
    assert isinstance(days, pl.DataFrame)
    return days.unique()


def _rows_of_school_days(rows: pa.Table, days: pl.DataFrame) -> pa.Array:
    """Which of ``rows`` belong to one of ``days`` (a mask, in row order)."""
    if not days.height:
        return pa.array(np.zeros(rows.num_rows, dtype=bool))
    frame = pl.from_arrow(rows.select(["urn", "date"]), rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    flagged = frame.join(days.with_columns(pl.lit(True).alias("__day")), on=["urn", "date"], how="left",
                         maintain_order="left")
    return flagged.get_column("__day").is_not_null().to_arrow()


def _rows_changed(merge_metrics: Mapping[str, Any]) -> int:
    return int(merge_metrics["num_target_rows_inserted"]) + int(merge_metrics["num_target_rows_updated"])


def _has_rows(data: pa.Table | None) -> bool:
    return data is not None and data.num_rows > 0
