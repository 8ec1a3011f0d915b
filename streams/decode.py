"""Extract messages (bytes) -> typed Arrow tables, column-wise, with every structural fault named.

One call decodes a whole batch of messages. The fast path joins them (newline-separated) and parses them
into nested Arrow columns of the contract's fields (typed; anything else skipped): first with the contract's
own compiled reader (``streams/jsonscan.py``), which takes every message it can vouch for and gives exactly
the table Arrow's reader would; the few it leaves go to Arrow's JSON reader, in blocks of about 1 MB, against
an explicit schema. The nested pupils and sessions are then flattened into flat tables column-wise
(``list_flatten``, ``struct_field``, position arithmetic in numpy), without copying the values. Arrow's
reader is strict about types, so a field of the wrong JSON type makes its block fail: the block is split at
the row Arrow names (that message goes to the slow path) or in halves until the messages that fail on their
own are isolated. Those, and anything else the fast path cannot vouch for, take the slow path: ``orjson``,
then each field checked for its JSON type column by column, naming each faulty field and keeping the rest
of the message. Both paths produce the same raw flat tables, and every value check (dates, patterns,
ranges, required fields) then runs once, column-wise, over their union: a message gives the same result
whichever path it took (tests pin this).

Fields outside the contract are dropped and counted. ``extra_fields_dropped`` counts out-of-contract keys
*carrying a value* (not ``null``), at the header, pupil and mark level and inside such fields (a dropped
``address`` object with two keys counts 3), in messages whose structure is valid. The contract's reader
counts them as it skips them; for messages Arrow's reader parsed, the count is exact arithmetic on the raw
bytes: every colon outside a string ends a key, so keys with a non-null value =
colons right after a quote minus those whose value starts with ``n`` (only ``null`` does), minus the
contract's non-null fields (known from the parsed columns). The preconditions of that arithmetic (no escaped
quote just before a colon, no whitespace between a key and its colon, at most one space after it) are
checked on the same colon positions; a message that breaks them is counted by walking its decoded document
instead. A key whose value is ``null`` carries no data and cannot be told from an absent key in the
columns, so it is not counted by either path. (Counting only on the slow path was not an option: real MIS
feeds carry forename and surname on every pupil.)

Arrow's reader accepts ``NaN``/``Infinity`` and very deep nesting inside fields it skips; a message whose
extra fields hold an object or an array, or a value starting like NaN/Infinity, is therefore also run
through ``msgspec``'s strict JSON validator (no objects built), and one that fails it goes down the slow
path, where ``orjson`` decides (its limit: 1024 levels of nesting).

Nothing here logs, and no detail ever quotes a value from a pupil: details name the field and the fault.
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from schemas.contract import HEADER_FIELDS, MARK_FIELDS, PUPIL_FIELDS, SCHEMA_VERSION
from streams.jsonscan import ContractReader, join_messages

INT32_MAX = 2**31 - 1
UTC_TS = pa.timestamp("us", tz="UTC")

# --- public output schemas ---------------------------------------------------------------------------------

HEADERS_SCHEMA = pa.schema(
    [
        ("msg_index", pa.int32()),
        ("extract_id", pa.string()),
        ("urn", pa.string()),
        ("laestab", pa.string()),
        ("extract_date", pa.date32()),
        ("generated_at", UTC_TS),
        ("chunk_index", pa.int32()),
        ("chunk_count", pa.int32()),
        ("pupil_count", pa.int32()),
        ("pupils_in_message", pa.int32()),
        ("marks_in_message", pa.int32()),
        ("extra_fields_in_message", pa.int32()),
    ]
)
PUPILS_SCHEMA = pa.schema(
    [
        ("msg_index", pa.int32()),
        ("pupil_position", pa.int32()),
        ("upn", pa.string()),
        ("date_of_birth", pa.date32()),
        ("sex", pa.string()),
        ("nc_year_group", pa.string()),
        ("ethnicity", pa.string()),
        ("fsm_eligible", pa.bool_()),
        ("sen_provision", pa.string()),
        ("looked_after", pa.bool_()),
        ("child_in_need", pa.bool_()),
        ("child_protection_plan", pa.bool_()),
        ("admission_date", pa.date32()),
        ("leaving_date", pa.date32()),
        ("marks_in_pupil", pa.int32()),
    ]
)
MARKS_SCHEMA = pa.schema(
    [
        ("msg_index", pa.int32()),
        ("pupil_position", pa.int32()),
        ("mark_position", pa.int32()),
        ("date", pa.date32()),
        ("session", pa.string()),
        ("code", pa.string()),
    ]
)
MESSAGE_REJECTIONS_SCHEMA = pa.schema(
    [
        ("msg_index", pa.int32()),
        ("reason_code", pa.string()),
        ("field", pa.string()),
        ("detail", pa.string()),
    ]
)
PUPIL_REJECTIONS_SCHEMA = pa.schema(
    [
        ("msg_index", pa.int32()),
        ("pupil_position", pa.int32()),
        ("reason_code", pa.string()),
        ("field", pa.string()),
        ("detail", pa.string()),
    ]
)
MARK_REJECTIONS_SCHEMA = pa.schema(
    [
        ("msg_index", pa.int32()),
        ("pupil_position", pa.int32()),
        ("mark_position", pa.int32()),
        ("reason_code", pa.string()),
        ("field", pa.string()),
        ("detail", pa.string()),
    ]
)


@dataclass(frozen=True)
class DecodedBatch:
    """What a batch of messages decoded into. ``msg_index`` is always the position in the input sequence.

    ``headers`` has one row per message whose structure is valid (``pupils_in_message``/``marks_in_message``
    count what it carried, rejected records included), in input order. ``pupils`` and ``marks`` hold only
    records that passed the contract checks, of messages in ``headers``; a pupil in ``pupil_rejections``
    contributes no marks. Their rows are grouped by message, in position order within it; the messages
    decoded on the fast path come first (copying them into input order would cost more than it helps).
    Rejection tables are sorted by position.
    """

    headers: pa.Table
    pupils: pa.Table
    marks: pa.Table
    message_rejections: pa.Table
    pupil_rejections: pa.Table
    mark_rejections: pa.Table
    extra_fields_dropped: int
    #: How many messages the fast path could not vouch for (diagnostics, for the benchmark).
    slow_path_messages: int = 0


# --- the contract, as the decoder sees it ------------------------------------------------------------------

_STR, _BOOL, _INT = "string", "boolean", "integer"
HEADER_TYPES: dict[str, str] = {
    "schema_version": _STR,
    "extract_id": _STR,
    "urn": _STR,
    "laestab": _STR,
    "extract_date": _STR,
    "generated_at": _STR,
    "chunk_index": _INT,
    "chunk_count": _INT,
    "pupil_count": _INT,
}
PUPIL_TYPES: dict[str, str] = {
    "upn": _STR,
    "date_of_birth": _STR,
    "sex": _STR,
    "nc_year_group": _STR,
    "ethnicity": _STR,
    "fsm_eligible": _BOOL,
    "sen_provision": _STR,
    "looked_after": _BOOL,
    "child_in_need": _BOOL,
    "child_protection_plan": _BOOL,
    "admission_date": _STR,
    "leaving_date": _STR,
}
PUPIL_OPTIONAL = frozenset({"ethnicity", "child_in_need", "child_protection_plan", "leaving_date"})
PUPIL_DATES = ("date_of_birth", "admission_date", "leaving_date")
MARK_TYPES: dict[str, str] = {"date": _STR, "session": _STR, "code": _STR}
assert tuple(HEADER_TYPES) == HEADER_FIELDS
assert (*PUPIL_TYPES, "sessions") == PUPIL_FIELDS
assert tuple(MARK_TYPES) == MARK_FIELDS

_ARROW_TYPE = {_STR: pa.string(), _BOOL: pa.bool_(), _INT: pa.int64()}
_RAW_MARK = pa.struct([(name, _ARROW_TYPE[t]) for name, t in MARK_TYPES.items()])
_RAW_PUPIL = pa.struct(
    [(name, _ARROW_TYPE[t]) for name, t in PUPIL_TYPES.items()] + [("sessions", pa.list_(_RAW_MARK))]
)
_RAW_MESSAGE = pa.schema(
    [(name, _ARROW_TYPE[t]) for name, t in HEADER_TYPES.items()] + [("pupils", pa.list_(_RAW_PUPIL))]
)
_PARSE_OPTIONS = pj.ParseOptions(explicit_schema=_RAW_MESSAGE, unexpected_field_behavior="ignore")
_CONTRACT_READER = ContractReader(_RAW_MESSAGE)

# Flat raw tables: what both paths produce before the value checks.
_FLAT_HEADER = pa.schema(
    [("msg_index", pa.int32())]
    + [(name, _ARROW_TYPE[t]) for name, t in HEADER_TYPES.items()]
    + [("pupils_in_message", pa.int32()), ("marks_in_message", pa.int32()), ("extra_fields", pa.int64())]
)
_FLAT_PUPIL = pa.schema(
    [("msg_index", pa.int32()), ("pupil_position", pa.int32())]
    + [(name, _ARROW_TYPE[t]) for name, t in PUPIL_TYPES.items()]
    + [("marks_in_pupil", pa.int32())]
)
_FLAT_MARK = pa.schema(
    [("msg_index", pa.int32()), ("pupil_position", pa.int32()), ("mark_position", pa.int32())]
    + [(name, _ARROW_TYPE[t]) for name, t in MARK_TYPES.items()]
)

_JSON_WHITESPACE = b" \t\n\r"
#: Bytes of messages per Arrow parse: big enough that the ~0.25 ms cost of a call is small, small enough
#: that a faulty message costs little to isolate (and below Arrow's int32 block size: one block per call
#: keeps rows = messages).
_BLOCK_BYTES = 1 << 20
#: Bytes of messages per jsonscan call (one call's scratch columns are sized by it).
_SCAN_BYTES = 8 << 20
_ROW_HINT = re.compile(r"in row (\d+)")
_SCAN_SLICE_BYTES = 4 << 20  # bytes of raw messages per numpy pass in _count_keys
_WHITESPACE = np.zeros(256, dtype=np.bool_)
_WHITESPACE[[32, 9, 10, 13]] = True
_VALIDATOR = msgspec.json.Decoder(msgspec.Raw)  # strict JSON, nesting-limited, builds nothing


# --- helpers ------------------------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_fault(name: str, want: str, value: Any) -> str | None:
    """Detail for a value of the wrong JSON type (None when the type is right or the value is null)."""
    if value is None:
        return None
    if want == _STR and type(value) is str:
        return None
    if want == _BOOL and type(value) is bool:
        return None
    if want == _INT:
        if type(value) is int:
            return None if -(2**63) <= value < 2**63 else f"{name}: integer out of range"
        if type(value) is float and value.is_integer() and abs(value) >= 2**63:
            return f"{name}: integer out of range"  # orjson reads integers beyond 64 bits as floats
    article = "an" if want == _INT else "a"
    return f"{name}: expected {article} {want}, got {_json_type(value)}"


def _is_utf8(message: bytes) -> bool:
    if message.isascii():
        return True
    try:
        message.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _utf8_buffer(buffer: bytes) -> bool:
    """Whether ``buffer`` is valid UTF-8 (Arrow's vectorised check, zero-copy over the bytes)."""
    if buffer.isascii():
        return True
    offsets = pa.py_buffer(np.array([0, len(buffer)], dtype=np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(buffer)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _count_valued_keys(document: Any) -> int:
    """Keys with a non-null value anywhere inside a decoded value (iterative: values may nest deeply)."""
    count = 0
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for value in node.values():
                if value is not None:
                    count += 1
                    if isinstance(value, dict | list):
                        stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))
    return count


_HEADER_KEYS = frozenset((*HEADER_FIELDS, "pupils"))
_PUPIL_KEYS = frozenset(PUPIL_FIELDS)
_MARK_KEYS = frozenset(MARK_FIELDS)
_ALLOWED_TYPES = {_STR: {str, type(None)}, _BOOL: {bool, type(None)}}


@dataclass
class _Rows:
    """What the slow path produced: Arrow tables per message, and rejection rows."""

    headers: list[dict] = field(default_factory=list)
    pupils: list[pa.Table] = field(default_factory=list)
    marks: list[pa.Table] = field(default_factory=list)
    message_rejections: list[dict] = field(default_factory=list)
    pupil_rejections: list[dict] = field(default_factory=list)
    mark_rejections: list[dict] = field(default_factory=list)
    #: (level, field) -> positions of records whose field had the wrong JSON type: nulled in the tables, so
    #: the shared checks must not call it missing as well.
    #: Positions: (msg,), (msg, pupil), (msg, pupil, mark).
    type_faults: dict[tuple[str, str], set[tuple[int, ...]]] = field(default_factory=dict)

    def reject_message(self, msg_index: int, code: str, field_name: str, detail: str) -> None:
        self.message_rejections.append(
            {"msg_index": msg_index, "reason_code": code, "field": field_name, "detail": detail}
        )


def _extra_values_in(records: list[dict], contract: frozenset[str]) -> int:
    """Out-of-contract keys with a value in ``records``, and the keys carrying a value inside them."""
    outside = [
        keys for keys in map(operator.sub, map(dict.keys, records), itertools.repeat(contract)) if keys
    ]
    count = 0
    for record, keys in zip((r for r in records if r.keys() - contract), outside, strict=True):
        count += _count_valued_keys({name: record[name] for name in keys})
    return count


def _typed_columns(
    records: list[dict], types: dict[str, str]
) -> tuple[dict[str, list], dict[int, list[str]], int]:
    """Each field as a Python list (C-level gathers), per record position the fields of a wrong type, and
    how many values (not null) the fields held."""
    columns: dict[str, list] = {}
    faults: dict[int, list[str]] = {}
    values = 0
    for name, want in types.items():
        column = list(map(operator.methodcaller("get", name), records))
        values += len(column) - column.count(None)
        if not set(map(type, column)) <= _ALLOWED_TYPES[want]:
            for position, value in enumerate(column):
                if value is not None and type(value) not in _ALLOWED_TYPES[want]:
                    faults.setdefault(position, []).append(
                        f"{name}: expected a {want}, got {_json_type(value)}"
                    )
                    column[position] = None
        columns[name] = column
    return columns, faults, values


# --- slow path: one message with orjson, naming every faulty field ------------------------------------------


def _json_error_detail(exc: orjson.JSONDecodeError) -> str:
    text = str(exc)
    if "depth limit" in text or "recursion" in text:
        return "(message): JSON nested more than 1024 levels deep"
    return f"(message): not valid JSON: {text}"


def _decode_slow(msg_index: int, message: bytes, rows: _Rows) -> None:
    """Decode one (UTF-8) message the careful way: reject it whole for a structural fault, else keep every
    record whose fields have the contract's JSON types and reject the others by name. Column-wise in
    Python (one list per field, gathered by C-level iteration), then straight to Arrow."""
    try:
        document = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        rows.reject_message(msg_index, "MSG_NOT_JSON", "(message)", _json_error_detail(exc))
        return
    if not isinstance(document, dict):
        rows.reject_message(
            msg_index,
            "MSG_CONTRACT",
            "(top level)",
            f"(top level): expected a JSON object, got {_json_type(document)}",
        )
        return
    header = {name: document.get(name) for name in HEADER_FIELDS}
    faults: list[tuple[str, str]] = []
    for name, want in HEADER_TYPES.items():
        detail = _type_fault(name, want, header[name])
        if detail:
            faults.append((name, detail))
            header[name] = None
            rows.type_faults.setdefault(("header", name), set()).add((msg_index,))
    pupils = document.get("pupils")
    sessions: list = []
    if type(pupils) is not list:
        faults.append(("pupils", "pupils: missing or not a list"))
        pupils = []
    elif pupils:
        # Structure, checked for whole columns at C speed; positions are looked for only when it is broken.
        if set(map(type, pupils)) != {dict}:
            faults.extend(("pupils", f"pupils.{position}: expected an object")
                          for position, pupil in enumerate(pupils) if type(pupil) is not dict)
        sessions = [p.get("sessions") if type(p) is dict else [] for p in pupils]
        if not set(map(type, sessions)) <= {list}:
            faults.extend(("pupils.sessions", f"pupils.{position}.sessions: missing or not a list")
                          for position, marks in enumerate(sessions) if type(marks) is not list)
            sessions = [marks if type(marks) is list else [] for marks in sessions]
        if not set(map(type, itertools.chain.from_iterable(sessions))) <= {dict}:
            faults.extend(
                ("pupils.sessions", f"pupils.{position}.sessions.{mark_position}: expected an object")
                for position, marks in enumerate(sessions)
                for mark_position, mark in enumerate(marks)
                if type(mark) is not dict
            )
    for name, detail in faults:
        rows.reject_message(msg_index, "MSG_CONTRACT", name, detail)
    structure_ok = not any(name.startswith("pupils") for name, _ in faults)
    marks = list(itertools.chain.from_iterable(sessions)) if structure_ok else []
    header.update(msg_index=msg_index, pupils_in_message=len(pupils),
                  marks_in_message=sum(map(len, sessions)), extra_fields=0)
    rows.headers.append(header)
    if not structure_ok:
        return

    lengths = list(map(len, sessions))
    pupil_columns, pupil_faults, pupil_values = _typed_columns(pupils, PUPIL_TYPES)
    mark_columns, mark_faults, mark_values = _typed_columns(marks, MARK_TYPES)
    # Fields outside the contract: the byte arithmetic of the fast path when its preconditions hold, else a
    # walk of the document.
    counts = _count_keys(*join_messages([message]))
    contract_values = (sum(document.get(name) is not None for name in HEADER_FIELDS) + 1 + len(pupils)
                       + pupil_values + mark_values)  # header fields, "pupils", each "sessions", the rest
    if counts.unsure[0] or counts.valued_keys[0] < contract_values:
        extra = (_extra_values_in([document], _HEADER_KEYS) + _extra_values_in(pupils, _PUPIL_KEYS)
                 + _extra_values_in(marks, _MARK_KEYS))
    else:
        extra = int(counts.valued_keys[0]) - contract_values
    header["extra_fields"] = extra
    pupil_of_mark = np.repeat(np.arange(len(pupils), dtype=np.int32), np.asarray(lengths, dtype=np.int64))
    mark_position = np.asarray(list(itertools.chain.from_iterable(map(range, lengths))), dtype=np.int32)
    for position, details in pupil_faults.items():
        for detail in details:
            name = detail.split(":", 1)[0]
            rows.pupil_rejections.append(
                {
                    "msg_index": msg_index,
                    "pupil_position": position,
                    "reason_code": "PUPIL_CONTRACT",
                    "field": name,
                    "detail": detail,
                }
            )
            rows.type_faults.setdefault(("pupil", name), set()).add((msg_index, position))
    for index, details in mark_faults.items():
        pupil_position = int(pupil_of_mark[index])
        for detail in details:
            name = detail.split(":", 1)[0]
            rows.mark_rejections.append(
                {
                    "msg_index": msg_index,
                    "pupil_position": pupil_position,
                    "mark_position": int(mark_position[index]),
                    "reason_code": "MARK_CONTRACT",
                    "field": name,
                    "detail": detail,
                }
            )
            rows.type_faults.setdefault(("mark", name), set()).add(
                (msg_index, pupil_position, int(mark_position[index]))
            )

    rows.pupils.append(
        pa.table(
            [
                pa.array(np.full(len(pupils), msg_index, dtype=np.int32)),
                pa.array(np.arange(len(pupils), dtype=np.int32)),
            ]
            + [pa.array(pupil_columns[name], _RAW_PUPIL.field(name).type) for name in PUPIL_TYPES]
            + [pa.array(np.asarray(lengths, dtype=np.int32))],
            schema=_FLAT_PUPIL,
        )
    )
    rows.marks.append(
        pa.table(
            [
                pa.array(np.full(len(marks), msg_index, dtype=np.int32)),
                pa.array(pupil_of_mark),
                pa.array(mark_position),
            ]
            + [pa.array(mark_columns[name], pa.string()) for name in MARK_TYPES],
            schema=_FLAT_MARK,
        )
    )


# --- fast path: the whole batch through Arrow's JSON reader ------------------------------------------------


def _read(block: pa.Buffer, count: int) -> tuple[pa.Table | None, int | None]:
    """Parse ``count`` messages (one JSON object each, newline-separated) in one Arrow block;
    (table, None), or (None, the row Arrow blamed if it said)."""
    try:
        table = pj.read_json(
            pa.BufferReader(block),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(block.size + 1, 1 << 16)),
            parse_options=_PARSE_OPTIONS,
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowIndexError) as exc:
        hint = _ROW_HINT.search(str(exc))
        return None, int(hint.group(1)) if hint else None
    if table.num_rows != count:  # a message held more than one JSON value: isolate it
        return None, None
    return table, None


