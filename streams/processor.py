"""One batch of consumed records -> what the sink writes. No Kafka, no Faust, no Delta: the Faust agent
(streams/app.py) is a thin edge that feeds records in and hands the result to storage.sink.

Order of judgement for each record: opt-out gate (by URN, before anything is decoded or kept), then
completeness (hold chunks until the extract is whole), then the rules (streams.validate), column-wise over
every resolved extract of the batch at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from storage.sink import SinkBatch
from storage.tables import EXTRACTS, OPTOUT_AUDIT, QUARANTINE
from streams.completeness import ChunkRef, ExtractAssembler, PendingExtract, TopicPartition
from streams.decode import decode_messages
from streams.rules import RULES
from streams.validate import check_extract_consistency, check_headers, validate_records

UNREADABLE_REASONS = frozenset({"MSG_NOT_UTF8", "MSG_NOT_JSON"})


@dataclass(frozen=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)


#: Header integers must fit the tables' int32 columns; a larger number makes the header unreadable here.
_Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]


class _HeaderPeek(msgspec.Struct):
    """The few header fields completeness needs; the pupils are skipped, not built."""

    extract_id: str
    urn: str
    chunk_index: _Int32
    chunk_count: _Int32
    pupil_count: _Int32 = 0
    extract_date: str | None = None


_peek_decoder = msgspec.json.Decoder(_HeaderPeek)


def _peek(value: bytes) -> _HeaderPeek | None:
    """The header fields, or None when they cannot be read here (the decoder then names the fault;
    JSON nested too deep for any decoder is MSG_NOT_JSON)."""
    try:
        return _peek_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


@dataclass
class BatchOutcome:
    sink: SinkBatch
    dead_letters: list[RawRecord] = field(default_factory=list)
    messages: int = 0
    pupils_consumed: int = 0
    pupils_accepted: int = 0
    marks_accepted: int = 0
    rejections: dict[tuple[str, str], int] = field(default_factory=dict)  # (reason, severity) -> count
    extracts_by_status: dict[str, int] = field(default_factory=dict)
    optout_pupils_dropped: int = 0
    optout_extracts_dropped: int = 0
    extra_fields_dropped: int = 0
    generated_at: list[dt.datetime] = field(default_factory=list)  # of committed extracts (e2e latency)


@dataclass(frozen=True)
class ProcessorConfig:
    max_age_days: int = 30
    amendment_window_school_days: int = 7
    incomplete_timeout_s: float = 3600.0
    decode_threads: int = 1


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


class BatchProcessor:
    """Stateful only in the chunks it holds for incomplete extracts (rebuilt from Kafka after a restart)."""

    def __init__(self, register: pa.Table, config: ProcessorConfig) -> None:
        self.register = register
        self.config = config
        self.assembler = ExtractAssembler()

    # -------------------------------------------------------------------------------------------------
    def process(self, records: Sequence[RawRecord], opted_out: frozenset[str], now: dt.datetime,
                *, expire: bool = True) -> BatchOutcome:
        outcome = BatchOutcome(sink=SinkBatch())
        audit_rows: list[dict] = []
        to_decode: list[RawRecord] = []  # records decoded this batch, in order
        extract_of: list[str | None] = []  # their extract ids (None: header unreadable)
        last_offset: dict[TopicPartition, int] = {}
        outcome.messages = len(records)

        for record in records:
            last_offset[record.tp] = max(record.offset, last_offset.get(record.tp, -1))
            peek = _peek(record.value)
            urn = peek.urn if peek else (record.key or b"").decode("utf-8", errors="replace")
            if urn in opted_out:  # nothing of an opted-out school is kept: count-level audit only
                outcome.optout_pupils_dropped += peek.pupil_count if peek and peek.chunk_index == 0 else 0
                if peek is None or peek.chunk_index == 0:
                    outcome.optout_extracts_dropped += 1
                    audit_rows.append({"urn": urn, "extract_id": peek.extract_id if peek else None,
                                       "extract_date": _parse_date(peek.extract_date) if peek else None,
                                       "pupils_dropped": peek.pupil_count if peek else 0})
                continue
            if peek is None:
                to_decode.append(record)
                extract_of.append(None)
                continue
            resolved = self.assembler.add(ChunkRef(peek.extract_id, peek.chunk_index, peek.chunk_count,
                                                   record.tp, record.offset, record.timestamp_ms, record.value))
            if resolved is not None:
                self._take(resolved, opted_out, to_decode, extract_of, outcome, audit_rows)

        incomplete: list[PendingExtract] = []
        if expire:
            incomplete = self.assembler.expire(int(now.timestamp() * 1000),
                                               int(self.config.incomplete_timeout_s * 1000))

        sink = self._judge(to_decode, extract_of, incomplete, outcome, now)
        audit = _optout_audit(audit_rows, now)
        resume = self.assembler.resume_offsets()
        offsets = {tp: min(last, resume[tp] - 1) if tp in resume else last for tp, last in last_offset.items()}
        offsets = {tp: offset for tp, offset in offsets.items() if offset >= 0}  # nothing committable yet
        outcome.sink = SinkBatch(sessions=sink.sessions, pupils=sink.pupils, extracts=sink.extracts,
                                 quarantine=sink.quarantine, optout_audit=audit, offsets=offsets,
                                 processed_through=last_offset)
        return outcome

    def _take(self, extract: PendingExtract, opted_out: frozenset[str], to_decode: list[RawRecord],
              extract_of: list[str | None], outcome: BatchOutcome, audit_rows: list[dict]) -> None:
        if extract.extract_id in extract_of:
            return  # the same extract sent again within this batch: judged once (a later copy merges idempotently)
        ordered = sorted(extract.chunks, key=lambda c: (c.chunk_index, c.offset))
        for chunk in ordered:
            to_decode.append(RawRecord(chunk.tp[0], chunk.tp[1], chunk.offset, chunk.timestamp_ms, None,
                                       chunk.value))
            extract_of.append(extract.extract_id)

    # -------------------------------------------------------------------------------------------------
    def _judge(self, records: list[RawRecord], extract_of: list[str | None], incomplete: list[PendingExtract],
               outcome: BatchOutcome, now: dt.datetime) -> SinkBatch:
        positions = pl.DataFrame({
            "msg_index": pl.Series(range(len(records)), dtype=pl.Int32),
            "topic": [r.topic for r in records],
            "partition": pl.Series([r.partition for r in records], dtype=pl.Int32),
            "offset": pl.Series([r.offset for r in records], dtype=pl.Int64),
            "timestamp_ms": pl.Series([r.timestamp_ms for r in records], dtype=pl.Int64),
        })
        decoded = decode_messages([r.value for r in records], threads=self.config.decode_threads)
        outcome.extra_fields_dropped += decoded.extra_fields_dropped
        headers = pl.from_arrow(decoded.headers)
        outcome.pupils_consumed += int(headers["pupils_in_message"].sum() or 0) if headers.height else 0

        # Chunks whose structure broke the contract have no decoded header, but the completeness peek read
        # theirs: their extract is rejected under their own reason (not judged for consistency on the chunks
        # left), and their rows name the extract and school.
        unparsed = _peek_headers(records, decoded.message_rejections.column("msg_index").to_pylist())
        consistency_headers = decoded.headers.filter(pc.invert(pc.is_in(
            decoded.headers.column("extract_id"), value_set=unparsed["extract_id"].to_arrow().cast(pa.string()))))

        # Message-level judgement: decode faults, register and date checks, chunk consistency.
        message_rejections = pl.concat([
            _rej(decoded.message_rejections),
            _rej(check_headers(decoded.headers, self.register, now.date(), max_age_days=self.config.max_age_days)),
            _rej(check_extract_consistency(consistency_headers)),
        ], how="vertical_relaxed")
        for index in message_rejections.filter(pl.col("reason_code").is_in(list(UNREADABLE_REASONS)))[
                "msg_index"].to_list():
            outcome.dead_letters.append(records[index])
        # One faulty chunk rejects its whole extract: never half-publish.
        rejected_extracts = set(headers.join(message_rejections.select("msg_index").unique(), on="msg_index")[
            "extract_id"].to_list()) if headers.height else set()
        rejected_extracts |= set(unparsed["extract_id"].to_list())
        sibling_rows = headers.filter(pl.col("extract_id").is_in(list(rejected_extracts)) &
                                      ~pl.col("msg_index").is_in(message_rejections["msg_index"].implode()))
        sibling_rejections = sibling_rows.select(
            "msg_index", pl.lit("MSG_EXTRACT_REJECTED").alias("reason_code"), pl.lit("chunk_index").alias("field"),
            pl.lit("another chunk of this extract was rejected").alias("detail"))
        all_message_rejections = pl.concat([message_rejections, sibling_rejections], how="diagonal_relaxed")

        accepted_headers = headers.filter(~pl.col("extract_id").is_in(list(rejected_extracts))) \
            if headers.height else headers
        accepted_index = accepted_headers["msg_index"].implode() if headers.height else pl.Series([], dtype=pl.Int32)
        pupils = pl.from_arrow(decoded.pupils).filter(pl.col("msg_index").is_in(accepted_index)) \
            if decoded.pupils.num_rows else pl.from_arrow(decoded.pupils)
        marks = pl.from_arrow(decoded.marks).filter(pl.col("msg_index").is_in(accepted_index)) \
            if decoded.marks.num_rows else pl.from_arrow(decoded.marks)
        records_result = validate_records(
            accepted_headers.to_arrow(), pupils.to_arrow(), marks.to_arrow(),
            amendment_window_school_days=self.config.amendment_window_school_days)

        record_rejections = pl.concat([
            _rej(decoded.pupil_rejections), _rej(decoded.mark_rejections), _rej(records_result.rejections),
        ], how="diagonal_relaxed")
        record_rejections = record_rejections.filter(pl.col("msg_index").is_in(accepted_index))

        known_headers = pl.concat([headers, unparsed], how="diagonal_relaxed") if unparsed.height else headers
        quarantine = _quarantine_rows(all_message_rejections, record_rejections, known_headers, positions, records,
                                      now)
        quarantine = pl.concat([quarantine, _incomplete_rows(incomplete, now)], how="diagonal_relaxed") \
            if incomplete else quarantine
        for reason, severity, count in quarantine.group_by("reason_code", "severity").len().iter_rows():
            outcome.rejections[(reason, severity)] = outcome.rejections.get((reason, severity), 0) + count

        sessions = records_result.accepted_marks
        accepted_pupils = records_result.accepted_pupils
        outcome.pupils_accepted += accepted_pupils.num_rows
        outcome.marks_accepted += sessions.num_rows
        extracts = _extract_rows(known_headers, rejected_extracts, accepted_pupils, sessions, record_rejections,
                                 positions, incomplete, now)
        for status, count in extracts.group_by("status").len().iter_rows():
            outcome.extracts_by_status[status] = outcome.extracts_by_status.get(status, 0) + count
        outcome.generated_at.extend(accepted_headers.unique("extract_id")["generated_at"].to_list()
                                    if accepted_headers.height else [])
        return SinkBatch(
            sessions=sessions,
            pupils=accepted_pupils,
            extracts=_conform(extracts, EXTRACTS.schema),
            quarantine=_conform(quarantine, QUARANTINE.schema),
        )


# --- column-wise assembly helpers ------------------------------------------------------------------------

def _parse_date(text: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None


_PEEKED_SCHEMA = {"msg_index": pl.Int32, "extract_id": pl.String, "urn": pl.String, "extract_date": pl.Date,
                  "chunk_index": pl.Int64, "chunk_count": pl.Int64, "pupil_count": pl.Int64}


def _peek_headers(records: list[RawRecord], msg_indexes: list[int]) -> pl.DataFrame:
    """The completeness peek's header of each of these (rejected) messages that it could read: a few rows."""
    rows = []
    for index in sorted(set(msg_indexes)):
        peek = _peek(records[index].value)
        if peek is None:
            continue
        rows.append({"msg_index": index, "extract_id": peek.extract_id.lower(), "urn": peek.urn,
                     "extract_date": _parse_date(peek.extract_date), "chunk_index": peek.chunk_index,
                     "chunk_count": peek.chunk_count, "pupil_count": peek.pupil_count})
    return pl.DataFrame(rows, schema=_PEEKED_SCHEMA).with_columns(
        pl.col(name).cast(pl.Int32, strict=False) for name in ("chunk_index", "chunk_count", "pupil_count"))


