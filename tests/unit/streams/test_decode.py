"""streams.decode: messages -> typed tables, structural faults named, extras counted, fast == slow path."""

from __future__ import annotations

import copy
import datetime as dt
import json
import time

import numpy as np
import pyarrow as pa
import pytest

import streams.decode as decode_module
from schemas.upn import make_upn
from streams.decode import decode_messages

UPN_A = make_upn(801, 2000, 15, 1)
UPN_B = make_upn(801, 2000, 15, 2)


def pupil(upn: str = UPN_A, **overrides) -> dict:
    record = {
        "upn": upn,
        "date_of_birth": "2015-03-04",
        "sex": "F",
        "nc_year_group": "6",
        "ethnicity": "WBRI",
        "fsm_eligible": False,
        "sen_provision": "N",
        "looked_after": False,
        "child_in_need": None,
        "child_protection_plan": False,
        "admission_date": "2019-09-04",
        "leaving_date": None,
        "sessions": [
            {"date": "2026-11-17", "session": "AM", "code": "/"},
            {"date": "2026-11-17", "session": "PM", "code": "\\"},
        ],
    }
    record.update(overrides)
    return record


def message(pupils: list[dict] | None = None, **overrides) -> dict:
    document = {
        "schema_version": "1",
        "extract_id": "3f2b8c1e-9a4d-4c6b-8e2f-1a2b3c4d5e6f",
        "urn": "100001",
        "laestab": "8012000",
        "extract_date": "2026-11-17",
        "generated_at": "2026-11-17T16:30:00+01:00",
        "chunk_index": 0,
        "chunk_count": 1,
        "pupil_count": 2,
        "pupils": pupils if pupils is not None else [pupil(UPN_A), pupil(UPN_B, sex="M")],
    }
    document.update(overrides)
    return document


def encode(document) -> bytes:
    """Compact JSON like the contractor's producer (json, not orjson: some tests need integers > 64 bits)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def reasons(table: pa.Table) -> list[tuple]:
    names = [
        n
        for n in ("msg_index", "pupil_position", "mark_position", "reason_code", "field")
        if n in table.column_names
    ]
    return sorted(tuple(row[n] for n in names) for row in table.to_pylist())


def force_slow(monkeypatch) -> None:
    """Make every message take the slow path (both readers 'fail' for each)."""
    monkeypatch.setattr(
        decode_module, "_parse", lambda buffer, bounds, start, stop, threads=1: ([], list(range(start, stop)))
    )


class _ReadsNothing:
    """A contract reader that vouches for no message."""

    def read(self, buffer, bounds, first, last):
        return decode_module._RAW_MESSAGE.empty_table(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)


def force_arrow(monkeypatch) -> None:
    """Make every message that jsonscan would read go through Arrow's reader instead."""
    monkeypatch.setattr(decode_module, "_CONTRACT_READER", _ReadsNothing())


def in_order(table: pa.Table) -> list[dict]:
    """Rows by position (pupils and marks are grouped by message, not necessarily in input order)."""
    keys = [k for k in ("msg_index", "pupil_position", "mark_position") if k in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys]).to_pylist()


def assert_same_batch(a, b) -> None:
    for name in ("headers", "pupils", "marks", "message_rejections", "pupil_rejections", "mark_rejections"):
        assert in_order(getattr(a, name)) == in_order(getattr(b, name)), name
    assert a.extra_fields_dropped == b.extra_fields_dropped


# --- the happy path -----------------------------------------------------------------------------------------