def _parse_pool(threads: int) -> ThreadPoolExecutor:
    """The threads that parse pieces of a batch side by side (both readers release the GIL), one pool per
    size."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        return pool


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _parse(
    buffer: bytes, bounds: np.ndarray, start: int, stop: int, threads: int = 1
) -> tuple[list[tuple[np.ndarray, pa.Table, np.ndarray | None]], list[int]]:
    """Parse messages ``start:stop``: parsed (positions, table, extra-field counts or None) parts, and the
    positions of messages that fail on their own (for the slow path). The contract's own reader
    (``jsonscan``) takes every message it can vouch for, in pieces of about ``_SCAN_BYTES`` (on ``threads``
    threads); the rest go through Arrow's reader, isolated as before (whose counts come later)."""
    pieces: list[tuple[int, int]] = []
    while start < stop:
        end = int(np.searchsorted(bounds, bounds[start] + _SCAN_BYTES, side="right")) - 1
        end = min(max(end, start + 1), stop)
        pieces.append((start, end))
        start = end

    def scan(piece: tuple[int, int]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        return _CONTRACT_READER.read(buffer, bounds, piece[0], piece[1])

    scanned = (list(_parse_pool(threads).map(scan, pieces)) if threads > 1 and len(pieces) > 1
               else list(map(scan, pieces)))
    parts: list[tuple[np.ndarray, pa.Table, np.ndarray | None]] = []
    failed: list[int] = []
    arrow_buffer = pa.py_buffer(buffer)
    for (low, high), (table, positions, extras) in zip(pieces, scanned, strict=True):
        if table.num_rows:
            parts.append((positions, table, extras))
        left = np.ones(high - low, dtype=np.bool_)
        left[positions - low] = False
        for run in np.split(np.flatnonzero(left) + low, np.flatnonzero(np.diff(np.flatnonzero(left)) != 1) + 1):
            if len(run):
                arrow_parts, arrow_failed = _parse_isolating(arrow_buffer, bounds, int(run[0]), int(run[-1]) + 1)
                parts.extend((np.arange(a, b, dtype=np.int64), t, None) for a, b, t in arrow_parts)
                failed.extend(arrow_failed)
    failed.sort()
    return parts, failed


def _parse_isolating(
    buffer: pa.Buffer, bounds: np.ndarray, start: int, stop: int
) -> tuple[list[tuple[int, int, pa.Table]], list[int]]:
    """Parse messages ``start:stop`` with Arrow's reader in blocks of about ``_BLOCK_BYTES``: parsed (start,
    stop, table) ranges in order, and the positions of messages that fail on their own. A block that fails is
    split at the row Arrow names (which goes to the slow path) or in halves."""
    parts: list[tuple[int, int, pa.Table]] = []
    failed: list[int] = []
    work: list[tuple[int, int]] = []  # half-open ranges of messages, processed in order
    while start < stop:
        end = int(np.searchsorted(bounds, bounds[start] + _BLOCK_BYTES, side="right")) - 1
        end = min(max(end, start + 1), stop)
        work.append((start, end))
        start = end
    while work:
        start, stop = work.pop(0)
        if start >= stop:
            continue
        low, high = int(bounds[start]), int(bounds[stop]) - 1
        table, hint = _read(buffer.slice(low, high - low), stop - start)
        if table is not None:
            parts.append((start, stop, table))
        elif stop - start == 1:
            failed.append(start)
        elif hint is not None and 0 <= hint < stop - start:
            bad = start + hint  # the row Arrow blamed goes to the slow path without another try
            failed.append(bad)
            work[:0] = [(start, bad), (bad + 1, stop)]
        else:
            middle = (start + stop) // 2
            work[:0] = [(start, middle), (middle, stop)]
    return parts, failed


@dataclass
class _KeyCounts:
    valued_keys: np.ndarray  # per message: keys whose value is not null
    nested_values: np.ndarray  # per message: keys whose value is an object or an array
    unsure: np.ndarray  # per message: the byte arithmetic's preconditions do not hold
    odd_values: np.ndarray  # per message: a key's value starts like NaN, Infinity or -Infinity


def _count_keys(buffer: bytes, bounds: np.ndarray) -> _KeyCounts:
    """Per message, from the colon positions of the raw bytes (see the module docstring).

    ``buffer`` and ``bounds`` as ``join_messages`` makes them (three spare bytes after the last message).
    The work goes in slices of a few MB so that numpy's
    temporaries stay small enough to be reused from the heap.
    """
    count = len(bounds) - 1
    data = np.frombuffer(buffer, dtype=np.uint8)
    valued = np.zeros(count, dtype=np.int64)
    nested = np.zeros(count, dtype=np.int64)
    unsure = np.zeros(count, dtype=np.int64)
    odd = np.zeros(count, dtype=np.int64)
    first_message = 0
    while first_message < count:
        stop_message = (
            int(np.searchsorted(bounds, bounds[first_message] + _SCAN_SLICE_BYTES, side="right")) - 1
        )
        stop_message = min(max(stop_message, first_message + 1), count)
        low, high = int(bounds[first_message]), int(bounds[stop_message])
        local = bounds[first_message : stop_message + 1] - low
        colons = np.flatnonzero(data[low:high] == 58) + low  # ':'
        before = data[colons - 1]
        keys = colons[before == 34]  # '"' just before: the colon ends a key (a string holds no raw '"')
        first = data[keys + 1]  # the value's first byte (after at most one space, below)
        unsure_parts = [keys[data[keys - 2] == 92]]  # '\\' before the quote: maybe an escaped quote
        if (before <= 32).any():  # whitespace between a key and its colon (or a colon in a string)
            unsure_parts.append(colons[_WHITESPACE[before]])
        space_after = first == 32
        if space_after.any():
            first = first.copy()
            first[space_after] = data[keys[space_after] + 2]
        if (first <= 32).any():  # more whitespace after the colon than one space
            unsure_parts.append(keys[_WHITESPACE[first]])
        unsure_at = np.sort(np.concatenate(unsure_parts)) - low
        odd_at = keys[(first == 78) | (first == 73)]  # NaN, Infinity
        minus = np.flatnonzero(first == 45)  # a negative number, or -Infinity
        if len(minus):
            after_minus = data[keys[minus] + 2 + space_after[minus]] == 73
            odd_at = np.sort(np.concatenate([odd_at, keys[minus[after_minus]]]))
        window = slice(first_message, stop_message)
        keys -= low
        valued[window] = np.diff(np.searchsorted(keys, local)) - np.diff(
            np.searchsorted(keys[first == 110], local)
        )  # 'n': the only JSON value starting so is null
        nested[window] = np.diff(np.searchsorted(keys[(first == 91) | (first == 123)], local))  # '[' '{'
        if len(unsure_at):
            unsure[window] = np.diff(np.searchsorted(unsure_at, local))
        if len(odd_at):
            odd[window] = np.diff(np.searchsorted(odd_at - low, local))
        first_message = stop_message
    return _KeyCounts(valued_keys=valued, nested_values=nested, unsure=unsure > 0, odd_values=odd > 0)


def _valid_count(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.is_valid(array), dtype=np.int64)


@dataclass
class _FastFlat:
    headers: pa.Table
    pupils: pa.Table
    marks: pa.Table
    structure_rejections: list[pa.Table]
    contract_values: np.ndarray  # per parsed message: contract fields with a non-null value
    contract_nested: np.ndarray  # per parsed message: contract fields whose value is a list


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For lists of these lengths laid end to end: each element's list (parent) and position in it."""
    total = int(lengths.sum())
    parent = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    return parent, np.arange(total, dtype=np.int64) - starts[parent]


def _sums(group: np.ndarray, values: np.ndarray, groups: int) -> np.ndarray:
    return np.bincount(group, weights=values, minlength=groups).astype(np.int64)


def _lengths(lists: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.list_value_length(lists), 0), dtype=np.int64)