def _rej(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    wanted = {"msg_index": pl.Int32, "pupil_position": pl.Int32, "mark_position": pl.Int32,
              "reason_code": pl.String, "field": pl.String, "detail": pl.String}
    return frame.select([
        (pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype)).alias(name)
        for name, dtype in wanted.items()
    ])


_SEVERITY = pl.DataFrame({"reason_code": list(RULES), "severity": [r.severity for r in RULES.values()]})


def _quarantine_rows(message_rejections: pl.DataFrame, record_rejections: pl.DataFrame, headers: pl.DataFrame,
                     positions: pl.DataFrame, records: list[RawRecord], now: dt.datetime) -> pl.DataFrame:
    header_cols = headers.select("msg_index", "extract_id", "urn", "extract_date", "chunk_index") \
        if headers.height else pl.DataFrame(schema={"msg_index": pl.Int32, "extract_id": pl.String,
                                                    "urn": pl.String, "extract_date": pl.Date,
                                                    "chunk_index": pl.Int32})
    raw = pl.DataFrame({"msg_index": pl.Series(range(len(records)), dtype=pl.Int32),
                        "raw_message": pl.Series([r.value for r in records], dtype=pl.Binary)})
    message_level = message_rejections.join(raw, on="msg_index", how="left")
    rows = pl.concat([message_level, record_rejections], how="diagonal_relaxed")
    return (
        rows.join(positions.select("msg_index", "topic", "partition", "offset"), on="msg_index", how="left")
        .join(header_cols, on="msg_index", how="left")
        .join(_SEVERITY, on="reason_code", how="left")
        .with_columns(pl.lit(now).dt.replace_time_zone("UTC").alias("quarantined_at"))
    )