def test_a_valid_message_decodes_into_typed_header_pupil_and_mark_rows():
    batch = decode_messages([encode(message())])
    assert batch.message_rejections.num_rows == 0
    [header] = batch.headers.to_pylist()
    assert header["msg_index"] == 0 and header["urn"] == "100001" and header["laestab"] == "8012000"
    assert header["extract_date"] == dt.date(2026, 11, 17)
    assert header["generated_at"] == dt.datetime(2026, 11, 17, 15, 30, tzinfo=dt.UTC)  # +01:00 -> UTC
    assert (header["chunk_index"], header["chunk_count"], header["pupil_count"]) == (0, 1, 2)
    assert (header["pupils_in_message"], header["marks_in_message"]) == (2, 4)
    pupils = batch.pupils.to_pylist()
    assert [p["pupil_position"] for p in pupils] == [0, 1]
    assert pupils[1]["upn"] == UPN_B and pupils[1]["sex"] == "M"
    assert pupils[0]["date_of_birth"] == dt.date(2015, 3, 4) and pupils[0]["leaving_date"] is None
    assert pupils[0]["child_in_need"] is None and pupils[0]["child_protection_plan"] is False
    assert pupils[0]["marks_in_pupil"] == 2
    marks = batch.marks.to_pylist()
    assert [(m["pupil_position"], m["mark_position"], m["session"], m["code"]) for m in marks] == [
        (0, 0, "AM", "/"),
        (0, 1, "PM", "\\"),
        (1, 0, "AM", "/"),
        (1, 1, "PM", "\\"),
    ]
    assert marks[0]["date"] == dt.date(2026, 11, 17)
    assert batch.headers.schema == decode_module.HEADERS_SCHEMA
    assert batch.pupils.schema == decode_module.PUPILS_SCHEMA
    assert batch.marks.schema == decode_module.MARKS_SCHEMA


def test_pretty_printed_and_python_default_json_decode_like_compact_json():
    document = message()
    compact = decode_messages([encode(document)])
    for text in (json.dumps(document, indent=2), json.dumps(document), "\n  " + json.dumps(document) + "\n"):
        other = decode_messages([text.encode()])
        assert_same_batch(compact, other)


def test_optional_pupil_fields_may_be_absent():
    record = pupil()
    for name in ("ethnicity", "child_in_need", "child_protection_plan", "leaving_date"):
        del record[name]
    batch = decode_messages([encode(message([record], pupil_count=1))])
    assert batch.pupil_rejections.num_rows == 0 and batch.pupils.num_rows == 1


# --- message-level faults -----------------------------------------------------------------------------------


def test_bytes_that_are_not_utf8_reject_only_that_message():
    good = encode(message())
    bad = encode(message()).replace(b"WBRI", b"WBR\xff", 1)
    batch = decode_messages([good, bad, good])
    assert reasons(batch.message_rejections) == [(1, "MSG_NOT_UTF8", "(message)")]
    assert batch.headers.column("msg_index").to_pylist() == [0, 2]
    assert set(batch.pupils.column("msg_index").to_pylist()) == {0, 2}


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b'{"urn": "100001",',
        b"",
        None,
        b'{"a": 1} {"b": 2}',
        b'{"a": NaN}',
        b'{"a": 1e999}',
        b"\xef\xbb\xbf{}",
    ],
)
def test_what_is_not_one_json_document_is_rejected_as_not_json(value):
    batch = decode_messages([encode(message()), value])
    assert reasons(batch.message_rejections) == [(1, "MSG_NOT_JSON", "(message)")]
    assert batch.headers.column("msg_index").to_pylist() == [0]