def _flatten(table: pa.Table, msg_index: np.ndarray) -> _FastFlat:
    """Nested parsed messages -> flat raw header, pupil and mark tables, column-wise and without copying
    the values (the columns stay chunked as Arrow's reader produced them)."""
    rows = table.num_rows
    pupils = table.column("pupils")
    pupils_in_message = _lengths(pupils)
    pupil_values = pc.list_flatten(pupils)
    pupil_parent, pupil_position = _positions(pupils_in_message)
    pupil_msg = msg_index[pupil_parent]
    sessions = pc.struct_field(pupil_values, "sessions")
    marks_in_pupil = _lengths(sessions)
    mark_values = pc.list_flatten(sessions)
    mark_parent, mark_position = _positions(marks_in_pupil)
    marks_in_message = np.bincount(pupil_parent, weights=marks_in_pupil, minlength=rows).astype(np.int64)

    # Structure: the nulls Arrow reads where the contract wants a list or an object.
    rejections: list[pa.Table] = []
    pupils_null = np.asarray(pc.is_null(pupils), dtype=np.bool_)
    if pupils_null.any():
        rejections.append(
            _message_rejections(
                msg_index[pupils_null], "MSG_CONTRACT", "pupils",
                ["pupils: missing or not a list"] * int(pupils_null.sum()),
            )
        )
    pupil_null = np.asarray(pc.is_null(pupil_values), dtype=np.bool_)
    if pupil_null.any():
        rejections.append(
            _message_rejections(
                pupil_msg[pupil_null], "MSG_CONTRACT", "pupils",
                [f"pupils.{p}: expected an object" for p in pupil_position[pupil_null]],
            )
        )
    sessions_null = np.asarray(pc.is_null(sessions), dtype=np.bool_) & ~pupil_null
    if sessions_null.any():
        rejections.append(
            _message_rejections(
                pupil_msg[sessions_null], "MSG_CONTRACT", "pupils.sessions",
                [f"pupils.{p}.sessions: missing or not a list" for p in pupil_position[sessions_null]],
            )
        )
    mark_null = np.asarray(pc.is_null(mark_values), dtype=np.bool_)
    if mark_null.any():
        pupil_of = mark_parent[mark_null]
        rejections.append(
            _message_rejections(
                pupil_msg[pupil_of], "MSG_CONTRACT", "pupils.sessions",
                [
                    f"pupils.{p}.sessions.{m}: expected an object"
                    for p, m in zip(pupil_position[pupil_of], mark_position[mark_null], strict=True)
                ],
            )
        )

    # Contract fields carrying a value, per message (for the extra-field arithmetic).
    pupil_columns = {name: pc.struct_field(pupil_values, name) for name in PUPIL_TYPES}
    mark_columns = {name: pc.struct_field(mark_values, name) for name in MARK_TYPES}
    pupils_valid = _valid_count(pupils)
    sessions_valid = _valid_count(sessions)
    contract_values = pupils_valid + sum(_valid_count(table.column(name)) for name in HEADER_FIELDS)
    per_pupil = sessions_valid + sum(_valid_count(column) for column in pupil_columns.values())
    if len(mark_parent):
        per_mark = sum(_valid_count(column) for column in mark_columns.values())
        per_pupil = per_pupil + _sums(mark_parent, per_mark, len(pupil_parent))
    contract_nested = pupils_valid
    if len(pupil_parent):
        contract_values = contract_values + _sums(pupil_parent, per_pupil, rows)
        contract_nested = contract_nested + _sums(pupil_parent, sessions_valid, rows)

    headers = pa.table(
        [pa.array(msg_index, pa.int32())]
        + [table.column(name) for name in HEADER_FIELDS]
        + [
            pa.array(pupils_in_message, pa.int32()),
            pa.array(marks_in_message, pa.int32()),
            pa.nulls(rows, pa.int64()),
        ],
        schema=_FLAT_HEADER,
    )
    flat_pupils = pa.table(
        [pa.array(pupil_msg, pa.int32()), pa.array(pupil_position, pa.int32())]
        + [pupil_columns[name] for name in PUPIL_TYPES]
        + [pa.array(marks_in_pupil, pa.int32())],
        schema=_FLAT_PUPIL,
    )
    flat_marks = pa.table(
        [
            pa.array(pupil_msg[mark_parent], pa.int32()),
            pa.array(pupil_position[mark_parent], pa.int32()),
            pa.array(mark_position, pa.int32()),
        ]
        + [mark_columns[name] for name in MARK_TYPES],
        schema=_FLAT_MARK,
    )
    return _FastFlat(headers, flat_pupils, flat_marks, rejections, contract_values, contract_nested)