def _pending_header(extract: PendingExtract) -> _HeaderPeek:
    """The header of a held extract's first chunk (it was peeked once already, so it decodes)."""
    return _peek_decoder.decode(min(extract.chunks, key=lambda c: (c.chunk_index, c.offset)).value)


def _incomplete_rows(incomplete: list[PendingExtract], now: dt.datetime) -> pl.DataFrame:
    peeked = {e.extract_id: _pending_header(e) for e in incomplete}
    rows = [
        {"extract_id": e.extract_id, "urn": peeked[e.extract_id].urn,
         "extract_date": _parse_date(peeked[e.extract_id].extract_date),
         "chunk_index": c.chunk_index, "topic": c.tp[0], "partition": c.tp[1],
         "offset": c.offset, "reason_code": "MSG_INCOMPLETE", "severity": RULES["MSG_INCOMPLETE"].severity,
         "field": "chunk_count",
         "detail": f"{len(e.chunks)} of {e.chunk_count} chunks arrived before the timeout",
         "raw_message": c.value, "quarantined_at": now}
        for e in incomplete for c in e.chunks
    ]
    return pl.DataFrame(rows, schema_overrides={"extract_date": pl.Date}).with_columns(
        pl.col("partition").cast(pl.Int32), pl.col("chunk_index").cast(pl.Int32))