@pytest.mark.parametrize("value", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_a_json_value_that_is_not_an_object_breaks_the_contract(value):
    batch = decode_messages([value])
    assert reasons(batch.message_rejections) == [(0, "MSG_CONTRACT", "(top level)")]
    assert "expected a JSON object" in batch.message_rejections.column("detail")[0].as_py()


@pytest.mark.parametrize(
    "name",
    [
        "schema_version",
        "extract_id",
        "urn",
        "laestab",
        "extract_date",
        "generated_at",
        "chunk_index",
        "chunk_count",
        "pupil_count",
    ],
)
def test_a_missing_header_field_rejects_the_message_naming_the_field(name):
    document = message()
    del document[name]
    batch = decode_messages([encode(message()), encode(document)])
    assert (1, "MSG_CONTRACT", name) in reasons(batch.message_rejections)
    assert {r[0] for r in reasons(batch.message_rejections)} == {1}
    assert batch.headers.column("msg_index").to_pylist() == [0]


@pytest.mark.parametrize(
    ("name", "value", "fault"),
    [
        ("urn", 100001, "expected a string, got number"),
        ("laestab", None, "missing or null"),
        ("chunk_index", "0", "expected an integer, got string"),
        ("chunk_count", 1.0, "expected an integer, got number"),
        ("pupil_count", True, "expected an integer, got boolean"),
        ("pupil_count", 10**30, "integer out of range"),
        ("chunk_index", 2**40, "integer out of range"),
        ("chunk_count", 0, "must be at least 1"),
        ("chunk_index", -1, "must be at least 0"),
        ("urn", "10001", "not 6 digits"),
        ("laestab", "801200", "not 7 digits"),
        ("extract_id", "not-a-uuid", "not a UUID"),
        ("extract_date", "2026-02-30", "not a YYYY-MM-DD date"),
        ("extract_date", "17/11/2026", "not a YYYY-MM-DD date"),
        ("generated_at", "2026-11-17T16:30:00", "not an RFC 3339 date-time with a UTC offset"),
        ("generated_at", "2026-11-17T25:30:00Z", "not an RFC 3339 date-time with a UTC offset"),
        ("schema_version", "2", "unsupported"),
        ("schema_version", 1, "expected a string, got number"),
    ],
)
def test_a_mistyped_or_malformed_header_field_rejects_the_message(name, value, fault):
    batch = decode_messages([encode(message(**{name: value}))])
    rows = batch.message_rejections.to_pylist()
    assert {(r["reason_code"], r["field"]) for r in rows} == {("MSG_CONTRACT", name)}
    assert any(fault in r["detail"] for r in rows)
    assert batch.headers.num_rows == 0 and batch.pupils.num_rows == 0 and batch.marks.num_rows == 0


def test_header_values_are_normalised():
    batch = decode_messages(
        [
            encode(
                message(
                    extract_id="3F2B8C1E-9A4D-4C6B-8E2F-1A2B3C4D5E6F",
                    generated_at="2026-11-17T16:30:00.1234567Z",
                )
            )
        ]
    )
    [header] = batch.headers.to_pylist()
    assert header["extract_id"] == "3f2b8c1e-9a4d-4c6b-8e2f-1a2b3c4d5e6f"
    assert header["generated_at"] == dt.datetime(2026, 11, 17, 16, 30, 0, 123456, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("pupils", "field", "detail"),
    [
        ("not a list", "pupils", "pupils: missing or not a list"),
        (None, "pupils", "pupils: missing or not a list"),
        ([pupil(), 7], "pupils", "pupils.1: expected an object"),
        ([pupil(), None], "pupils", "pupils.1: expected an object"),
        ([pupil(sessions="AM /")], "pupils.sessions", "pupils.0.sessions: missing or not a list"),
        ([pupil(sessions=None)], "pupils.sessions", "pupils.0.sessions: missing or not a list"),
        (
            [pupil(sessions=[{"date": "2026-11-17", "session": "AM", "code": "/"}, "PM"])],
            "pupils.sessions",
            "pupils.0.sessions.1: expected an object",
        ),
        ([pupil(sessions=[None])], "pupils.sessions", "pupils.0.sessions.0: expected an object"),
    ],
)
def test_pupils_or_sessions_that_are_not_lists_of_objects_reject_the_message(pupils, field, detail):
    document = message(pupils)
    if pupils is None:
        del document["pupils"]
    batch = decode_messages([encode(message()), encode(document)])
    assert reasons(batch.message_rejections) == [(1, "MSG_CONTRACT", field)]
    assert batch.message_rejections.column("detail")[0].as_py() == detail
    assert set(batch.pupils.column("msg_index").to_pylist()) == {0}


@pytest.mark.parametrize("where", ["top level", "pupils", "upn", "extra field"])
def test_ten_thousand_deep_nested_arrays_are_rejected_quickly_without_crashing(where):
    deep = "[" * 10_000 + "]" * 10_000
    good = encode(message())
    if where == "top level":
        bad = deep.encode()
    elif where == "pupils":
        bad = good.replace(b'"pupils":[', b'"pupils":[' + deep.encode() + b",", 1)
    elif where == "upn":
        bad = good.replace(f'"{UPN_A}"'.encode(), deep.encode(), 1)
    else:
        bad = good[:-1] + b',"notes":' + deep.encode() + b"}"
    started = time.perf_counter()
    batch = decode_messages([good, bad])
    assert time.perf_counter() - started < 5
    assert batch.headers.column("msg_index").to_pylist() == [0]
    assert {r[0] for r in reasons(batch.message_rejections)} == {1}


# --- pupil and mark faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "fault"),
    [
        ({"fsm_eligible": "Y"}, "fsm_eligible", "expected a boolean, got string"),
        ({"upn": 801200005001}, "upn", "expected a string, got number"),
        ({"date_of_birth": "2015-02-30"}, "date_of_birth", "not a YYYY-MM-DD date"),
        ({"date_of_birth": 20150304}, "date_of_birth", "expected a string, got number"),
        ({"admission_date": None}, "admission_date", "missing or null"),
        ({"leaving_date": "soon"}, "leaving_date", "not a YYYY-MM-DD date"),
        ({"child_in_need": "no"}, "child_in_need", "expected a boolean, got string"),
        ({"ethnicity": ["W", "BRI"]}, "ethnicity", "expected a string, got array"),
    ],
)
def test_a_pupil_with_a_missing_or_mistyped_field_is_rejected_alone_with_its_marks(overrides, field, fault):
    document = message([pupil(UPN_A), pupil(**{"upn": UPN_B, **overrides})])
    batch = decode_messages([encode(document)])
    assert batch.message_rejections.num_rows == 0
    rows = batch.pupil_rejections.to_pylist()
    assert [(r["msg_index"], r["pupil_position"], r["reason_code"], r["field"]) for r in rows] == [
        (0, 1, "PUPIL_CONTRACT", field)
    ]
    assert fault in rows[0]["detail"]
    assert batch.pupils.column("pupil_position").to_pylist() == [0]
    assert set(batch.marks.column("pupil_position").to_pylist()) == {0}
    assert batch.headers.column("pupils_in_message").to_pylist() == [2]


