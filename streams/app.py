"""The Faust app: the thin edge between the extracts topic and the pure batch processor and Delta sink.

Correctness does not rest on Faust's offset commits (faust-streaming#606: offsets committed past in-flight
messages; ``take()`` acknowledges a batch in a ``finally``). The Delta table holds, in the same commit as the
data, the last offset processed per partition (storage.sink). On every assignment the worker reads those
offsets and moves the group's committed position to them, so Faust's own seek-to-committed lands there; and
every batch is checked against the offsets it expects, dropping replays and seeking back over any gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from attendance import metrics
from attendance.broker import bootstrap_servers
from attendance.procfs import memory_kib
from attendance.settings import Settings
from storage.lake import ensure_table, storage_options
from storage.sink import CommitResult, DeltaSink
from storage.tables import (
    ATTENDANCE_SESSIONS,
    DESTRUCTION_LOG,
    EXTRACTS,
    OPTOUT_AUDIT,
    PUPILS,
    QUARANTINE,
    SESSION_SCHOOL_DAYS,
    STAGED_EXTRACTS,
    STAGED_PUPILS,
    STAGED_SESSIONS,
)
from streams.optouts import OptOutRegister
from streams.processor import BatchOutcome, BatchProcessor, ProcessorConfig, RawRecord

log = logging.getLogger(__name__)


def tolerate_fetch_rebalance_race() -> None:
    """Faust runs aiokafka's consumer in its own thread; a rebalance there can remove a partition's buffered
    fetch while ``Fetcher.fetched_records`` iterates, and the ``KeyError`` stops the whole worker
    (robinhood/aiokafka#19, seen here with two workers sharing a topic). Such a call returns nothing
    instead. Safe here: records it had already taken from the buffer are missed by this worker, and
    ``ExtractWorker._in_sequence`` sees the offset gap and seeks back, so nothing is skipped."""
    from aiokafka.consumer.fetcher import Fetcher

    original = Fetcher.fetched_records
    if getattr(original, "_tolerates_rebalance_race", False):
        return

    async def fetched_records(self: Any, partitions: Any, timeout: float = 0, max_records: int | None = None
                              ) -> dict:
        try:
            return await original(self, partitions, timeout, max_records)
        except KeyError as exc:
            log.info("a rebalance removed partition %s's buffered fetch mid-read; fetching again", exc)
            return {}

    fetched_records._tolerates_rebalance_race = True  # type: ignore[attr-defined]
    Fetcher.fetched_records = fetched_records  # type: ignore[method-assign]


@dataclass
class WorkerState:
    """What the edge tracks between batches: where each owned partition must continue."""

    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to process
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # drain targets (run-once mode)
    topic_end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # whole topic at start
    assigned: set[tuple[str, int]] = field(default_factory=set)
    batches: int = 0
    last_batch_at: float = field(default_factory=time.monotonic)
    last_record_at: float = field(default_factory=time.monotonic)  # last batch with records (not reset by seeks)
    staged_since_fold: int = 0  # rows this worker staged since its last fold
    last_fold_at: float = field(default_factory=time.monotonic)


class BatchAbandoned(RuntimeError):
    """The previous batch's write failed: the worker went back to Delta's offsets, and the batch processed
    meanwhile is dropped (it is read again)."""


class BatchLeftBehind(RuntimeError):
    """Delta refused a batch as stale (another worker had committed one of its partitions further), and
    with it records of partitions this worker still holds: they must be read again from Delta's offsets."""


def left_behind(offsets: Mapping[tuple[str, int], int], result: CommitResult,
                assigned: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Partitions this worker holds whose records of the batch Delta holds neither from this commit nor from
    before: a batch skipped as stale (after a rebalance) carried them, and the consumer has moved past."""
    return {tp for tp, offset in offsets.items()
            if tp in assigned and tp not in result.offsets_committed
            and result.offsets_already_stored.get(tp, -1) < offset}


class ExtractWorker:
    """Glue: Faust events -> BatchProcessor -> DeltaSink, with offsets owned by Delta."""

    def __init__(self, settings: Settings, *, until_drained: bool = False, now: Any = None) -> None:
        from ingest.register import read_register

        self.settings = settings
        self.until_drained = until_drained
        self.bootstrap = bootstrap_servers(settings)
        self.sink = DeltaSink(settings.lake_uri, storage_options(settings), app_id_prefix="attendance-sink")
        for contract in (ATTENDANCE_SESSIONS, PUPILS, EXTRACTS, QUARANTINE, OPTOUT_AUDIT, DESTRUCTION_LOG,
                         STAGED_SESSIONS, STAGED_PUPILS, STAGED_EXTRACTS, SESSION_SCHOOL_DAYS):
            ensure_table(contract, settings.lake_uri, storage_options(settings))  # analysts find every table
        self.processor = BatchProcessor(read_register(settings.lake_uri), ProcessorConfig(
            max_age_days=settings.extract_max_age_days,
            amendment_window_school_days=settings.amendment_window_school_days,
            incomplete_timeout_s=settings.incomplete_extract_timeout_s,
            decode_threads=settings.decode_threads,
        ))
        self.optouts = OptOutRegister(self.bootstrap, settings.topic_optouts)
        self.state = WorkerState()
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self._optouts_started = False
        self._lock = asyncio.Lock()
        self.app = self._build_app()
        self.worker: faust.Worker | None = None
        self.drained = asyncio.Event()
        self.assignment_ready = asyncio.Event()
        self.consecutive_failures = 0
        self.failure: Exception | None = None
        self._fold_task: asyncio.Future | None = None
        # The batch being written while the next one is processed (decode and validation overlap the Delta
        # write of the batch before: two stages, two cores). Its offsets commit before the next batch's.
        self._write_task: asyncio.Future | None = None
        self._handled_at = 0.0  # perf_counter when the last batch was handed to its write (stage timing)
        from attendance.http import Readiness

        self.readiness = Readiness()

    # --- Faust wiring ------------------------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        settings = self.settings
        tolerate_fetch_rebalance_race()
        (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
        app = faust.App(
            settings.consumer_group,
            broker=[f"kafka://{server}" for server in self.bootstrap.split(",")],
            value_serializer="raw",
            key_serializer="raw",
            store="memory://",
            datadir=str(settings.state_dir / "faust"),  # not the current directory
            web_enabled=False,
            topic_partitions=settings.extracts_partitions,
            topic_allow_declare=False,  # topics are created deliberately by `attendance topics create`
            consumer_auto_offset_reset="earliest",
            broker_commit_every=1_000_000,  # Faust's own commits are not relied on (see module docstring)
            broker_commit_interval=3600.0,
            consumer_max_fetch_size=max(settings.max_message_bytes * 4, 4 * 1024 * 1024),
            stream_buffer_maxsize=max(settings.batch_max_messages * 2, 64),
            # Faust's default (None) hands over everything aiokafka has prefetched at once (all assigned
            # partitions' fetches, decompressed): measured, 7,400 message values (560 MiB) held at once.
            broker_max_poll_records=settings.batch_max_messages,
            broker_session_timeout=10.0,  # a killed worker's partitions move on within seconds
            broker_heartbeat_interval=3.0,
            broker_max_poll_interval=600.0,
            logging_config=None,
        )
        topic = app.topic(settings.topic_extracts, value_serializer="raw", key_serializer="raw",
                          partitions=settings.extracts_partitions)

        @app.agent(topic, name="ingest-extracts")
        async def ingest_extracts(stream: faust.StreamT) -> None:
            async for events in stream.take_events(settings.batch_max_messages,
                                                   within=settings.batch_max_latency_s):
                records = [
                    RawRecord(e.message.topic, e.message.partition, e.message.offset,
                              int((e.message.timestamp or time.time()) * 1000), e.message.key, e.message.value)
                    for e in events
                ]
                for part in _split_by_bytes(records, settings.batch_max_bytes):
                    try:
                        await self.handle(part)
                    except BatchAbandoned:
                        break  # already back at Delta's offsets
                    except Exception as exc:  # noqa: BLE001 - nothing committed: seek back and retry
                        await self.on_batch_failed(exc)
                        break

        @app.on_partitions_assigned.connect
        async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
            await self.on_assigned(assigned)

        @app.on_partitions_revoked.connect
        async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
            owned = {(tp.topic, tp.partition) for tp in revoked if tp.topic == settings.topic_extracts}
            self.state.assigned -= owned
            for _, partition in owned:
                metrics.CONSUMER_LAG.remove(str(partition))
            self.processor.assembler.drop_partitions(owned)
            metrics.WORKER_ASSIGNED_PARTITIONS.set(len(self.state.assigned))

        @app.timer(interval=1.0)
        async def housekeeping() -> None:
            await self.housekeeping()

        @app.on_before_shutdown.connect
        async def finish_write(sender: Any, **kwargs: Any) -> None:
            # A clean stop lets the batch in flight commit (a crash instead is replayed exactly once).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.settle_write(), timeout=60.0)

        return app

    async def on_assigned(self, assigned: set[TP]) -> None:
        """Move each newly owned partition to the offset Delta holds (not Kafka's group offset)."""
        self.assignment_ready.clear()
        with contextlib.suppress(BatchAbandoned):
            await self.settle_write()  # so that Delta's offsets below include the batch in flight
        mine = {tp for tp in assigned if tp.topic == self.settings.topic_extracts}
        resume: dict[TP, int] = {}
        loop = asyncio.get_running_loop()
        for tp in mine:
            committed = await loop.run_in_executor(None, self.sink.committed_offset, tp.topic, tp.partition)
            resume[tp] = 0 if committed is None else committed + 1
        self.state.assigned = {(tp.topic, tp.partition) for tp in mine}
        self.state.next_offset = {(tp.topic, tp.partition): offset for tp, offset in resume.items()}
        if resume:
            await self.app.consumer._commit(resume)  # so Faust's seek-to-committed lands on Delta's offsets
            for tp, offset in resume.items():
                await self.app.consumer.seek(tp, offset)
            if self.until_drained:
                highwaters = await self.app.consumer.highwaters(*resume)
                self.state.end_offsets = {(tp.topic, tp.partition): hw for tp, hw in highwaters.items()}
        if self.until_drained and not self.state.topic_end_offsets:
            # The run-once target: every partition of the topic, as it stands when this worker starts.
            count = (self.app.consumer.topic_partitions(self.settings.topic_extracts)
                     or self.settings.extracts_partitions)  # metadata not loaded yet: the configured count
            tps = [TP(self.settings.topic_extracts, p) for p in range(count)]
            if tps:
                ends = await self.app.consumer.highwaters(*tps)
                self.state.topic_end_offsets = {(tp.topic, tp.partition): hw for tp, hw in ends.items()}
        metrics.WORKER_ASSIGNED_PARTITIONS.set(len(self.state.assigned))
        self.assignment_ready.set()
        self.state.last_batch_at = time.monotonic()
        log.info("assigned %d extract partitions; resuming from Delta offsets", len(mine))

    async def handle(self, records: Sequence[RawRecord]) -> None:
        arrived = time.perf_counter()
        # Stage times of this batch, for its log line and metrics: gather (since the batch before was handed
        # to its write: waiting for records), barrier (the opt-out catch-up), process, wait (for the write of
        # the batch before); write is added by _write.
        stages = {"gather": arrived - self._handled_at if self._handled_at else 0.0}
        await self.assignment_ready.wait()  # never judge records before Delta's offsets are known
        async with self._lock:
            fresh = self._in_sequence(records)
            if not fresh:
                return
            if not self._optouts_started:
                await self.optouts.start()
                self._optouts_started = True
            barrier = time.perf_counter()
            await self.optouts.catch_up()  # the ordering barrier: every opt-out published so far is known
            started = time.perf_counter()
            stages["barrier"] = started - barrier
            now = self._now()
            opted_out = self.optouts.opted_out(now)
            loop = asyncio.get_running_loop()
            outcome = await loop.run_in_executor(None, self.processor.process, fresh, opted_out, now)
            processed = time.perf_counter()
            # The next batch continues after this one; if this one's write fails, on_batch_failed goes back
            # to Delta's offsets.
            for tp in {r.tp for r in fresh}:
                self.state.next_offset[tp] = max(r.offset for r in fresh if r.tp == tp) + 1
            await self.settle_write()  # the batch before commits first (its offsets are lower)
            stages["process"] = processed - started
            stages["wait"] = time.perf_counter() - processed
            await self._dead_letter(outcome)
            self._write_task = asyncio.ensure_future(self._write(outcome, len(fresh), started, stages))
            self._handled_at = time.perf_counter()

    async def settle_write(self) -> None:
        """Wait for the batch being written. If its write failed, go back to Delta's offsets and raise
        ``BatchAbandoned`` (a batch processed meanwhile must not commit offsets past the failed one)."""
        task, self._write_task = self._write_task, None
        if task is None:
            return
        try:
            await task
        except asyncio.CancelledError:
            raise
        except BatchLeftBehind as exc:
            # Not a failure: another worker's commit overtook this one. Read again from Delta's offsets.
            log.info("%s: reading again from Delta's offsets", exc)
            await self.rewind_to_delta()
            raise BatchAbandoned(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - nothing of it committed: recover, then abandon the caller's batch
            await self.on_batch_failed(exc)
            raise BatchAbandoned(str(exc)) from exc
        self.consecutive_failures = 0

    async def _write(self, outcome: BatchOutcome, messages: int, started: float,
                     stages: dict[str, float] | None = None) -> None:
        """Stage two: the batch's Delta commits (offsets last), then its metrics. ``stages``: seconds the batch
        spent in the stages before (see ``handle``); the write's are added, and all are logged."""
        loop = asyncio.get_running_loop()
        writing = time.perf_counter()
        result = await loop.run_in_executor(None, self.sink.write_batch, outcome.sink)
        stages = {**(stages or {}), "write": time.perf_counter() - writing}
        for stage, seconds in stages.items():
            metrics.BATCH_STAGE_SECONDS.labels(stage=stage).observe(seconds)
        behind = left_behind(outcome.sink.offsets, result, self.state.assigned)
        if behind:
            raise BatchLeftBehind(f"batch skipped as stale left {len(behind)} held partition(s) behind")
        # Mirror Delta's offsets into the group (for lag tools, and so Faust's seek-to-committed on the
        # next assignment starts near the right place); Delta stays the truth.
        committed = {TP(t, p): o + 1 for (t, p), o in outcome.sink.offsets.items() if (t, p) in self.state.assigned}
        if committed and not result.replay_skipped:
            await self.app.consumer._commit(committed)
        self._observe(outcome, time.perf_counter() - started, messages)
        self.state.batches += 1
        self.state.last_batch_at = self.state.last_record_at = time.monotonic()
        self.state.staged_since_fold += sum(
            result.rows_written.get(c.name, 0) for c in (STAGED_SESSIONS, STAGED_PUPILS, STAGED_EXTRACTS))
        log.info("batch: %d messages, %d pupils accepted, %d marks accepted, %s (by table: %s), rss %s, "
                 "offsets %s (%s)",
                 messages, outcome.pupils_accepted, outcome.marks_accepted,
                 ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in stages.items()),
                 ", ".join(f"{table} {seconds:.2f}s" for table, seconds in result.table_seconds.items()) or "none",
                 _resident_memory(), dict(outcome.sink.offsets),
                 "replay skipped" if result.replay_skipped else "committed")
        if self.state.staged_since_fold >= self.settings.fold_max_staged_rows:
            await self._fold("staged rows reached ATTENDANCE_FOLD_MAX_STAGED_ROWS")

    def fold_due(self, now: float) -> str | None:
        if self.until_drained:
            # A run-once worker leaves folding to whoever reads next (aggregate folds first): folding while
            # it waits for the others only takes CPU they need. The staged-rows bound still applies.
            return None
        return fold_reason(self.state.staged_since_fold, now - self.state.last_record_at,
                           now - self.state.last_fold_at, self.settings)

    async def _fold(self, why: str) -> None:
        """MERGE staged rows into attendance_sessions and pupils (storage.sink). A failed fold loses nothing:
        the rows stay staged for the next fold (and `attendance aggregate` folds before it reads)."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, self.sink.fold)
        except Exception as exc:  # noqa: BLE001 - retried at the next fold; never stop the worker over it
            log.error("fold (%s) failed, staged rows wait for the next one: %s: %s", why, type(exc).__name__, exc)
            return
        self.state.staged_since_fold = 0
        self.state.last_fold_at = time.monotonic()
        log.info("fold (%s): %d staged marks, %d staged pupil records folded in %.1fs, rss %s", why,
                 result.sessions.removed, result.pupils.removed, result.seconds, _resident_memory())

    async def _unstall(self, highwaters: dict[TP, int]) -> None:
        """A partition with unprocessed records and nothing arriving for a while is re-seeked to where
        Delta says it stands. This covers Faust's own seek-to-committed landing past Delta's offset, and
        consumers that stop fetching (faust-streaming#175, #629)."""
        idle = time.monotonic() - self.state.last_batch_at
        writing = self._write_task is not None and not self._write_task.done()
        busy = self._lock.locked() or writing or not self.assignment_ready.is_set()
        if busy or idle < self.settings.batch_max_latency_s * 3 + 2:
            return
        for tp, hw in highwaters.items():
            want = self.state.next_offset.get((tp.topic, tp.partition))
            if want is not None and want < hw:
                log.info("partition %s[%d] idle at %d with %d unprocessed: seeking", tp.topic, tp.partition, want,
                         hw - want)
                await self.app.consumer.seek(tp, want)
        self.state.last_batch_at = time.monotonic()

    async def on_batch_failed(self, exc: Exception) -> None:
        """Nothing of the batch was committed (the offsets commit is last): re-read it, or give up."""
        task, self._write_task = self._write_task, None
        if task is not None:  # let a write in flight finish first: Delta's offsets below then include it
            with contextlib.suppress(Exception):
                await task
        self.consecutive_failures += 1
        log.error("batch failed (%d in a row): %s: %s", self.consecutive_failures, type(exc).__name__, exc,
                  exc_info=exc if self.consecutive_failures == 1 else None)
        await self.rewind_to_delta()
        if self.consecutive_failures >= self.settings.worker_max_consecutive_failures:
            self.failure = exc
            self.drained.set()  # stops the worker; run_worker exits non-zero
        else:
            await asyncio.sleep(min(30.0, 0.5 * 2 ** self.consecutive_failures))

    async def rewind_to_delta(self) -> None:
        """Forget held chunks and re-read everything Delta has not committed (held chunks included)."""
        self.processor.assembler.pending.clear()
        loop = asyncio.get_running_loop()
        for topic, partition in sorted(self.state.assigned):
            committed = await loop.run_in_executor(None, self.sink.committed_offset, topic, partition)
            resume = 0 if committed is None else committed + 1
            self.state.next_offset[(topic, partition)] = resume
            await self.app.consumer.seek(TP(topic, partition), resume)

    def _in_sequence(self, records: Sequence[RawRecord]) -> list[RawRecord]:
        """Drop records before the expected offset (replays); on a gap, seek back and drop the rest."""
        fresh: list[RawRecord] = []
        gapped: set[tuple[str, int]] = set()
        expected = dict(self.state.next_offset)
        for record in records:
            tp = record.tp
            if tp not in self.state.assigned or tp in gapped:
                continue
            want = expected.get(tp)
            if want is not None and record.offset < want:
                continue
            if want is not None and record.offset > want:
                log.warning("offset gap on %s[%d]: expected %d, got %d; seeking back", tp[0], tp[1], want,
                            record.offset)
                gapped.add(tp)
                asyncio.ensure_future(self.app.consumer.seek(TP(tp[0], tp[1]), want))
                continue
            expected[tp] = record.offset + 1
            fresh.append(record)
        return fresh

    async def _dead_letter(self, outcome: BatchOutcome) -> None:
        """Send unreadable messages to the dead-letter topic, before the batch commits (a crash in between
        may send one twice; never zero times). A message re-read and judged again (behind a held extract,
        or after a crash) whose quarantine row is already stored was sent before, and is not sent again."""
        if not outcome.dead_letters:
            return
        loop = asyncio.get_running_loop()
        sent_before = await loop.run_in_executor(None, self.sink.quarantined_messages,
                                                 [(r.topic, r.partition, r.offset) for r in outcome.dead_letters])
        records = [r for r in outcome.dead_letters if (r.topic, r.partition, r.offset) not in sent_before]
        if not records:
            return
        topic = self.app.topic(self.settings.topic_deadletter, value_serializer="raw", key_serializer="raw")
        for record in records:
            await topic.send(key=record.key, value=record.value, headers={
                "source": f"{record.topic}/{record.partition}/{record.offset}".encode()})
        metrics.DEADLETTERED.inc(len(records))

    def _observe(self, outcome: BatchOutcome, seconds: float, messages: int) -> None:
        metrics.MESSAGES_CONSUMED.inc(messages)
        metrics.PUPIL_RECORDS_CONSUMED.inc(outcome.pupils_consumed)
        metrics.PUPIL_RECORDS_ACCEPTED.inc(outcome.pupils_accepted)
        metrics.MARKS_ACCEPTED.inc(outcome.marks_accepted)
        metrics.EXTRA_FIELDS_DROPPED.inc(outcome.extra_fields_dropped)
        metrics.OPTOUT_PUPILS_DROPPED.inc(outcome.optout_pupils_dropped)
        metrics.OPTOUT_EXTRACTS_DROPPED.inc(outcome.optout_extracts_dropped)
        for (reason, severity), count in outcome.rejections.items():
            metrics.REJECTIONS.labels(reason_code=reason, severity=severity).inc(count)
        for status, count in outcome.extracts_by_status.items():
            metrics.EXTRACTS_COMPLETED.labels(status=status).inc(count)
        if outcome.optout_extracts_dropped:
            metrics.EXTRACTS_COMPLETED.labels(status="dropped_opt_out").inc(outcome.optout_extracts_dropped)
        metrics.BATCH_MESSAGES.observe(messages)
        metrics.BATCH_PROCESSING_SECONDS.observe(seconds)
        metrics.PENDING_EXTRACTS.set(len(self.processor.assembler.pending))
        committed = time.time()
        for generated_at in outcome.generated_at:
            metrics.END_TO_END_SECONDS.observe(max(0.0, committed - generated_at.timestamp()))

    async def housekeeping(self) -> None:
        """Heartbeat, lag, and stop when drained in run-once mode."""
        self.readiness.heartbeat()
        self.readiness.set_assignment(len(self.state.assigned))
        if self.state.assigned:
            try:
                highwaters = await self.app.consumer.highwaters(*[TP(t, p) for t, p in self.state.assigned])
                total = 0
                for tp, hw in highwaters.items():
                    lag = max(0, hw - self.state.next_offset.get((tp.topic, tp.partition), 0))
                    metrics.CONSUMER_LAG.labels(partition=str(tp.partition)).set(lag)
                    total += lag
                self.readiness.set_lag(total)
                await self._unstall(highwaters)
            except Exception:  # noqa: BLE001 - best effort; never stop the worker over it
                log.debug("could not check for stalled partitions", exc_info=True)
        # Drained only once the assignment is fully set up: the whole topic's end offsets are known (else a
        # partition a dead member still holds would count as covered and be left unread).
        if (self.until_drained and self.state.assigned and self.state.end_offsets and self.state.topic_end_offsets
                and self.assignment_ready.is_set()):
            caught_up = all(self.state.next_offset.get(tp, 0) >= end for tp, end in self.state.end_offsets.items())
            if caught_up and not self._lock.locked() and await self._others_covered():
                async with self._lock:
                    try:
                        await self.settle_write()
                    except BatchAbandoned:
                        return  # back at Delta's offsets: not drained after all
                    # No fold here: staged rows are committed, and read with their tables until the next
                    # fold (storage.current); `attendance aggregate` or `attendance lake fold` folds them.
                    log.info("drained: every partition of the topic processed to its end offset")
                self.drained.set()
                return
        why = self.fold_due(time.monotonic())
        if why and not self._lock.locked() and (self._fold_task is None or self._fold_task.done()):
            # A task, so that heartbeats and lag keep being reported while a long fold runs.
            self._fold_task = asyncio.ensure_future(self._fold_under_lock(why))

    async def _fold_under_lock(self, why: str) -> None:
        async with self._lock:
            with contextlib.suppress(BatchAbandoned):
                await self.settle_write()
            if self.fold_due(time.monotonic()):  # a batch may have folded meanwhile
                await self._fold(why)

    async def _others_covered(self) -> bool:
        """Partitions this worker does not hold are done only when Delta's offsets cover them: a member that
        died still holds its partitions until the group evicts it, and exiting then would leave them unread."""
        if not self.state.topic_end_offsets:
            return False  # not known yet
        loop = asyncio.get_running_loop()
        for (topic, partition), end in self.state.topic_end_offsets.items():
            if (topic, partition) in self.state.assigned or end == 0:
                continue
            committed = await loop.run_in_executor(None, self.sink.committed_offset, topic, partition)
            if committed is None or committed + 1 < end:
                return False
        return True


def fold_reason(staged_rows: int, idle_s: float, since_fold_s: float, settings: Settings) -> str | None:
    """Why a worker should fold its staged rows now, or None: it is caught up (no batch for
    ``fold_idle_s``), or rows have waited ``fold_interval_s``. (A batch that reaches
    ``fold_max_staged_rows`` folds at once.)"""
    if staged_rows <= 0:
        return None
    if idle_s >= settings.fold_idle_s:
        return "idle"
    if since_fold_s >= settings.fold_interval_s:
        return "interval"
    return None


def run_worker(settings: Settings, *, until_drained: bool = False, loglevel: str = "warning") -> int:
    """Run the Faust worker until SIGTERM/SIGINT, or until drained in run-once mode."""
    from attendance.http import start_http_server

    _return_freed_memory()
    worker_state = ExtractWorker(settings, until_drained=until_drained)
    app = worker_state.app
    if settings.metrics_port:
        start_http_server(settings.metrics_port, worker_state.readiness)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False,
                          override_logging=False)
    worker_state.worker = worker

    @app.task
    async def stop_when_drained() -> None:
        await worker_state.drained.wait()
        # Everything is in Delta by now. Faust's stop can hang when another member leaves the group at the
        # same moment ("Event loop is closed" in a rebalance callback): a watchdog ends the process if the
        # clean stop has not within STOP_GRACE_S.
        code = 1 if worker_state.failure is not None else 0
        watchdog = threading.Timer(STOP_GRACE_S, _exit_now, args=(code,))
        watchdog.daemon = True  # a clean stop exits without waiting for it
        watchdog.start()
        await asyncio.sleep(0)
        await worker.stop()

    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:
        code = 0
    if worker_state.failure is not None:
        log.error("worker stopped after repeated batch failures: %s", worker_state.failure)
        return 1
    return code


#: Seconds a drained run-once worker waits for Faust's clean stop before it ends the process itself.
STOP_GRACE_S = 20.0


def _exit_now(code: int) -> None:
    log.warning("the worker did not stop within %.0fs of draining (everything was committed): exiting", STOP_GRACE_S)
    logging.shutdown()
    os._exit(code)


def _return_freed_memory() -> None:
    """Arrow's jemalloc keeps freed pages for reuse by default; a worker handles one large batch after another,
    and returning them at once keeps its resident memory near what the batches in flight need."""
    import pyarrow as pa

    with contextlib.suppress(NotImplementedError, AttributeError):
        pa.jemalloc_set_decay_ms(0)


def _resident_memory() -> str:
    """This process's resident memory now and its peak so far, in MiB, for log lines (0 when unknown): which
    batch or fold set the peak shows in the log."""
    kib = memory_kib()
    return f"{kib.get('VmRSS', 0) // 1024} MiB (peak {kib.get('VmHWM', 0) // 1024})"


def _split_by_bytes(records: list[RawRecord], max_bytes: int) -> list[list[RawRecord]]:
    """Bound a batch's memory: consecutive parts of at most ``max_bytes`` of message values each."""
    parts: list[list[RawRecord]] = [[]]
    size = 0
    for record in records:
        if parts[-1] and size + len(record.value) > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(record)
        size += len(record.value)
    return parts
