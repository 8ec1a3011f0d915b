"""The validation rules, column-wise over decoded tables: pure functions, no I/O, no Python loop per record.

Three entry points, in the order the worker applies them:

- :func:`check_headers`: each message's header against the school register and today's date;
- :func:`check_extract_consistency`: the chunks of each extract against each other;
- :func:`validate_records`: pupils and marks of accepted messages, returning what to store (shaped like the
  ``pupils`` and ``attendance_sessions`` table contracts) and every pupil/mark rejection and warning.

Reason codes and severities come from :mod:`streams.rules`; ``docs/rules.md`` gives the reasoning and sources.
Details name the field and the fault, never a pupil's value (counts and register facts about the school are
fine).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.codes import REGISTER_CODES, Category
from schemas.contract import SEN_PROVISION, YEAR_GROUPS
from storage.tables import ATTENDANCE_SESSIONS, PUPILS
from streams.decode import MESSAGE_REJECTIONS_SCHEMA
from streams.rules import RULES, upn_is_valid

#: GIAS EstablishmentStatus names under which a school may send data.
OPEN_STATUSES = ("Open", "Open, but proposed to close")
SEXES = ("M", "F")
NO_MARK = "-"

REJECTIONS_SCHEMA = pa.schema(
    [
        ("msg_index", pa.int32()),
        ("pupil_position", pa.int32()),
        ("mark_position", pa.int32()),
        ("reason_code", pa.string()),
        ("severity", pa.string()),
        ("field", pa.string()),
        ("detail", pa.string()),
    ]
)
#: ``pupils`` table contract without ``current_since`` (the sink stamps it).
ACCEPTED_PUPILS_SCHEMA = pa.schema([f for f in PUPILS.schema if f.name != "current_since"])
#: ``attendance_sessions`` table contract without ``ingested_at`` (the sink stamps it).
ACCEPTED_MARKS_SCHEMA = pa.schema([f for f in ATTENDANCE_SESSIONS.schema if f.name != "ingested_at"])
PER_MESSAGE_SCHEMA = pa.schema(
    [
        ("msg_index", pa.int32()),
        ("extract_id", pa.string()),
        ("pupils_accepted", pa.int32()),
        ("marks_accepted", pa.int32()),
    ]
)


# --- ages by year group -------------------------------------------------------------------------------------


def _age_ranges() -> dict[str, tuple[int, int]]:
    """Plausible age at 31 August before the academic year, by national curriculum year group.

    Reception is age 4 and Year N age N+4 (so compulsory school age 5-15 is Years 1-11), each +-1 year for
    pupils taught out of their age group; nursery N1/N2 2-4; early years E1/E2 under 5; M (mixed) and X (not
    following the national curriculum) any age 2-25. See docs/rules.md for the sources.
    """
    ranges = {"E1": (0, 4), "E2": (0, 4), "N1": (2, 4), "N2": (2, 4), "R": (3, 5), "M": (2, 25), "X": (2, 25)}
    ranges.update({str(year): (year + 3, year + 5) for year in range(1, 15)})
    assert set(ranges) == set(YEAR_GROUPS)
    return ranges


AGE_RANGES = _age_ranges()
_YEAR_GROUP_LIST = pa.array(list(YEAR_GROUPS), pa.string())
_MIN_AGE = pa.array([AGE_RANGES[y][0] for y in YEAR_GROUPS], pa.int32())
_MAX_AGE = pa.array([AGE_RANGES[y][1] for y in YEAR_GROUPS], pa.int32())

# --- register codes as lookup columns ---------------------------------------------------------------------
_CODES = pa.array([c.code for c in REGISTER_CODES], pa.string())
_VALID_FROM = pa.array([c.valid_from for c in REGISTER_CODES], pa.date32())
_VALID_TO = pa.array([c.valid_to for c in REGISTER_CODES], pa.date32())
_FLAG_COLUMNS: dict[str, pa.Array] = {
    "is_possible": pa.array([c.possible for c in REGISTER_CODES], pa.bool_()),
    "is_present": pa.array([c.category == Category.PRESENT for c in REGISTER_CODES], pa.bool_()),
    "is_approved_educational_activity": pa.array(
        [c.category == Category.AEA for c in REGISTER_CODES], pa.bool_()
    ),
    "is_authorised": pa.array([c.category == Category.AUTHORISED for c in REGISTER_CODES], pa.bool_()),
    "is_unauthorised": pa.array([c.category == Category.UNAUTHORISED for c in REGISTER_CODES], pa.bool_()),
    "is_late": pa.array([c.late for c in REGISTER_CODES], pa.bool_()),
}


assert list(_FLAG_COLUMNS) == ACCEPTED_MARKS_SCHEMA.names[5:11]


def mark_flags(codes: pa.Array | pa.ChunkedArray) -> dict[str, pa.Array]:
    """The statistical flags of each register code (null for a code that is not one)."""
    index = pc.index_in(codes, value_set=_CODES)
    return {name: pc.take(column, index) for name, column in _FLAG_COLUMNS.items()}


# --- small column helpers -----------------------------------------------------------------------------------


def _conform(table: pa.Table, types: dict[str, pa.DataType], *, contiguous: bool = False) -> pa.Table:
    """The named columns, cast to the given types (accepts large_string/string_view from Polars). Big
    tables keep their chunks (the steps below work on chunked columns, and copying them whole costs); small
    ones are made ``contiguous``."""
    missing = [name for name in types if name not in table.column_names]
    if missing:
        raise ValueError(f"table lacks column(s) {', '.join(missing)}")
    out = pa.table({name: table.column(name).cast(type_) for name, type_ in types.items()})
    return out.combine_chunks() if contiguous else out


def _strings(value: str, length: int) -> pa.Array:
    return pa.array([value], pa.string()).take(pa.array(np.zeros(length, dtype=np.int32)))


def _rows(
    mask: pa.Array,
    code: str,
    field: str,
    detail: str | pa.Array,
    msg_index: pa.Array,
    pupil_position: pa.Array | None = None,
    mark_position: pa.Array | None = None,
) -> pa.Table | None:
    """Rejection rows where ``mask`` is true (null counts as false)."""
    mask = pc.fill_null(mask, False)
    hits = int(pc.sum(mask).as_py() or 0)
    if hits == 0:
        return None
    nulls = pa.nulls(hits, pa.int32())

    def hit(values: pa.Array | pa.ChunkedArray | None) -> pa.Array:
        if values is None:
            return nulls
        out = pc.filter(values, mask)
        return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out

    return pa.table(
        [
            hit(msg_index),
            hit(pupil_position),
            hit(mark_position),
            _strings(code, hits),
            _strings(RULES[code].severity, hits),
            _strings(field, hits),
            hit(detail) if isinstance(detail, pa.Array | pa.ChunkedArray) else _strings(detail, hits),
        ],
        schema=REJECTIONS_SCHEMA,
    )


def _concat(tables: list[pa.Table | None], schema: pa.Schema) -> pa.Table:
    present = [t for t in tables if t is not None and t.num_rows]
    if not present:
        return schema.empty_table()
    out = pa.concat_tables(present)
    keys = [name for name in ("msg_index", "pupil_position", "mark_position") if name in schema.names]
    return out.sort_by([(k, "ascending") for k in keys])


def _message_rows(
    mask: pa.Array, code: str, field: str, detail: str | pa.Array, msg_index: pa.Array
) -> pa.Table | None:
    rows = _rows(mask, code, field, detail, msg_index)
    return rows.select(MESSAGE_REJECTIONS_SCHEMA.names) if rows is not None else None


# --- headers ------------------------------------------------------------------------------------------------


def check_headers(headers: pa.Table, register: pa.Table, today: dt.date, *, max_age_days: int) -> pa.Table:
    """Register and date checks of each message's header: rejections (msg_index, reason_code, field, detail).

    ``register`` has the columns of ``storage.tables.SCHOOLS`` (at least urn, laestab, status).
    """
    h = _conform(
        headers,
        {
            "msg_index": pa.int32(),
            "urn": pa.string(),
            "laestab": pa.string(),
            "extract_date": pa.date32(),
            "chunk_index": pa.int32(),
            "chunk_count": pa.int32(),
        },
        contiguous=True,
    )
    reg = _conform(register, {"urn": pa.string(), "laestab": pa.string(), "status": pa.string()},
                   contiguous=True)
    msg = h.column("msg_index")
    at = pc.index_in(h.column("urn"), value_set=reg.column("urn"))
    known = pc.is_valid(at)
    status = pc.take(reg.column("status"), at)
    is_open = pc.is_in(status, value_set=pa.array(OPEN_STATUSES))
    register_laestab = pc.take(reg.column("laestab"), at)
    extract_date = h.column("extract_date")
    oldest = today - dt.timedelta(days=max_age_days)
    out = [
        _message_rows(pc.invert(known), "MSG_UNKNOWN_URN", "urn", "urn: not in the school register", msg),
        _message_rows(
            pc.and_(known, pc.invert(is_open)),
            "MSG_CLOSED_URN",
            "urn",
            pc.binary_join_element_wise("urn: register status is '", pc.fill_null(status, "(none)"), "'", ""),
            msg,
        ),
        _message_rows(
            pc.and_(pc.is_valid(register_laestab), pc.not_equal(h.column("laestab"), register_laestab)),
            "MSG_LAESTAB_MISMATCH",
            "laestab",
            pc.binary_join_element_wise(
                "laestab: the register has ", pc.fill_null(register_laestab, ""), " for this urn", ""
            ),
            msg,
        ),
        _message_rows(
            pc.greater(extract_date, pa.scalar(today, pa.date32())),
            "MSG_EXTRACT_DATE_FUTURE",
            "extract_date",
            f"extract_date: after today ({today.isoformat()})",
            msg,
        ),
        _message_rows(
            pc.less(extract_date, pa.scalar(oldest, pa.date32())),
            "MSG_EXTRACT_DATE_TOO_OLD",
            "extract_date",
            f"extract_date: more than {max_age_days} days before today ({today.isoformat()})",
            msg,
        ),
        _message_rows(
            pc.greater_equal(h.column("chunk_index"), h.column("chunk_count")),
            "MSG_CHUNK_NUMBERING",
            "chunk_index",
            "chunk_index: not below chunk_count",
            msg,
        ),
    ]
    return _concat(out, MESSAGE_REJECTIONS_SCHEMA)


def check_extract_consistency(headers_of_complete_extracts: pa.Table) -> pa.Table:
    """Chunks of one extract against each other. Every chunk of a faulty extract gets the rejection.

    Expects the headers of every chunk of each extract (the worker calls it on extracts the completeness
    tracker has resolved). Redelivered copies of a chunk must be removed first: they count as a repeat.
    """
    h = _conform(
        headers_of_complete_extracts,
        {
            "msg_index": pa.int32(),
            "extract_id": pa.string(),
            "urn": pa.string(),
            "laestab": pa.string(),
            "extract_date": pa.date32(),
            "generated_at": pa.timestamp("us", tz="UTC"),
            "chunk_index": pa.int32(),
            "chunk_count": pa.int32(),
            "pupil_count": pa.int32(),
            "pupils_in_message": pa.int32(),
        },
        contiguous=True,
    )
    if h.num_rows == 0:
        return MESSAGE_REJECTIONS_SCHEMA.empty_table()
    g = (
        h.group_by("extract_id")
        .aggregate(
            [
                ("chunk_count", "count_distinct"),
                ("chunk_count", "min"),
                ("chunk_index", "count"),
                ("chunk_index", "count_distinct"),
                ("chunk_index", "min"),
                ("chunk_index", "max"),
                ("pupil_count", "count_distinct"),
                ("pupil_count", "min"),
                ("pupils_in_message", "sum"),
                ("urn", "count_distinct"),
                ("laestab", "count_distinct"),
                ("extract_date", "count_distinct"),
                ("generated_at", "count_distinct"),
            ]
        )
    )
    g = g.combine_chunks().to_batches()[0]  # one batch: plain arrays below
    extract = g.column("extract_id")
    count_consistent = pc.equal(g.column("chunk_count_count_distinct"), 1)
    repeated = pc.not_equal(g.column("chunk_index_count"), g.column("chunk_index_count_distinct"))
    whole = pc.and_(
        pc.and_(count_consistent, pc.invert(repeated)),
        pc.and_(
            pc.equal(g.column("chunk_index_count_distinct"), g.column("chunk_count_min")),
            pc.and_(
                pc.equal(g.column("chunk_index_min"), 0),
                pc.equal(g.column("chunk_index_max"), pc.subtract(g.column("chunk_count_min"), 1)),
            ),
        ),
    )
    pupil_count_consistent = pc.equal(g.column("pupil_count_count_distinct"), 1)
    total = pc.cast(g.column("pupils_in_message_sum"), pa.int64())
    faults: list[tuple[pa.Array, str, str, str | pa.Array]] = [
        (
            pc.invert(count_consistent),
            "MSG_CHUNK_NUMBERING",
            "chunk_count",
            "chunk_count: differs between chunks of the extract",
        ),
        (repeated, "MSG_CHUNK_NUMBERING", "chunk_index", "chunk_index: repeated within the extract"),
        (
            pc.and_(pc.and_(count_consistent, pc.invert(repeated)), pc.invert(whole)),
            "MSG_CHUNK_NUMBERING",
            "chunk_index",
            "chunk_index: the chunks are not numbered 0..chunk_count-1",
        ),
        (
            pc.invert(pupil_count_consistent),
            "MSG_PUPIL_COUNT_MISMATCH",
            "pupil_count",
            "pupil_count: differs between chunks of the extract",
        ),
        (
            pc.and_(
                pc.and_(whole, pupil_count_consistent),
                pc.not_equal(total, pc.cast(g.column("pupil_count_min"), pa.int64())),
            ),
            "MSG_PUPIL_COUNT_MISMATCH",
            "pupil_count",
            pc.binary_join_element_wise(
                "pupil_count: the chunks carry ",
                pc.cast(total, pa.string()),
                " pupils, pupil_count says ",
                pc.cast(g.column("pupil_count_min"), pa.string()),
                "",
            ),
        ),
    ]
    for name in ("urn", "laestab", "extract_date", "generated_at"):
        faults.append(
            (
                pc.greater(g.column(f"{name}_count_distinct"), 1),
                "MSG_HEADER_INCONSISTENT",
                name,
                f"{name}: differs between chunks of the extract",
            )
        )
    per_extract = []
    for mask, code, field, detail in faults:
        mask = pc.fill_null(mask, False)
        if not pc.any(mask).as_py():
            continue
        hits = pc.filter(extract, mask)
        per_extract.append(
            pa.table(
                {
                    "extract_id": hits,
                    "reason_code": _strings(code, len(hits)),
                    "field": _strings(field, len(hits)),
                    "detail": pc.filter(detail, mask)
                    if isinstance(detail, pa.Array)
                    else _strings(detail, len(hits)),
                }
            )
        )
    if not per_extract:
        return MESSAGE_REJECTIONS_SCHEMA.empty_table()
    faulty = pa.concat_tables(per_extract)
    joined = h.select(["msg_index", "extract_id"]).join(
        faulty, "extract_id", join_type="inner"
    )
    return _concat(
        [joined.select(MESSAGE_REJECTIONS_SCHEMA.names).cast(MESSAGE_REJECTIONS_SCHEMA)],
        MESSAGE_REJECTIONS_SCHEMA,
    )


# --- records ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordValidation:
    """What :func:`validate_records` decided.

    ``accepted_pupils``/``accepted_marks`` follow the ``pupils``/``attendance_sessions`` contracts less the
    timestamp the sink stamps. ``rejections`` lists every pupil and mark rule that fired, warnings included;
    a rejected pupil's marks are not listed one by one but counted in ``marks_of_rejected_pupils`` (and are
    absent from ``per_message.marks_accepted``).
    """

    accepted_pupils: pa.Table
    accepted_marks: pa.Table
    rejections: pa.Table
    per_message: pa.Table
    marks_of_rejected_pupils: int


def amendment_window_start(extract_date: pa.Array, school_days: int) -> pa.Array:
    """First day a mark may carry: ``school_days`` weekdays before ``extract_date`` (a weekend extract date
    counts from the following Monday, so the window is still the N weekdays before it)."""
    days = np.asarray(pc.cast(extract_date, pa.int32()).fill_null(0), dtype=np.int32).astype("datetime64[D]")
    start = np.busday_offset(days, -school_days, roll="forward")
    return pc.if_else(
        pc.is_valid(extract_date),
        pa.array(start.astype(np.int32), pa.int32()).cast(pa.date32()),
        pa.scalar(None, pa.date32()),
    )


def _academic_year_start(dates: pa.Array) -> pa.Array:
    """Calendar year in which the academic year containing each date began (September to August)."""
    return pc.subtract(pc.year(dates), pc.cast(pc.less(pc.month(dates), 9), pa.int64()))


def _age_at_31_august(date_of_birth: pa.Array, academic_year: pa.Array) -> pa.Array:
    """Age in whole years on 31 August of ``academic_year`` (the day before that academic year starts)."""
    born_after_august = pc.cast(pc.greater_equal(pc.month(date_of_birth), 9), pa.int64())
    return pc.subtract(pc.subtract(academic_year, pc.year(date_of_birth)), born_after_august)


def _duplicated(group: np.ndarray, value: pa.Array) -> pa.Array:
    """True where (group, value) occurs more than once: values repeated anywhere are found by counting
    dictionary codes, and only those few are then compared with their group."""
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    codes = np.asarray(pc.dictionary_encode(value).indices, dtype=np.int64)
    repeated = np.bincount(codes)[codes] > 1
    if not repeated.any():
        return pa.array(repeated)
    key = (group[repeated] << 32) | codes[repeated]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    repeated[repeated] = counts[inverse] > 1
    return pa.array(repeated)


def validate_records(
    headers: pa.Table, pupils: pa.Table, marks: pa.Table, *, amendment_window_school_days: int
) -> RecordValidation:
    """Pupil and mark rules over the records of accepted messages (see the module docstring).

    ``headers`` are those of the accepted messages (the decoder's columns); ``pupils``/``marks`` are the
    decoder's tables, possibly spanning several messages and extracts: duplicate UPNs are found per
    ``extract_id`` across its chunks. Records of messages not in ``headers`` are ignored.
    """
    h = _conform(
        headers,
        {
            "msg_index": pa.int32(),
            "extract_id": pa.string(),
            "urn": pa.string(),
            "extract_date": pa.date32(),
            "generated_at": pa.timestamp("us", tz="UTC"),
        },
        contiguous=True,
    )
    p = _conform(pupils, {f.name: f.type for f in _PUPIL_INPUT})
    m = _conform(marks, {f.name: f.type for f in _MARK_INPUT})

    # Join each pupil to its message's header: msg_index -> header row through a direct lookup array.
    p_row_np = _row_lookup(
        np.asarray(h.column("msg_index"), dtype=np.int64), np.asarray(p.column("msg_index"), dtype=np.int64)
    )
    if (p_row_np < 0).any():
        p = p.filter(pa.array(p_row_np >= 0))
        p_row_np = p_row_np[p_row_np >= 0]
    p_row = pa.array(p_row_np, pa.int64())
    p_msg = p.column("msg_index")
    p_pos = p.column("pupil_position")
    extract_code = np.asarray(pc.dictionary_encode(h.column("extract_id").combine_chunks()).indices,
                              dtype=np.int64)
    p_extract_date = pc.take(h.column("extract_date"), p_row)

    upn = p.column("upn")
    year_index = pc.index_in(p.column("nc_year_group"), value_set=_YEAR_GROUP_LIST)
    age = _age_at_31_august(p.column("date_of_birth"), _academic_year_start(p_extract_date))
    implausible = pc.or_(
        pc.less(age, pc.take(_MIN_AGE, year_index)), pc.greater(age, pc.take(_MAX_AGE, year_index))
    )
    duplicate = _duplicated(extract_code[p_row_np], upn) if p.num_rows else pa.array([], pa.bool_())
    pupil_checks: list[tuple[pa.Array, str, str, str]] = [
        (
            pc.invert(upn_is_valid(upn)),
            "PUPIL_UPN_INVALID",
            "upn",
            "upn: not a valid UPN (13 characters, check letter)",
        ),
        (duplicate, "PUPIL_DUPLICATE_UPN", "upn", "upn: appears more than once in the extract"),
        (
            pc.is_null(year_index),
            "PUPIL_YEAR_GROUP_INVALID",
            "nc_year_group",
            "nc_year_group: not one of " + ", ".join(YEAR_GROUPS),
        ),
        (
            implausible,
            "PUPIL_DOB_IMPLAUSIBLE",
            "date_of_birth",
            "date_of_birth: age at 31 August before the academic year is outside the range for the year "
            "group",
        ),
        (pc.invert(_one_of(p.column("sex"), SEXES)), "PUPIL_SEX_INVALID", "sex", "sex: not M or F"),
        (
            pc.invert(_one_of(p.column("sen_provision"), SEN_PROVISION)),
            "PUPIL_SEN_INVALID",
            "sen_provision",
            "sen_provision: not N, K or E",
        ),
    ]
    pupil_faults = [
        _rows(mask, code, field, detail, p_msg, p_pos) for mask, code, field, detail in pupil_checks
    ]
    rejected_pupil = _any([mask for mask, *_ in pupil_checks], p.num_rows)
    accepted = pc.invert(rejected_pupil)

    # Marks: those of accepted pupils, joined to their pupil (by position key) and message.
    pupil_key = _key_np(p_msg, p_pos)
    m_pupil_np = _sorted_lookup(pupil_key, _key_np(m.column("msg_index"), m.column("pupil_position")))
    if (m_pupil_np < 0).any():
        m = m.filter(pa.array(m_pupil_np >= 0))
        m_pupil_np = m_pupil_np[m_pupil_np >= 0]
    of_rejected = np.asarray(rejected_pupil, dtype=np.bool_)[m_pupil_np]
    marks_of_rejected_pupils = int(of_rejected.sum())
    if marks_of_rejected_pupils:
        m = m.filter(pa.array(~of_rejected))
        m_pupil_np = m_pupil_np[~of_rejected]
    m_pupil = pa.array(m_pupil_np, pa.int64())
    m_msg, m_ppos, m_mpos = m.column("msg_index"), m.column("pupil_position"), m.column("mark_position")
    m_row = pa.array(p_row_np[m_pupil_np], pa.int64())
    date, session, code = m.column("date"), m.column("session"), m.column("code")
    m_extract_date = pc.take(h.column("extract_date"), m_row)
    window_start = pc.take(
        amendment_window_start(h.column("extract_date"), amendment_window_school_days), m_row
    )
    code_index = pc.index_in(code, value_set=_CODES)
    known_code = pc.is_valid(code_index)
    valid_from = pc.take(_VALID_FROM, code_index)
    valid_to = pc.take(_VALID_TO, code_index)
    wrong_date = pc.or_(
        pc.fill_null(pc.less(date, valid_from), False), pc.fill_null(pc.greater(date, valid_to), False)
    )
    is_pm = pc.equal(session, "PM")
    good_session = pc.or_(pc.equal(session, "AM"), is_pm)

    # Duplicates: the same pupil, date and session more than once.
    slot = (np.asarray(pc.cast(date, pa.int32()), dtype=np.int64) << 1) | np.asarray(is_pm, dtype=np.int64)
    in_repeat = _repeated_within(m_pupil_np, slot) & np.asarray(good_session, dtype=np.bool_)
    conflict = pa.array(np.zeros(m.num_rows, dtype=np.bool_))
    extra_copy = pa.array(np.zeros(m.num_rows, dtype=np.bool_))
    if in_repeat.any():
        rows_in_repeat = pa.array(np.flatnonzero(in_repeat), pa.int64())
        slot_key = (m_pupil_np << 33) + slot
        sub = pa.table(
            {
                "slot": pa.array(slot_key[in_repeat]),
                "code": pc.take(code, rows_in_repeat),
                "mark_position": pc.take(m_mpos, rows_in_repeat),
                "row": rows_in_repeat,
            }
        )
        per_slot = sub.group_by("slot").aggregate([("code", "count_distinct"), ("mark_position", "min")])
        joined = sub.join(per_slot, "slot")
        conflicting_rows = pc.filter(
            joined.column("row"), pc.greater(joined.column("code_count_distinct"), 1)
        )
        copy_rows = pc.filter(
            joined.column("row"),
            pc.and_(
                pc.equal(joined.column("code_count_distinct"), 1),
                pc.not_equal(joined.column("mark_position"), joined.column("mark_position_min")),
            ),
        )
        all_rows = pa.array(np.arange(m.num_rows), pa.int64())
        conflict = pc.is_in(all_rows, value_set=conflicting_rows)
        extra_copy = pc.is_in(all_rows, value_set=copy_rows)

    mark_checks: list[tuple[pa.Array, str, str, str]] = [
        (pc.invert(known_code), "MARK_CODE_UNKNOWN", "code", "code: not a register code"),
        (
            pc.and_(known_code, wrong_date),
            "MARK_CODE_NOT_VALID_ON_DATE",
            "code",
            "code: not valid on the mark's date (legacy code from 19 August 2024, or 2024 code before it)",
        ),
        (pc.invert(good_session), "MARK_SESSION_INVALID", "session", "session: not AM or PM"),
        (
            pc.or_(pc.greater(date, m_extract_date), pc.less(date, window_start)),
            "MARK_DATE_OUTSIDE_WINDOW",
            "date",
            f"date: outside the amendment window ({amendment_window_school_days} weekdays before "
            "extract_date, up to extract_date)",
        ),
        (pc.greater_equal(pc.day_of_week(date), 5), "MARK_WEEKEND", "date", "date: a Saturday or Sunday"),
        (
            conflict,
            "MARK_DUPLICATE_CONFLICT",
            "code",
            "code: the same date and session is marked more than once with different codes",
        ),
    ]
    mark_faults = [
        _rows(mask, code_, field, detail, m_msg, m_ppos, m_mpos) for mask, code_, field, detail in mark_checks
    ]
    mark_warnings = [
        _rows(
            extra_copy,
            "MARK_DUPLICATE_SAME",
            "code",
            "code: the same mark repeated for this date and session; the first is kept",
            m_msg,
            m_ppos,
            m_mpos,
        ),
        _rows(
            pc.equal(code, NO_MARK),
            "MARK_NO_MARK",
            "code",
            "code: '-' (no mark entered yet)",
            m_msg,
            m_ppos,
            m_mpos,
        ),
    ]
    mark_ok = pc.invert(_any([mask for mask, *_ in mark_checks] + [extra_copy], m.num_rows))

    # Leavers: warn once per pupil with marks (other than '-') dated after leaving_date.
    leaving = pc.take(p.column("leaving_date"), m_pupil)
    after_leaving = pc.fill_null(pc.and_(pc.greater(date, leaving), pc.not_equal(code, NO_MARK)), False)
    left_warnings = None
    if pc.any(after_leaving).as_py():
        late = (
            pa.table({"pupil": pc.filter(m_pupil, after_leaving)})
            .group_by("pupil")
            .aggregate([("pupil", "count")])
        )
        pupils_late = late.column("pupil").combine_chunks()
        counts = pc.cast(late.column("pupil_count").combine_chunks(), pa.string())
        left_warnings = _rows(
            pa.array(np.ones(len(pupils_late), dtype=np.bool_)),
            "PUPIL_LEFT",
            "leaving_date",
            pc.binary_join_element_wise(counts, " mark(s) dated after leaving_date", ""),
            pc.take(p_msg, pupils_late),
            pc.take(p_pos, pupils_late),
        )

    # What to store (built straight into the table contracts' schemas: no cast, no copy beyond the filters).
    kept_p = p.select(["msg_index", *_PUPIL_STORED]).filter(accepted)
    kept_row = p_row.filter(accepted)
    accepted_pupils = pa.Table.from_arrays(
        [pc.take(h.column("urn"), kept_row), *(kept_p.column(name) for name in _PUPIL_STORED),
         pc.take(h.column("extract_id"), kept_row), pc.take(h.column("generated_at"), kept_row)],
        schema=ACCEPTED_PUPILS_SCHEMA,
    )
    kept_m = m.select(["msg_index", "date", "session", "code"]).filter(mark_ok)
    kept_m_pupil = m_pupil.filter(mark_ok)
    kept_m_row = m_row.filter(mark_ok)
    kept_code_index = pc.filter(code_index, mark_ok)
    accepted_marks = pa.Table.from_arrays(
        [pc.take(h.column("urn"), kept_m_row), pc.take(upn, kept_m_pupil), kept_m.column("date"),
         kept_m.column("session"), kept_m.column("code"),
         *(pc.take(column, kept_code_index) for column in _FLAG_COLUMNS.values()),
         pc.take(h.column("extract_id"), kept_m_row), pc.take(h.column("generated_at"), kept_m_row)],
        schema=ACCEPTED_MARKS_SCHEMA,
    )

    rejections = _concat(pupil_faults + [left_warnings] + mark_faults + mark_warnings, REJECTIONS_SCHEMA)
    per_message = _per_message(h, kept_p.column("msg_index"), kept_m.column("msg_index"))
    return RecordValidation(
        accepted_pupils, accepted_marks, rejections, per_message, marks_of_rejected_pupils
    )


_PUPIL_INPUT = pa.schema(
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
    ]
)
_MARK_INPUT = pa.schema(
    [
        ("msg_index", pa.int32()),
        ("pupil_position", pa.int32()),
        ("mark_position", pa.int32()),
        ("date", pa.date32()),
        ("session", pa.string()),
        ("code", pa.string()),
    ]
)
_PUPIL_STORED = tuple(
    f.name for f in ACCEPTED_PUPILS_SCHEMA if f.name not in ("urn", "extract_id", "generated_at")
)


def _key_np(msg_index: pa.Array, position: pa.Array) -> np.ndarray:
    """(msg_index, position) as one sortable int64."""
    return (np.asarray(msg_index, dtype=np.int64) << 31) | np.asarray(position, dtype=np.int64)


def _row_lookup(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of ``keys`` (small non-negative ints, unique) holding each ``wanted`` value; -1 where none."""
    if len(wanted) == 0:
        return np.zeros(0, dtype=np.int64)
    size = int(max(keys.max(initial=-1), wanted.max(initial=-1))) + 1
    table = np.full(size, -1, dtype=np.int64)
    table[keys] = np.arange(len(keys), dtype=np.int64)
    return table[wanted]


def _sorted_lookup(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of ``keys`` (unique) holding each ``wanted`` value; -1 where none. Binary search, after sorting
    ``keys`` when they are not already in order (the decoder's tables are)."""
    order = None
    if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
    at = np.searchsorted(keys, wanted)
    at_clipped = np.minimum(at, max(len(keys) - 1, 0))
    found = (at < len(keys)) & (keys[at_clipped] == wanted) if len(keys) else np.zeros(len(wanted), np.bool_)
    rows = order[at_clipped] if order is not None else at_clipped
    return np.where(found, rows, -1)


def _repeated_within(group: np.ndarray, value: np.ndarray) -> np.ndarray:
    """True where (group, value) occurs more than once. Rows of a group are usually adjacent (marks of a
    pupil), so neighbours a few apart are compared; otherwise the pairs are counted by sorting."""
    n = len(group)
    repeated = np.zeros(n, dtype=np.bool_)
    if n < 2:
        return repeated
    boundaries = np.flatnonzero(group[1:] != group[:-1]) + 1
    runs = np.diff(np.concatenate([[0], boundaries, [n]]))
    grouped = bool((group[1:] >= group[:-1]).all())  # in order, so every group is one contiguous run
    if grouped and runs.max() <= 16:
        for distance in range(1, int(runs.max())):
            same = (group[distance:] == group[:-distance]) & (value[distance:] == value[:-distance])
            repeated[distance:] |= same
            repeated[:-distance] |= same
        return repeated
    key = np.stack([group, value], axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.ravel()] > 1


def _one_of(values: pa.Array, allowed: tuple[str, ...]) -> pa.Array:
    """values in ``allowed`` (a few strings), by equality tests (cheaper than hashing every value)."""
    out = pc.equal(values, allowed[0])
    for option in allowed[1:]:
        out = pc.or_(out, pc.equal(values, option))
    return pc.fill_null(out, False)


def _any(masks: list[pa.Array], length: int) -> pa.Array:
    """Element-wise OR of boolean masks, nulls counting as false."""
    out = pa.array(np.zeros(length, dtype=np.bool_))
    for mask in masks:
        out = pc.or_(out, pc.fill_null(mask, False))
    return out


def _per_message(h: pa.Table, pupil_msg: pa.Array, mark_msg: pa.Array) -> pa.Table:
    msg = np.asarray(h.column("msg_index"), dtype=np.int64)
    size = int(msg.max()) + 1 if len(msg) else 0
    pupils_per = np.bincount(np.asarray(pupil_msg, dtype=np.int64), minlength=size)
    marks_per = np.bincount(np.asarray(mark_msg, dtype=np.int64), minlength=size)
    return pa.table(
        {
            "msg_index": h.column("msg_index"),
            "extract_id": h.column("extract_id"),
            "pupils_accepted": pa.array(pupils_per[msg] if size else [], pa.int32()),
            "marks_accepted": pa.array(marks_per[msg] if size else [], pa.int32()),
        },
        schema=PER_MESSAGE_SCHEMA,
    )