# --- rejection tables ------------------------------------------------------------------------------------


def _message_rejections(msg_index: Any, code: str, field_name: str, details: Any) -> pa.Table:
    msg = pa.array(msg_index, pa.int32())
    details = pa.array(details, pa.string()) if not isinstance(details, pa.Array) else details
    return pa.table(
        [
            msg,
            pa.array([code] * len(msg), pa.string()),
            pa.array([field_name] * len(msg), pa.string()),
            details,
        ],
        schema=MESSAGE_REJECTIONS_SCHEMA,
    )


def _filtered_rejections(
    table: pa.Table,
    mask: pa.Array,
    code: str,
    field_name: str,
    detail: str,
    columns: tuple[str, ...],
    schema: pa.Schema,
) -> pa.Table | None:
    mask = pc.fill_null(mask, False)
    n = int(pc.sum(mask).as_py() or 0)
    if n == 0:
        return None
    return pa.table(
        [pc.filter(table.column(c), mask) for c in columns]
        + [
            pa.array([code] * n, pa.string()),
            pa.array([field_name] * n, pa.string()),
            pa.array([detail] * n, pa.string()),
        ],
        schema=schema,
    )


def _concat(tables: list[pa.Table | None], schema: pa.Schema) -> pa.Table:
    present = [t.cast(schema) if t.schema != schema else t for t in tables if t is not None and t.num_rows]
    if not present:
        return schema.empty_table()
    return pa.concat_tables(present)