def test_a_missing_required_pupil_field_is_named():
    record = pupil(UPN_B)
    del record["sen_provision"]
    batch = decode_messages([encode(message([pupil(UPN_A), record]))])
    assert reasons(batch.pupil_rejections) == [(0, 1, "PUPIL_CONTRACT", "sen_provision")]


@pytest.mark.parametrize(
    ("mark", "field"),
    [
        ({"date": "2026-11-16", "session": "AM", "code": 5}, "code"),
        ({"date": "2026-13-16", "session": "AM", "code": "/"}, "date"),
        ({"date": "2026-11-16", "code": "/"}, "session"),
        ({"date": "2026-11-16", "session": True, "code": "/"}, "session"),
    ],
)
def test_a_mark_with_a_missing_or_mistyped_field_is_rejected_alone(mark, field):
    record = pupil(UPN_B)
    record["sessions"] = [*record["sessions"], mark]
    batch = decode_messages([encode(message([pupil(UPN_A), record]))])
    assert batch.pupil_rejections.num_rows == 0
    assert reasons(batch.mark_rejections) == [(0, 1, 2, "MARK_CONTRACT", field)]
    assert batch.marks.num_rows == 4
    assert batch.pupils.column("marks_in_pupil").to_pylist() == [2, 3]


def test_details_never_quote_a_pupils_value():
    secret_upn, secret_dob = "Z99999999999Q", "1899-12-31x"
    document = message(
        [
            pupil(secret_upn, date_of_birth=secret_dob, fsm_eligible="SECRET-FSM"),
            pupil(UPN_B, sessions=[{"date": "SECRET-DATE", "session": "AM", "code": "/"}]),
        ]
    )
    batch = decode_messages([encode(document)])
    details = " ".join(
        batch.pupil_rejections.column("detail").to_pylist()
        + batch.mark_rejections.column("detail").to_pylist()
    )
    assert batch.pupil_rejections.num_rows == 2 and batch.mark_rejections.num_rows == 1
    for secret in (secret_upn, secret_dob, "SECRET"):
        assert secret not in details