def _extract_rows(headers: pl.DataFrame, rejected: set[str], pupils: pa.Table, sessions: pa.Table,
                  record_rejections: pl.DataFrame, positions: pl.DataFrame, incomplete: list[PendingExtract],
                  now: dt.datetime) -> pl.DataFrame:
    if not headers.height and not incomplete:
        return pl.DataFrame(schema={"status": pl.String})
    parts = []
    if headers.height:
        seen = headers.join(positions, on="msg_index").group_by("extract_id").agg(
            pl.col("urn").first(), pl.col("laestab").first(), pl.col("extract_date").first(),
            pl.col("generated_at").first(), pl.col("chunk_count").first(),
            pl.col("chunk_index").n_unique().alias("chunks_received"), pl.col("pupil_count").first(),
            pl.col("timestamp_ms").min().alias("first_ms"), pl.col("timestamp_ms").max().alias("last_ms"),
        )
        accepted_pupils = pl.from_arrow(pupils.select(["extract_id"])).group_by("extract_id").len("pupils_accepted") \
            if pupils.num_rows else pl.DataFrame(schema={"extract_id": pl.String, "pupils_accepted": pl.UInt32})
        accepted_marks = pl.from_arrow(sessions.select(["extract_id"])).group_by("extract_id").len("marks_accepted") \
            if sessions.num_rows else pl.DataFrame(schema={"extract_id": pl.String, "marks_accepted": pl.UInt32})
        by_msg = headers.select("msg_index", "extract_id")
        judged = record_rejections.join(by_msg, on="msg_index").join(_SEVERITY, on="reason_code")
        rejected_counts = judged.group_by("extract_id").agg(  # a pupil or mark with two faults counts once
            pl.struct("msg_index", "pupil_position").filter(pl.col("severity") == "pupil").n_unique()
            .alias("pupils_rejected"),
            pl.struct("msg_index", "pupil_position", "mark_position").filter(pl.col("severity") == "mark")
            .n_unique().alias("marks_rejected"),
        )
        parts.append(
            seen.join(accepted_pupils, on="extract_id", how="left").join(accepted_marks, on="extract_id", how="left")
            .join(rejected_counts, on="extract_id", how="left")
            .with_columns(
                pl.when(pl.col("extract_id").is_in(list(rejected))).then(pl.lit("rejected"))
                .otherwise(pl.lit("complete")).alias("status"),
                pl.from_epoch("first_ms", time_unit="ms").dt.replace_time_zone("UTC").alias("first_seen_at"),
                pl.from_epoch("last_ms", time_unit="ms").dt.replace_time_zone("UTC").alias("last_seen_at"),
            )
            .with_columns(pl.col(c).fill_null(0) for c in ("pupils_accepted", "marks_accepted",
                                                           "pupils_rejected", "marks_rejected"))
            .drop("first_ms", "last_ms")
        )
    if incomplete:
        peeked = {e.extract_id: _pending_header(e) for e in incomplete}
        parts.append(pl.DataFrame([{
            "extract_id": e.extract_id, "urn": peeked[e.extract_id].urn,
            "extract_date": _parse_date(peeked[e.extract_id].extract_date),
            "pupil_count": peeked[e.extract_id].pupil_count,
            "chunk_count": e.chunk_count, "chunks_received": len(e.chunks),
            "status": "incomplete", "first_seen_at": _utc(e.first_timestamp_ms),
            "last_seen_at": _utc(max(c.timestamp_ms for c in e.chunks)),
        } for e in incomplete], schema_overrides={"extract_date": pl.Date}))
    return pl.concat(parts, how="diagonal_relaxed")


def _optout_audit(rows: list[dict], now: dt.datetime) -> pa.Table | None:
    if not rows:
        return None
    frame = pl.DataFrame(rows, schema={"urn": pl.String, "extract_id": pl.String, "extract_date": pl.Date,
                                       "pupils_dropped": pl.Int32})
    frame = frame.group_by("urn", "extract_id", "extract_date").agg(pl.col("pupils_dropped").sum()).with_columns(
        pl.lit(None, dtype=pl.Int32).alias("marks_dropped"),
        pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("optout_effective_at"),
        pl.lit(now).dt.replace_time_zone("UTC").alias("dropped_at"),
    )
    return _conform(frame, OPTOUT_AUDIT.schema)


def _conform(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """Select and cast to a table contract's schema; absent columns become nulls."""
    columns = [
        frame[f.name].to_arrow().cast(f.type) if f.name in frame.columns else pa.nulls(frame.height, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)