# --- value parsing (column-wise) ---------------------------------------------------------------------------

_DATE_SHAPE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_FIRST_DATE = pa.scalar(dt.date(1, 1, 1), pa.date32())
_TIMESTAMP_SHAPE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_UUID_SHAPE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def parse_iso_dates(strings: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """YYYY-MM-DD strings -> date32; null where null or not a real calendar date in that exact form.

    Arrow's own cast does the common case in one pass; only a column holding some bad value is parsed again
    the lenient way, once per distinct string.
    """
    if len(strings) == 0:
        return pa.array([], pa.date32())
    try:  # Arrow's cast is exact (YYYY-MM-DD, real calendar dates) but fails whole on one bad value
        dates = pc.cast(strings, pa.date32())
    except pa.ArrowInvalid:
        if isinstance(strings, pa.ChunkedArray):
            strings = strings.combine_chunks()
        # Some value is no date: parse each distinct string leniently, then keep only exact round trips
        # (strptime would take 2023-02-29 for 1 March, and single-digit months).
        encoded = pc.dictionary_encode(strings)
        distinct = encoded.dictionary
        shaped = pc.fill_null(pc.match_substring_regex(distinct, _DATE_SHAPE), False)
        candidates = pc.if_else(shaped, distinct, pa.scalar(None, pa.string()))
        parsed = pc.strptime(candidates, format="%Y-%m-%d", unit="s", error_is_null=True)
        exact = pc.and_(
            pc.and_(
                pc.equal(pc.year(parsed), pc.cast(pc.utf8_slice_codeunits(candidates, 0, 4), pa.int64())),
                pc.equal(pc.month(parsed), pc.cast(pc.utf8_slice_codeunits(candidates, 5, 7), pa.int64())),
            ),
            pc.equal(pc.day(parsed), pc.cast(pc.utf8_slice_codeunits(candidates, 8, 10), pa.int64())),
        )
        dates = pc.take(
            pc.if_else(
                pc.fill_null(exact, False), pc.cast(parsed, pa.date32()), pa.scalar(None, pa.date32())
            ),
            encoded.indices,
        )
    if pc.any(pc.less(dates, _FIRST_DATE)).as_py():  # year 0 parses, but is no date
        dates = pc.if_else(
            pc.fill_null(pc.less(dates, _FIRST_DATE), False), pa.scalar(None, pa.date32()), dates
        )
    return dates


def _parse_timestamps(strings: pa.Array) -> pa.Array:
    """RFC 3339 date-times with an offset -> timestamp(us, UTC); null where null or invalid."""
    shaped = pc.fill_null(pc.match_substring_regex(strings, _TIMESTAMP_SHAPE), False)
    normal = pc.replace_substring_regex(pc.utf8_upper(strings), r"(\.[0-9]{6})[0-9]+", r"\1")
    normal = pc.if_else(shaped, normal, pa.scalar(None, pa.string()))
    try:
        return pc.cast(normal, UTC_TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        out = []
        for value in normal.to_pylist():  # one per message, only when some value is malformed
            try:
                out.append(pc.cast(pa.array([value], pa.string()), UTC_TS)[0].as_py())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                out.append(None)
        return pa.array(out, UTC_TS)


# --- the checks both paths share ------------------------------------------------------------------------


def _header_value_rejections(
    headers: pa.Table, type_faults: dict[tuple[str, str], set[tuple[int, ...]]]
) -> tuple[list[pa.Table | None], dict[str, pa.Array]]:
    """Missing/malformed header values -> rejections, and the parsed columns."""
    out: list[pa.Table | None] = []

    def reject(mask: pa.Array, name: str, detail: str) -> None:
        out.append(_message_value_rejections(headers, mask, name, detail))

    for name in HEADER_FIELDS:
        out.append(
            _without(
                _message_value_rejections(
                    headers, pc.is_null(headers.column(name)), name, f"{name}: missing or null"
                ),
                type_faults.get(("header", name)),
                ("msg_index",),
            )
        )
    version = headers.column("schema_version")
    reject(
        pc.not_equal(version, SCHEMA_VERSION),
        "schema_version",
        f'schema_version: unsupported (this stream reads "{SCHEMA_VERSION}")',
    )
    extract_id = headers.column("extract_id")
    reject(
        pc.invert(pc.match_substring_regex(extract_id, _UUID_SHAPE)),
        "extract_id",
        "extract_id: not a UUID (8-4-4-4-12 hexadecimal digits)",
    )
    reject(
        pc.invert(pc.match_substring_regex(headers.column("urn"), r"^[0-9]{6}$")), "urn", "urn: not 6 digits"
    )
    reject(
        pc.invert(pc.match_substring_regex(headers.column("laestab"), r"^[0-9]{7}$")),
        "laestab",
        "laestab: not 7 digits",
    )
    extract_date = parse_iso_dates(headers.column("extract_date"))
    reject(
        pc.and_(pc.is_valid(headers.column("extract_date")), pc.is_null(extract_date)),
        "extract_date",
        "extract_date: not a YYYY-MM-DD date",
    )
    generated_at = _parse_timestamps(headers.column("generated_at").combine_chunks())
    reject(
        pc.and_(pc.is_valid(headers.column("generated_at")), pc.is_null(generated_at)),
        "generated_at",
        "generated_at: not an RFC 3339 date-time with a UTC offset",
    )
    for name, low in (("chunk_index", 0), ("chunk_count", 1), ("pupil_count", 0)):
        column = headers.column(name)
        reject(pc.less(column, low), name, f"{name}: must be at least {low}")
        reject(pc.greater(column, INT32_MAX), name, f"{name}: integer out of range")
    parsed = {
        "extract_id": pc.utf8_lower(extract_id),
        "extract_date": extract_date,
        "generated_at": generated_at,
    }
    return out, parsed


def _message_value_rejections(headers: pa.Table, mask: pa.Array, name: str, detail: str) -> pa.Table | None:
    return _filtered_rejections(
        headers, mask, "MSG_CONTRACT", name, detail, ("msg_index",), MESSAGE_REJECTIONS_SCHEMA
    )


# --- entry point --------------------------------------------------------------------------------------------


def decode_messages(values: Sequence[bytes | bytearray | memoryview | None], *, threads: int = 1) -> DecodedBatch:
    """Decode a batch of extract messages (see the module docstring for the two paths). ``threads``: how many
    threads parse JSON blocks at once (the result does not depend on it)."""
    rows = _Rows()
    fast_messages: list[bytes] = []
    fast_indexes: list[int] = []
    slow: list[tuple[int, bytes]] = []
    for index, value in enumerate(values):
        if value is None or len(value) == 0:
            rows.reject_message(index, "MSG_NOT_JSON", "(message)", "(message): empty message")
            continue
        message = value if isinstance(value, bytes) else bytes(value)
        stripped = message.strip(_JSON_WHITESPACE)
        if stripped[:1] == b"{" and stripped[-1:] == b"}":
            fast_messages.append(stripped)
            fast_indexes.append(index)
        elif _is_utf8(message):
            slow.append((index, message))
        else:
            rows.reject_message(index, "MSG_NOT_UTF8", "(message)", "(message): not valid UTF-8")

    flat_parts: list[_FastFlat] = []
    in_order = True
    buffer, bounds = join_messages(fast_messages)
    if fast_messages and not _utf8_buffer(buffer):  # rare: find the culprits, then join again
        keep = [_is_utf8(m) for m in fast_messages]
        for index, ok in zip(fast_indexes, keep, strict=True):
            if not ok:
                rows.reject_message(index, "MSG_NOT_UTF8", "(message)", "(message): not valid UTF-8")
        fast_messages = [m for m, ok in zip(fast_messages, keep, strict=True) if ok]
        fast_indexes = [i for i, ok in zip(fast_indexes, keep, strict=True) if ok]
        buffer, bounds = join_messages(fast_messages)
    if fast_messages:
        parts, failed = _parse(buffer, bounds, 0, len(fast_messages), threads)
        slow.extend((fast_indexes[position], fast_messages[position]) for position in failed)
        if parts:
            positions = np.concatenate([p for p, _, _ in parts])
            table = pa.concat_tables([t for _, t, _ in parts]) if len(parts) > 1 else parts[0][1]
            index_array = np.asarray(fast_indexes, dtype=np.int64)[positions]
            in_order = bool(np.all(np.diff(positions) > 0))
            flat = _flatten(table, index_array)
            # Extra fields: jsonscan counted its messages; Arrow's need the byte arithmetic.
            extra = np.concatenate([e if e is not None else np.full(len(p), -1, dtype=np.int64)
                                    for p, _, e in parts])
            unsure = np.zeros(len(positions), dtype=np.bool_)
            by_arrow = np.array([e is None for _, _, e in parts]).repeat([len(p) for p, _, _ in parts])
            if by_arrow.any():  # the byte arithmetic over those messages only
                rows_by_arrow = np.flatnonzero(by_arrow)
                counts = _count_keys(*join_messages([fast_messages[p] for p in positions[rows_by_arrow]]))
                arrow_extra = counts.valued_keys - flat.contract_values[rows_by_arrow]
                extra[rows_by_arrow] = arrow_extra
                unsure[rows_by_arrow] = counts.unsure | (arrow_extra < 0)
                # Arrow skipped the extra values unseen: where one is an object or array, or starts like
                # NaN/Infinity, make sure the message is strict JSON (and not nested too deeply).
                suspect = rows_by_arrow[~unsure[rows_by_arrow] & (
                    (counts.nested_values > flat.contract_nested[rows_by_arrow]) | counts.odd_values)]
                for k in suspect:
                    try:
                        _VALIDATOR.decode(fast_messages[positions[k]])
                    except (msgspec.DecodeError, RecursionError):
                        unsure[k] = True
            if unsure.any():
                slow.extend(
                    (int(index_array[k]), fast_messages[positions[k]]) for k in np.flatnonzero(unsure)
                )
                dropped = pa.array(index_array[unsure], pa.int32())

                def keep(t: pa.Table, dropped: pa.Array = dropped) -> pa.Table:
                    return t.filter(pc.invert(pc.is_in(t.column("msg_index"), value_set=dropped)))

                flat = _FastFlat(
                    keep(flat.headers),
                    keep(flat.pupils),
                    keep(flat.marks),
                    [keep(t) for t in flat.structure_rejections],
                    flat.contract_values[~unsure],
                    flat.contract_nested[~unsure],
                )
                extra = extra[~unsure]
            headers_with_extra = flat.headers.set_column(
                flat.headers.schema.get_field_index("extra_fields"),
                "extra_fields",
                pa.array(extra, pa.int64()),
            )
            flat_parts.append(
                _FastFlat(
                    headers_with_extra,
                    flat.pupils,
                    flat.marks,
                    flat.structure_rejections,
                    flat.contract_values,
                    flat.contract_nested,
                )
            )

    slow.sort()
    for index, message in slow:
        _decode_slow(index, message, rows)

    raw_headers = _concat(
        [p.headers for p in flat_parts] + [pa.Table.from_pylist(rows.headers, schema=_FLAT_HEADER)],
        _FLAT_HEADER,
    )
    raw_pupils = _concat([p.pupils for p in flat_parts] + rows.pupils, _FLAT_PUPIL)
    raw_marks = _concat([p.marks for p in flat_parts] + rows.marks, _FLAT_MARK)
    if (slow or not in_order) and flat_parts:  # headers in input order; pupils and marks stay grouped by message
        raw_headers = raw_headers.take(pc.sort_indices(raw_headers.column("msg_index")))

    header_rejections, parsed = _header_value_rejections(raw_headers, rows.type_faults)
    message_rejections = _sorted(
        _concat(
            [pa.Table.from_pylist(rows.message_rejections, schema=MESSAGE_REJECTIONS_SCHEMA)]
            + [t for p in flat_parts for t in p.structure_rejections]
            + header_rejections,
            MESSAGE_REJECTIONS_SCHEMA,
        ),
        ("msg_index",),
    )
    rejected_messages = pc.unique(message_rejections.column("msg_index"))

    headers = pa.table(
        {
            "msg_index": raw_headers.column("msg_index"),
            "extract_id": parsed["extract_id"],
            "urn": raw_headers.column("urn"),
            "laestab": raw_headers.column("laestab"),
            "extract_date": parsed["extract_date"],
            "generated_at": parsed["generated_at"],
            "chunk_index": pc.cast(raw_headers.column("chunk_index"), pa.int32(), safe=False),
            "chunk_count": pc.cast(raw_headers.column("chunk_count"), pa.int32(), safe=False),
            "pupil_count": pc.cast(raw_headers.column("pupil_count"), pa.int32(), safe=False),
            "pupils_in_message": raw_headers.column("pupils_in_message"),
            "marks_in_message": raw_headers.column("marks_in_message"),
            "extra_fields_in_message": pc.cast(raw_headers.column("extra_fields"), pa.int32(), safe=False),
        }
    )
    headers = _drop(headers, "msg_index", rejected_messages).cast(HEADERS_SCHEMA)
    extra_fields_dropped = int(pc.sum(headers.column("extra_fields_in_message")).as_py() or 0)

    # Pupils and marks: row arithmetic instead of key joins. Both raw tables hold every record of their
    # messages, grouped by message in the same order, each pupil's marks together in position order.
    p_msg = np.asarray(raw_pupils.column("msg_index"), dtype=np.int64)
    marks_in_pupil = np.asarray(raw_pupils.column("marks_in_pupil"), dtype=np.int64)
    size = int(max(p_msg.max(initial=-1), len(values) - 1)) + 1
    first_row = np.zeros(size, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], p_msg[1:] != p_msg[:-1]])) if len(p_msg) else p_msg
    first_row[p_msg[starts]] = starts
    mark_start = np.cumsum(marks_in_pupil) - marks_in_pupil
    pupil_of_mark = np.repeat(np.arange(len(p_msg), dtype=np.int64), marks_in_pupil)
    message_rejected = np.zeros(size, dtype=np.bool_)
    message_rejected[np.asarray(rejected_messages, dtype=np.int64)] = True

    pupil_cols = ("msg_index", "pupil_position")
    pupil_checks: list[pa.Table | None] = []
    for name in PUPIL_TYPES:
        if name not in PUPIL_OPTIONAL and raw_pupils.column(name).null_count:
            pupil_checks.append(_without(
                _filtered_rejections(raw_pupils, pc.is_null(raw_pupils.column(name)), "PUPIL_CONTRACT", name,
                                     f"{name}: missing or null", pupil_cols, PUPIL_REJECTIONS_SCHEMA),
                rows.type_faults.get(("pupil", name)), pupil_cols))
    pupil_dates = {}
    for name in PUPIL_DATES:
        raw = raw_pupils.column(name)
        pupil_dates[name] = parse_iso_dates(raw)
        if pupil_dates[name].null_count != raw.null_count:
            pupil_checks.append(_filtered_rejections(
                raw_pupils, pc.and_(pc.is_valid(raw), pc.is_null(pupil_dates[name])), "PUPIL_CONTRACT", name,
                f"{name}: not a YYYY-MM-DD date", pupil_cols, PUPIL_REJECTIONS_SCHEMA))
    pupil_rejections = _concat(
        [pa.Table.from_pylist(rows.pupil_rejections, schema=PUPIL_REJECTIONS_SCHEMA), *pupil_checks],
        PUPIL_REJECTIONS_SCHEMA)
    rejected_at = _rows_of(pupil_rejections, first_row)
    pupil_rejections = _sorted(pupil_rejections.filter(pa.array(~message_rejected[p_msg[rejected_at]]
                                                               if len(rejected_at) else [], pa.bool_())),
                               pupil_cols)
    pupil_bad = message_rejected[p_msg].copy() if len(p_msg) else np.zeros(0, dtype=np.bool_)
    pupil_bad[rejected_at] = True
    pupils = pa.table({
        "msg_index": raw_pupils.column("msg_index"),
        "pupil_position": raw_pupils.column("pupil_position"),
        **{name: pupil_dates.get(name, raw_pupils.column(name)) for name in PUPIL_TYPES},
        "marks_in_pupil": raw_pupils.column("marks_in_pupil"),
    }, schema=PUPILS_SCHEMA)
    if pupil_bad.any():
        pupils = pupils.filter(pa.array(~pupil_bad))

    # Marks: of accepted pupils only (a rejected pupil's marks are dropped with it, unlisted).
    mark_cols = ("msg_index", "pupil_position", "mark_position")
    mark_checks: list[pa.Table | None] = [
        _without(_filtered_rejections(raw_marks, pc.is_null(raw_marks.column(name)), "MARK_CONTRACT", name,
                                      f"{name}: missing or null", mark_cols, MARK_REJECTIONS_SCHEMA),
                 rows.type_faults.get(("mark", name)), mark_cols)
        for name in MARK_TYPES if raw_marks.column(name).null_count
    ]
    mark_dates = parse_iso_dates(raw_marks.column("date"))
    if mark_dates.null_count != raw_marks.column("date").null_count:
        mark_checks.append(_filtered_rejections(
            raw_marks, pc.and_(pc.is_valid(raw_marks.column("date")), pc.is_null(mark_dates)),
            "MARK_CONTRACT", "date", "date: not a YYYY-MM-DD date", mark_cols, MARK_REJECTIONS_SCHEMA))
    mark_rejections = _concat(
        [pa.Table.from_pylist(rows.mark_rejections, schema=MARK_REJECTIONS_SCHEMA), *mark_checks],
        MARK_REJECTIONS_SCHEMA)
    mark_pupil_at = _rows_of(mark_rejections, first_row)
    mark_at = mark_start[mark_pupil_at] + np.asarray(mark_rejections.column("mark_position"), dtype=np.int64)
    mark_rejections = _sorted(mark_rejections.filter(pa.array(~pupil_bad[mark_pupil_at]
                                                             if len(mark_pupil_at) else [], pa.bool_())),
                              mark_cols)
    mark_bad = pupil_bad[pupil_of_mark] if len(pupil_of_mark) else np.zeros(0, dtype=np.bool_)
    mark_bad[mark_at] = True
    marks = pa.table({
        "msg_index": raw_marks.column("msg_index"),
        "pupil_position": raw_marks.column("pupil_position"),
        "mark_position": raw_marks.column("mark_position"),
        "date": mark_dates,
        "session": raw_marks.column("session"),
        "code": raw_marks.column("code"),
    }, schema=MARKS_SCHEMA)
    if mark_bad.any():
        marks = marks.filter(pa.array(~mark_bad))


    return DecodedBatch(
        headers=headers,
        pupils=pupils,
        marks=marks,
        message_rejections=message_rejections,
        pupil_rejections=pupil_rejections,
        mark_rejections=mark_rejections,
        extra_fields_dropped=extra_fields_dropped,
        slow_path_messages=len(slow),
    )


