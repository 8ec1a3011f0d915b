"""streams.validate: one crafted case per rule, asserting exactly which row is rejected and how severely."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pyarrow as pa
import pytest

from schemas.codes import REGISTER_CODES
from schemas.upn import make_upn
from streams.decode import decode_messages
from streams.validate import (
    ACCEPTED_MARKS_SCHEMA,
    ACCEPTED_PUPILS_SCHEMA,
    amendment_window_start,
    check_extract_consistency,
    check_headers,
    mark_flags,
    validate_records,
)

EXTRACT_DATE = "2026-11-17"  # a Tuesday; 7 weekdays before it is Friday 6 November
UPNS = [make_upn(801, 2000, 15, serial) for serial in range(10)]
EXTRACT = "3f2b8c1e-9a4d-4c6b-8e2f-1a2b3c4d5e6f"


def mark(date: str = EXTRACT_DATE, session: str = "AM", code: str = "/") -> dict:
    return {"date": date, "session": session, "code": code}


def pupil(upn: str, **overrides) -> dict:
    record = {
        "upn": upn,
        "date_of_birth": "2015-03-04",
        "sex": "F",
        "nc_year_group": "6",
        "ethnicity": None,
        "fsm_eligible": True,
        "sen_provision": "K",
        "looked_after": False,
        "child_in_need": None,
        "child_protection_plan": None,
        "admission_date": "2019-09-04",
        "leaving_date": None,
        "sessions": [mark(session="AM", code="/"), mark(session="PM", code="\\")],
    }
    record.update(overrides)
    return record


def message(pupils: list[dict], **overrides) -> bytes:
    document = {
        "schema_version": "1",
        "extract_id": EXTRACT,
        "urn": "100001",
        "laestab": "8012000",
        "extract_date": EXTRACT_DATE,
        "generated_at": "2026-11-17T16:30:00Z",
        "chunk_index": 0,
        "chunk_count": 1,
        "pupil_count": len(pupils),
        "pupils": pupils,
    }
    document.update(overrides)
    return json.dumps(document).encode()


def run(*messages: bytes, window: int = 7):
    decoded = decode_messages(list(messages))
    assert decoded.message_rejections.num_rows == 0, decoded.message_rejections.to_pylist()
    return validate_records(
        decoded.headers, decoded.pupils, decoded.marks, amendment_window_school_days=window
    )


def rows(result) -> list[tuple]:
    return [
        (r["msg_index"], r["pupil_position"], r["mark_position"], r["reason_code"], r["severity"], r["field"])
        for r in result.rejections.to_pylist()
    ]


def kept_marks(result) -> list[tuple]:
    return [
        (m["upn"], m["date"].isoformat(), m["session"], m["code"]) for m in result.accepted_marks.to_pylist()
    ]


# --- a clean extract ----------------------------------------------------------------------------------------


def test_a_clean_extract_is_stored_whole_with_its_header_joined_in():
    result = run(
        message([pupil(UPNS[0]), pupil(UPNS[1], sessions=[mark(code="I"), mark(session="PM", code="U")])])
    )
    assert rows(result) == []
    assert result.accepted_pupils.schema == ACCEPTED_PUPILS_SCHEMA
    assert result.accepted_marks.schema == ACCEPTED_MARKS_SCHEMA
    first = result.accepted_pupils.to_pylist()[0]
    assert (first["urn"], first["upn"], first["extract_id"]) == ("100001", UPNS[0], EXTRACT)
    assert first["generated_at"] == dt.datetime(2026, 11, 17, 16, 30, tzinfo=dt.UTC)
    assert first["date_of_birth"] == dt.date(2015, 3, 4) and first["sen_provision"] == "K"
    marks = result.accepted_marks.to_pylist()
    assert len(marks) == 4
    illness = marks[2]
    assert (
        illness["upn"],
        illness["code"],
        illness["is_possible"],
        illness["is_authorised"],
        illness["is_unauthorised"],
        illness["is_late"],
    ) == (UPNS[1], "I", True, True, False, False)
    late = marks[3]
    assert (late["code"], late["is_unauthorised"], late["is_late"], late["is_present"]) == (
        "U",
        True,
        True,
        False,
    )
    assert result.per_message.to_pylist() == [
        {"msg_index": 0, "extract_id": EXTRACT, "pupils_accepted": 2, "marks_accepted": 4}
    ]
    assert result.marks_of_rejected_pupils == 0


# --- pupil rules --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"upn": "A" + UPNS[1][1:] if UPNS[1][0] != "A" else "B" + UPNS[1][1:]}, "PUPIL_UPN_INVALID", "upn"),
        ({"upn": "B80120000500"}, "PUPIL_UPN_INVALID", "upn"),
        ({"nc_year_group": "15"}, "PUPIL_YEAR_GROUP_INVALID", "nc_year_group"),
        ({"nc_year_group": "y6"}, "PUPIL_YEAR_GROUP_INVALID", "nc_year_group"),
        ({"sex": "U"}, "PUPIL_SEX_INVALID", "sex"),
        ({"sen_provision": "S"}, "PUPIL_SEN_INVALID", "sen_provision"),
        (
            {"date_of_birth": "2014-08-31"},
            "PUPIL_DOB_IMPLAUSIBLE",
            "date_of_birth",
        ),  # 12 on 31 Aug 2026; Y6 9-11
        ({"date_of_birth": "2017-09-01"}, "PUPIL_DOB_IMPLAUSIBLE", "date_of_birth"),  # 8
        ({"date_of_birth": "2030-01-01"}, "PUPIL_DOB_IMPLAUSIBLE", "date_of_birth"),  # not born yet
    ],
)
def test_a_pupil_breaking_a_rule_is_rejected_with_all_its_marks(overrides, code, field):
    result = run(message([pupil(UPNS[0]), pupil(**{"upn": UPNS[1], **overrides}), pupil(UPNS[2])]))
    assert rows(result) == [(0, 1, None, code, "pupil", field)]
    assert result.accepted_pupils.column("upn").to_pylist() == [UPNS[0], UPNS[2]]
    assert {m[0] for m in kept_marks(result)} == {UPNS[0], UPNS[2]}
    assert result.marks_of_rejected_pupils == 2
    assert result.per_message.column("marks_accepted").to_pylist() == [4]


@pytest.mark.parametrize(
    ("year_group", "date_of_birth"),
    [
        ("6", "2014-09-01"),
        ("6", "2017-08-31"),  # 11 and 9 on 31 August 2026: the edges of Y6 (10 +- 1)
        ("R", "2021-09-01"),
        ("R", "2023-08-31"),  # 4 and 3
        ("1", "2020-06-30"),  # 6
        ("11", "2010-09-01"),
        ("13", "2007-09-01"),
        ("14", "2007-09-01"),  # 15, 18, 18
        ("N1", "2024-01-01"),
        ("N2", "2022-09-01"),  # 2, 3
        ("E1", "2026-05-01"),
        ("E2", "2022-09-01"),  # 0, 3
        ("M", "2002-09-01"),
        ("X", "2024-08-31"),  # 23, 2
    ],
)
def test_ages_that_fit_the_year_group_are_accepted(year_group, date_of_birth):
    result = run(message([pupil(UPNS[0], nc_year_group=year_group, date_of_birth=date_of_birth)]))
    assert rows(result) == []


@pytest.mark.parametrize(
    ("year_group", "date_of_birth"),
    [
        ("R", "2020-08-31"),  # 6 on 31 August 2026; R is 3-5
        ("N1", "2021-08-31"),
        ("E1", "2021-08-31"),  # 5: nursery 2-4, early years under 5
        ("M", "2000-08-31"),
        ("X", "2024-09-01"),  # 26 and 1: M and X 2-25
        ("14", "2006-08-31"),  # 20: Y14 17-19
    ],
)
def test_ages_outside_the_year_groups_range_are_rejected(year_group, date_of_birth):
    result = run(message([pupil(UPNS[0], nc_year_group=year_group, date_of_birth=date_of_birth)]))
    assert rows(result) == [(0, 0, None, "PUPIL_DOB_IMPLAUSIBLE", "pupil", "date_of_birth")]


def test_age_is_taken_at_31_august_before_the_academic_year_of_the_extract():
    # In July 2027 the academic year still began in September 2026: a Y6 pupil born 2014-09-01 is 11 then.
    july = message(
        [pupil(UPNS[0], date_of_birth="2014-09-01", sessions=[mark("2027-07-01")])], extract_date="2027-07-01"
    )
    assert rows(run(july)) == []
    # In September 2027 a new year began: the same pupil would be 12, too old for Y6.
    september = message(
        [pupil(UPNS[0], date_of_birth="2014-09-01", sessions=[mark("2027-09-06")])], extract_date="2027-09-06"
    )
    assert rows(run(september)) == [(0, 0, None, "PUPIL_DOB_IMPLAUSIBLE", "pupil", "date_of_birth")]


def test_a_upn_repeated_across_chunks_of_one_extract_rejects_every_copy():
    chunk0 = message([pupil(UPNS[0]), pupil(UPNS[1])], chunk_count=2, pupil_count=4)
    chunk1 = message([pupil(UPNS[2]), pupil(UPNS[0])], chunk_index=1, chunk_count=2, pupil_count=4)
    result = run(chunk0, chunk1)
    assert rows(result) == [
        (0, 0, None, "PUPIL_DUPLICATE_UPN", "pupil", "upn"),
        (1, 1, None, "PUPIL_DUPLICATE_UPN", "pupil", "upn"),
    ]
    assert sorted(result.accepted_pupils.column("upn").to_pylist()) == sorted([UPNS[1], UPNS[2]])


def test_the_same_upn_in_two_extracts_is_not_a_duplicate():
    other = "aaaaaaaa-9a4d-4c6b-8e2f-1a2b3c4d5e6f"
    result = run(message([pupil(UPNS[0])]), message([pupil(UPNS[0])], extract_id=other, urn="100002"))
    assert rows(result) == []
    assert result.accepted_pupils.num_rows == 2


def test_marks_after_the_leaving_date_warn_once_per_pupil_and_are_kept():
    leaver = pupil(
        UPNS[1],
        leaving_date="2026-11-16",
        sessions=[mark(), mark(session="PM", code="-"), mark("2026-11-16", "PM", "I")],
    )
    result = run(message([pupil(UPNS[0]), leaver]))
    assert [r for r in rows(result) if r[3] == "PUPIL_LEFT"] == [
        (0, 1, None, "PUPIL_LEFT", "warn", "leaving_date")
    ]
    detail = [r["detail"] for r in result.rejections.to_pylist() if r["reason_code"] == "PUPIL_LEFT"][0]
    assert detail.startswith("1 mark")  # the '-' after leaving does not count; the mark on the day does not
    assert (UPNS[1], EXTRACT_DATE, "AM", "/") in kept_marks(result)


# --- mark rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "code", "field"),
    [
        (mark("2026-11-16", "AM", "Q9"), "MARK_CODE_UNKNOWN", "code"),
        (mark("2026-11-16", "AM", "i"), "MARK_CODE_UNKNOWN", "code"),
        (
            mark("2026-11-16", "AM", "H"),
            "MARK_CODE_NOT_VALID_ON_DATE",
            "code",
        ),  # legacy, gone since 19 Aug 2024
        (mark("2026-11-16", "XM", "/"), "MARK_SESSION_INVALID", "session"),
        (mark("2026-11-16", "am", "/"), "MARK_SESSION_INVALID", "session"),
        (mark("2026-11-18", "AM", "/"), "MARK_DATE_OUTSIDE_WINDOW", "date"),  # after extract_date
        (mark("2026-11-05", "AM", "/"), "MARK_DATE_OUTSIDE_WINDOW", "date"),  # 8 weekdays before
        (mark("2026-11-14", "AM", "/"), "MARK_WEEKEND", "date"),
    ],
)
def test_a_mark_breaking_a_rule_is_rejected_alone(extra, code, field):
    record = pupil(UPNS[1])
    record["sessions"].append(extra)
    result = run(message([pupil(UPNS[0]), record]))
    assert rows(result) == [(0, 1, 2, code, "mark", field)]
    assert result.accepted_pupils.num_rows == 2
    assert len(kept_marks(result)) == 4 and extra["code"] not in {m[3] for m in kept_marks(result)} - {"/"}


def test_the_amendment_window_is_n_weekdays_before_the_extract_date_inclusive():
    record = pupil(UPNS[0], sessions=[mark("2026-11-06"), mark("2026-11-05")])  # Friday in, Thursday out
    result = run(message([record]))
    assert rows(result) == [(0, 0, 1, "MARK_DATE_OUTSIDE_WINDOW", "mark", "date")]
    assert rows(run(message([record]), window=8)) == []
    starts = amendment_window_start(
        pa.array([dt.date(2026, 11, 17), dt.date(2026, 11, 21), dt.date(2026, 11, 16), None], pa.date32()), 7
    )
    # Tue 17 -> Fri 6; Sat 21 -> Thu 12 (Fri 20 is the first weekday before); Mon 16 -> Thu 5
    assert starts.to_pylist() == [dt.date(2026, 11, 6), dt.date(2026, 11, 12), dt.date(2026, 11, 5), None]
    assert amendment_window_start(pa.array([dt.date(2026, 11, 17)], pa.date32()), 0).to_pylist() == [
        dt.date(2026, 11, 17)
    ]


def test_codes_are_judged_by_the_2024_changeover_date():
    # Extract on Monday 19 August 2024, the first day of the 2024 code set.
    sessions = [
        mark("2024-08-16", "AM", "H"),
        mark("2024-08-16", "PM", "K"),  # legacy ok; K too early
        mark("2024-08-19", "AM", "K"),
        mark("2024-08-19", "PM", "J"),
    ]  # K ok; J too late
    result = run(
        message([pupil(UPNS[0], date_of_birth="2013-03-04", sessions=sessions)], extract_date="2024-08-19")
    )
    assert rows(result) == [
        (0, 0, 1, "MARK_CODE_NOT_VALID_ON_DATE", "mark", "code"),
        (0, 0, 3, "MARK_CODE_NOT_VALID_ON_DATE", "mark", "code"),
    ]
    assert [m[3] for m in kept_marks(result)] == ["H", "K"]


def test_conflicting_duplicate_marks_are_all_rejected():
    record = pupil(UPNS[0], sessions=[mark(code="/"), mark(session="PM", code="\\"), mark(code="N")])
    result = run(message([record]))
    assert rows(result) == [
        (0, 0, 0, "MARK_DUPLICATE_CONFLICT", "mark", "code"),
        (0, 0, 2, "MARK_DUPLICATE_CONFLICT", "mark", "code"),
    ]
    assert kept_marks(result) == [(UPNS[0], EXTRACT_DATE, "PM", "\\")]


def test_identical_duplicate_marks_warn_and_keep_the_first():
    record = pupil(
        UPNS[0], sessions=[mark(code="I"), mark(session="PM", code="\\"), mark(code="I"), mark(code="I")]
    )
    result = run(message([record]))
    assert rows(result) == [
        (0, 0, 2, "MARK_DUPLICATE_SAME", "warn", "code"),
        (0, 0, 3, "MARK_DUPLICATE_SAME", "warn", "code"),
    ]
    assert kept_marks(result) == [(UPNS[0], EXTRACT_DATE, "AM", "I"), (UPNS[0], EXTRACT_DATE, "PM", "\\")]


def test_the_same_session_for_two_pupils_is_no_duplicate():
    assert rows(run(message([pupil(UPNS[0]), pupil(UPNS[1])]))) == []


def test_no_mark_warns_and_is_kept_outside_every_statistic():
    record = pupil(UPNS[0], sessions=[mark(code="/"), mark(session="PM", code="-")])
    result = run(message([record]))
    assert rows(result) == [(0, 0, 1, "MARK_NO_MARK", "warn", "code")]
    no_mark = result.accepted_marks.to_pylist()[1]
    assert no_mark["code"] == "-"
    assert not any(
        no_mark[f]
        for f in (
            "is_possible",
            "is_present",
            "is_approved_educational_activity",
            "is_authorised",
            "is_unauthorised",
            "is_late",
        )
    )


def test_records_of_messages_not_in_headers_are_ignored():
    decoded = decode_messages(
        [
            message([pupil(UPNS[0])]),
            message([pupil(UPNS[1])], urn="100002", extract_id="bbbbbbbb-9a4d-4c6b-8e2f-1a2b3c4d5e6f"),
        ]
    )
    headers = decoded.headers.filter(pa.array([True, False]))
    result = validate_records(headers, decoded.pupils, decoded.marks, amendment_window_school_days=7)
    assert result.accepted_pupils.column("upn").to_pylist() == [UPNS[0]]
    assert result.accepted_marks.num_rows == 2


def test_tables_that_went_through_polars_are_accepted():
    decoded = decode_messages([message([pupil(UPNS[0]), pupil(UPNS[0])])])

    def via_polars(table: pa.Table) -> pa.Table:
        return pl.from_arrow(table).to_arrow()

    result = validate_records(
        via_polars(decoded.headers),
        via_polars(decoded.pupils),
        via_polars(decoded.marks),
        amendment_window_school_days=7,
    )
    assert [r[3] for r in rows(result)] == ["PUPIL_DUPLICATE_UPN", "PUPIL_DUPLICATE_UPN"]
    assert (
        check_headers(
            via_polars(decoded.headers),
            via_polars(pa.table({"urn": ["100001"], "laestab": ["8012000"], "status": ["Open"]})),
            dt.date(2026, 11, 17),
            max_age_days=30,
        ).num_rows
        == 0
    )


# --- statistical flags --------------------------------------------------------------------------------------

# DfE's arithmetic (attendance-data-dashboard R/prerun_utils.R, see shared domain README section 1), by hand:
PRESENT = {"/", "\\", "L"}
AEA = {"B", "J", "P", "V", "W", "K"}
AUTHORISED = {
    "I",
    "M",
    "R",
    "S",
    "T",
    "H",
    "E",
    "C",
    "C1",
    "J1",
    "C2",
    "F",
}  # F: legacy, authorised (codes.py)
UNAUTHORISED = {"G", "U", "O", "N"}
LATE = {"L", "U"}
NOT_POSSIBLE = {"D", "X", "Q", "Y", "Y1", "Y2", "Y3", "Y4", "Y5", "Y6", "Y7", "Z", "#", "-"}


def test_every_register_code_gets_the_dfe_flags():
    codes = [c.code for c in REGISTER_CODES]
    assert set(codes) == PRESENT | AEA | AUTHORISED | UNAUTHORISED | NOT_POSSIBLE
    flags = mark_flags(pa.array(codes))
    for i, code in enumerate(codes):
        got = {name: column[i].as_py() for name, column in flags.items()}
        assert got == {
            "is_possible": code not in NOT_POSSIBLE,
            "is_present": code in PRESENT,
            "is_approved_educational_activity": code in AEA,
            "is_authorised": code in AUTHORISED,
            "is_unauthorised": code in UNAUTHORISED,
            "is_late": code in LATE,
        }, code
    assert all(v is None for v in mark_flags(pa.array(["Q9"]))["is_possible"].to_pylist())


def test_stored_marks_carry_the_flags_of_their_code():
    codes = ["/", "L", "B", "I", "G", "D", "#"]
    result = run(
        message(
            [pupil(make_upn(801, 2000, 15, 100 + i), sessions=[mark(code=c)]) for i, c in enumerate(codes)]
        )
    )
    stored = {m["code"]: m for m in result.accepted_marks.to_pylist()}
    assert [stored[c]["is_possible"] for c in codes] == [True, True, True, True, True, False, False]
    assert [stored[c]["is_late"] for c in codes] == [False, True, False, False, False, False, False]
    assert stored["B"]["is_approved_educational_activity"] and stored["G"]["is_unauthorised"]


# --- headers against the register and the calendar ----------------------------------------------------------

REGISTER = pa.table(
    {
        "urn": ["100001", "100002", "100003", "100004", "100005"],
        "laestab": ["8012000", "8012001", "8012002", "8012003", None],
        "status": ["Open", "Closed", "Open, but proposed to close", "Proposed to open", "Open"],
    }
)


def header_rejections(*messages: bytes, today: dt.date = dt.date(2026, 11, 17), max_age_days: int = 30):
    decoded = decode_messages(list(messages))
    result = check_headers(decoded.headers, REGISTER, today, max_age_days=max_age_days)
    return [(r["msg_index"], r["reason_code"], r["field"]) for r in result.to_pylist()], result


def test_headers_are_checked_against_the_register():
    got, table = header_rejections(
        message([], urn="100001"),
        message([], urn="999999"),
        message([], urn="100002", laestab="8012001"),
        message([], urn="100003", laestab="8012002"),
        message([], urn="100004", laestab="8012003"),
        message([], urn="100001", laestab="8012009"),
        message([], urn="100005", laestab="1234567"),
    )
    assert got == [
        (1, "MSG_UNKNOWN_URN", "urn"),
        (2, "MSG_CLOSED_URN", "urn"),
        (4, "MSG_CLOSED_URN", "urn"),
        (5, "MSG_LAESTAB_MISMATCH", "laestab"),
    ]
    details = table.column("detail").to_pylist()
    assert "'Closed'" in details[1] and "8012000" in details[3]


def test_extract_dates_in_the_future_or_too_old_are_rejected():
    got, _ = header_rejections(
        message([], extract_date="2026-11-18"),
        message([], extract_date="2026-10-18"),
        message([], extract_date="2026-10-17"),
        message([], extract_date="2026-11-17"),
    )
    assert got == [
        (0, "MSG_EXTRACT_DATE_FUTURE", "extract_date"),
        (2, "MSG_EXTRACT_DATE_TOO_OLD", "extract_date"),
    ]


def test_a_chunk_index_not_below_chunk_count_is_rejected():
    got, _ = header_rejections(
        message([], chunk_index=2, chunk_count=2), message([], chunk_index=1, chunk_count=2)
    )
    assert got == [(0, "MSG_CHUNK_NUMBERING", "chunk_index")]


# --- chunks of one extract ----------------------------------------------------------------------------------


def chunks(extract_id: str, count: int, pupils_each: int = 1, **per_chunk) -> list[bytes]:
    out = []
    for index in range(count):
        overrides = {k: v[index] if isinstance(v, list) else v for k, v in per_chunk.items()}
        fields = {
            "extract_id": extract_id,
            "chunk_index": index,
            "chunk_count": count,
            "pupil_count": count * pupils_each,
            **overrides,
        }
        out.append(
            message([pupil(make_upn(801, 2000, 15, 1000 * index + i)) for i in range(pupils_each)], **fields)
        )
    return out


def consistency(*messages: bytes) -> list[tuple]:
    decoded = decode_messages(list(messages))
    assert decoded.message_rejections.num_rows == 0
    return [
        (r["msg_index"], r["reason_code"], r["field"])
        for r in check_extract_consistency(decoded.headers).to_pylist()
    ]


OTHER = "cccccccc-9a4d-4c6b-8e2f-1a2b3c4d5e6f"


def test_consistent_chunks_pass():
    assert consistency(*chunks(EXTRACT, 3, pupils_each=2), *chunks(OTHER, 1)) == []


@pytest.mark.parametrize(
    ("per_chunk", "code", "field"),
    [
        ({"chunk_count": [3, 3, 4]}, "MSG_CHUNK_NUMBERING", "chunk_count"),
        ({"chunk_index": [0, 1, 1]}, "MSG_CHUNK_NUMBERING", "chunk_index"),
        ({"pupil_count": [3, 3, 4]}, "MSG_PUPIL_COUNT_MISMATCH", "pupil_count"),
        ({"pupil_count": 4}, "MSG_PUPIL_COUNT_MISMATCH", "pupil_count"),
        ({"urn": ["100001", "100001", "100002"]}, "MSG_HEADER_INCONSISTENT", "urn"),
        ({"laestab": ["8012000", "8012009", "8012000"]}, "MSG_HEADER_INCONSISTENT", "laestab"),
        (
            {"extract_date": [EXTRACT_DATE, "2026-11-16", EXTRACT_DATE]},
            "MSG_HEADER_INCONSISTENT",
            "extract_date",
        ),
        (
            {"generated_at": ["2026-11-17T16:30:00Z", "2026-11-17T17:30:00+01:00", "2026-11-17T16:31:00Z"]},
            "MSG_HEADER_INCONSISTENT",
            "generated_at",
        ),
    ],
)
def test_an_inconsistent_chunk_rejects_every_chunk_of_its_extract_only(per_chunk, code, field):
    got = consistency(*chunks(OTHER, 1), *chunks(EXTRACT, 3, **per_chunk))
    assert got == [(1, code, field), (2, code, field), (3, code, field)]


def test_chunks_not_numbered_0_to_count_minus_1_are_rejected():
    got = consistency(*chunks(EXTRACT, 2, chunk_index=[0, 2]))
    assert got == [(0, "MSG_CHUNK_NUMBERING", "chunk_index"), (1, "MSG_CHUNK_NUMBERING", "chunk_index")]


def test_records_from_both_decoder_paths_are_judged_alike():
    # Chunk 1 has a mistyped field, so the decoder reads it the slow way: its rows come after chunk 0's and
    # sit in other Arrow chunks. Duplicates across the two chunks must still be found.
    chunk0 = message([pupil(UPNS[0]), pupil(UPNS[1])], chunk_count=2, pupil_count=5)
    chunk1_pupils = [pupil(UPNS[2], fsm_eligible="Y"), pupil(UPNS[0]),
                     pupil(UPNS[3], sessions=[mark(code="/"), mark(code="N"), mark(session="PM", code="\\")])]
    chunk1 = message(chunk1_pupils, chunk_index=1, chunk_count=2, pupil_count=5)
    decoded = decode_messages([chunk0, chunk1])
    assert decoded.slow_path_messages == 1
    faults = decoded.pupil_rejections.to_pylist()
    assert [(r["msg_index"], r["pupil_position"], r["field"]) for r in faults] == [(1, 0, "fsm_eligible")]
    result = validate_records(decoded.headers, decoded.pupils, decoded.marks, amendment_window_school_days=7)
    assert rows(result) == [
        (0, 0, None, "PUPIL_DUPLICATE_UPN", "pupil", "upn"),
        (1, 1, None, "PUPIL_DUPLICATE_UPN", "pupil", "upn"),
        (1, 2, 0, "MARK_DUPLICATE_CONFLICT", "mark", "code"),
        (1, 2, 1, "MARK_DUPLICATE_CONFLICT", "mark", "code"),
    ]
    assert sorted(result.accepted_pupils.column("upn").to_pylist()) == sorted([UPNS[1], UPNS[3]])
    assert sorted(kept_marks(result)) == sorted([(UPNS[1], EXTRACT_DATE, "AM", "/"),
                                                 (UPNS[1], EXTRACT_DATE, "PM", "\\"),
                                                 (UPNS[3], EXTRACT_DATE, "PM", "\\")])
    assert sorted(result.per_message.to_pylist(), key=lambda r: r["msg_index"]) == [
        {"msg_index": 0, "extract_id": EXTRACT, "pupils_accepted": 1, "marks_accepted": 2},
        {"msg_index": 1, "extract_id": EXTRACT, "pupils_accepted": 1, "marks_accepted": 1},
    ]