# --- fields outside the contract ----------------------------------------------------------------------------


def with_extras() -> dict:
    document = message(
        [
            pupil(UPN_A, forename="Zoë", surname="O'Brien"),
            pupil(UPN_B, comments='said: "late": bus', address={"line1": "1 High St", "town": None}),
        ]
    )
    document["pupils"][0]["sessions"][0]["note"] = "ok"
    document["contractor"] = "Wonde"
    document["nothing"] = None
    return document


def test_fields_outside_the_contract_are_dropped_and_counted():
    # header: contractor (nothing is null: not counted); pupil 0: forename, surname; pupil 1: comments,
    # address + line1 inside it (town is null); mark: note -> 1 + 2 + 3 + 1 = 7
    batch = decode_messages([encode(with_extras())])
    assert batch.extra_fields_dropped == 7
    assert batch.headers.column("extra_fields_in_message").to_pylist() == [7]
    assert "forename" not in batch.pupils.column_names
    assert batch.pupils.num_rows == 2 and batch.pupil_rejections.num_rows == 0


def test_extras_are_counted_the_same_compact_pretty_and_slow(monkeypatch):
    document = with_extras()
    texts = [
        encode(document),
        json.dumps(document, indent=2).encode(),
        json.dumps(document).encode(),
        json.dumps(document, ensure_ascii=True).encode(),
    ]
    counts = [decode_messages([t]).extra_fields_dropped for t in texts]
    force_arrow(monkeypatch)
    counts += [decode_messages([t]).extra_fields_dropped for t in texts]
    force_slow(monkeypatch)
    counts += [decode_messages([t]).extra_fields_dropped for t in texts]
    assert counts == [7] * 12


def test_extras_of_rejected_messages_are_not_counted():
    document = with_extras()
    document["urn"] = 100001
    assert decode_messages([encode(document)]).extra_fields_dropped == 0


def test_the_contract_reader_arrow_and_the_slow_path_decode_alike(monkeypatch):
    bad_pupil = pupil(UPN_B, nc_year_group="6", date_of_birth="2015-02-30")
    del bad_pupil["admission_date"]
    batch_input = [
        encode(message()),
        json.dumps(with_extras(), indent=1).encode(),
        encode(message([pupil(UPN_A), bad_pupil])),
        encode(message([pupil(UPN_A, sessions=[{"date": "2026-11-16", "session": "XX", "code": "?"}])])),
        encode(message(urn="12")),
        encode(message([pupil(UPN_A), None])),
        encode(message(pupils=[])),
        b'{"urn": "100001"}',
    ]
    fast = decode_messages(batch_input)
    force_arrow(monkeypatch)
    arrow = decode_messages(batch_input)
    force_slow(monkeypatch)
    slow = decode_messages(batch_input)
    assert slow.slow_path_messages == len(batch_input)
    assert fast.slow_path_messages <= arrow.slow_path_messages < len(batch_input)
    assert_same_batch(fast, arrow)
    assert_same_batch(fast, slow)


def test_a_batch_of_mutated_messages_decodes_alike_with_or_without_the_contract_reader(monkeypatch):
    import random

    rng = random.Random(7)
    base = json.dumps(with_extras(), ensure_ascii=False, separators=(",", ":")).encode()
    alphabet = b'{}[],:"\\ 0123456789-.entrufals'
    mutants = []
    for _ in range(1500):
        mutant = bytearray(base)
        for _ in range(rng.randint(1, 2)):
            at = rng.randrange(len(mutant))
            if rng.random() < 0.5:
                mutant[at] = rng.choice(alphabet)
            else:
                del mutant[at]
        mutants.append(bytes(mutant))
    with_reader = decode_messages(mutants)
    force_arrow(monkeypatch)
    without = decode_messages(mutants)
    assert_same_batch(with_reader, without)
    assert with_reader.headers.num_rows > 300