def _drop(table: pa.Table, column: str, values: pa.Array) -> pa.Table:
    """Rows whose ``column`` is not in ``values`` (no work when there are none)."""
    if len(values) == 0 or table.num_rows == 0:
        return table
    return table.filter(pc.invert(pc.is_in(table.column(column), value_set=values)))


def _rows_of(rejections: pa.Table, first_row: np.ndarray) -> np.ndarray:
    """Row in the raw pupil table of each rejection's (msg_index, pupil_position)."""
    msg = np.asarray(rejections.column("msg_index"), dtype=np.int64)
    return first_row[msg] + np.asarray(rejections.column("pupil_position"), dtype=np.int64)


def _sorted(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Rejections in a stable order: by position, then field, reason and detail."""
    if table.num_rows < 2:
        return table
    return table.sort_by([(k, "ascending") for k in (*keys, "field", "reason_code", "detail")])


def _without(
    table: pa.Table | None, positions: set[tuple[int, ...]] | None, keys: tuple[str, ...]
) -> pa.Table | None:
    """Drop the rows at ``positions`` (a few records, from the slow path's type faults)."""
    if table is None or not positions:
        return table
    drop = [tuple(row[k] for k in keys) in positions for row in table.select(list(keys)).to_pylist()]
    return table.filter(pc.invert(pa.array(drop, pa.bool_())))