@pytest.mark.parametrize("block_bytes", [1, 1 << 20])
def test_faults_arrow_cannot_place_are_isolated_whatever_the_block_size(monkeypatch, block_bytes):
    force_arrow(monkeypatch)
    monkeypatch.setattr(decode_module, "_BLOCK_BYTES", block_bytes)
    messages = [encode(message(urn=f"1000{i:02d}")) for i in range(12)]
    messages[3] = encode(message(chunk_index=2**70))  # Arrow: "couldn't parse" (no row named)
    messages[6] = encode(message()) + b" " + encode(message())  # two JSON values: rows do not line up
    wrong = message()
    wrong["pupils"][0]["sex"] = 1
    messages[9] = encode(wrong)  # Arrow names the row
    batch = decode_messages(messages)
    assert reasons(batch.message_rejections) == [
        (3, "MSG_CONTRACT", "chunk_index"), (6, "MSG_NOT_JSON", "(message)")]
    assert reasons(batch.pupil_rejections) == [(9, 0, "PUPIL_CONTRACT", "sex")]
    assert batch.headers.column("msg_index").to_pylist() == [0, 1, 2, 4, 5, 7, 8, 9, 10, 11]
    assert batch.pupils.num_rows == 19
    assert 3 <= batch.slow_path_messages <= 4  # a misplaced row may send an innocent neighbour the slow way


@pytest.mark.parametrize("block_bytes", [1, 4096])
def test_parsing_blocks_on_several_threads_gives_the_same_batch(monkeypatch, block_bytes):
    monkeypatch.setattr(decode_module, "_BLOCK_BYTES", block_bytes)  # many blocks, some failing
    monkeypatch.setattr(decode_module, "_SCAN_BYTES", block_bytes)
    messages = [encode(message(urn=f"1000{i:02d}")) for i in range(16)]
    messages[2] = encode(message(chunk_index=2**70))
    messages[5] = b'{"urn": "100005", "pupils": [}'
    mistyped = message()
    mistyped["pupils"][1]["sex"] = 1
    messages[11] = encode(mistyped)
    messages[13] = json.dumps(with_extras(), indent=1).encode()
    one = decode_messages(messages)
    several = decode_messages(messages, threads=3)
    assert_same_batch(one, several)
    assert several.slow_path_messages == one.slow_path_messages
    assert several.extra_fields_dropped == one.extra_fields_dropped > 0


def test_one_mistyped_pupil_does_not_disturb_other_messages_of_the_batch():
    messages = [encode(message(urn=f"1000{i:02d}")) for i in range(20)]
    faulty = copy.deepcopy(message())
    faulty["pupils"][1]["looked_after"] = "no"
    messages[7] = encode(faulty)
    batch = decode_messages(messages)
    assert batch.headers.num_rows == 20 and batch.pupils.num_rows == 39
    assert reasons(batch.pupil_rejections) == [(7, 1, "PUPIL_CONTRACT", "looked_after")]
    assert batch.slow_path_messages == 1


def test_an_empty_batch_gives_empty_tables():
    batch = decode_messages([])
    assert batch.headers.num_rows == 0 and batch.pupils.num_rows == 0 and batch.marks.num_rows == 0
    assert batch.headers.schema == decode_module.HEADERS_SCHEMA
    assert batch.extra_fields_dropped == 0


def test_pupils_and_marks_come_grouped_by_message_in_position_order():
    messages = [encode(message(urn=f"1000{i:02d}")) for i in range(6)]
    slow = message()
    slow["pupils"][1]["sex"] = 7
    messages[2] = encode(slow)
    batch = decode_messages(messages)
    pupils = [(r["msg_index"], r["pupil_position"]) for r in batch.pupils.to_pylist()]
    marks = [(r["msg_index"], r["pupil_position"], r["mark_position"]) for r in batch.marks.to_pylist()]
    for rows in (pupils, marks):
        runs = [m for i, (m, *_) in enumerate(rows) if i == 0 or rows[i - 1][0] != m]
        assert len(runs) == len(set(runs))  # each message's rows are together
        for m in set(runs):
            own = [r[1:] for r in rows if r[0] == m]
            assert own == sorted(own)
    assert sorted(pupils) == sorted([(m, p) for m in range(6) for p in range(2) if (m, p) != (2, 1)])
