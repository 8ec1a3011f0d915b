"""Every validation rule end to end: one crafted message (or extract) per reason code, sent through the real
broker, judged by one `attendance worker --until-drained` run for the whole set, and then looked for where it
should have landed: its quarantine row, the pupils and marks stored (or not), the extract's status, and the
dead-letter topic. A second run, with a short completeness timeout, turns the extract left one chunk short
into MSG_INCOMPLETE and must double nothing else.

Each case is its own school (its own extract), so the assertions of one case cannot see another's rows; each
message's Kafka position, returned by the broker on send, ties it to its quarantine rows.

Every code in ``streams.rules.RULES`` has a case: none is impossible to produce through Kafka (the coverage
test below fails when a rule is added without one).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import write_deltalake
from kafka import KafkaConsumer, KafkaProducer
from kafka.partitioner import murmur2

from attendance.settings import Settings
from attendance.topics import create_topics
from ingest.producer import chunk_extract
from schemas.upn import ALPHABET
from storage.tables import ATTENDANCE_SESSIONS, EXTRACTS, PUPILS, QUARANTINE, SCHOOLS
from streams.rules import RULES
from tests.extract_factory import make_extract
from tests.integration.test_worker import run_worker, table
from tests.lake_factory import write_register

pytestmark = pytest.mark.integration

TODAY = dt.datetime.now(dt.UTC).date()  # the worker judges dates against today in UTC
DAY = TODAY - dt.timedelta(days=max(0, TODAY.weekday() - 4))  # the latest weekday <= today
ACADEMIC_YEAR = DAY.year if DAY.month >= 9 else DAY.year - 1  # the year DAY's academic year began
SATURDAY_BEFORE = DAY - dt.timedelta(days=DAY.weekday() + 2)  # inside the 7-weekday amendment window
THREE_WEEKS_BEFORE = DAY - dt.timedelta(days=21)  # a weekday (same as DAY), before the 7-weekday window
LA_CODE = 373  # Sheffield: a live LA in the reference tables
PARTITIONS = 4
PUPILS_PER_EXTRACT = 3
MARKS_PER_PUPIL = 2  # make_extract gives each pupil DAY AM and PM


@dataclass(frozen=True)
class Row:
    """One expected quarantine row: which of the case's messages, and where in it."""

    message: int
    reason_code: str
    field: str
    pupil_position: int | None = None
    mark_position: int | None = None


@dataclass
class Case:
    code: str
    urn: str
    laestab: str
    messages: list[bytes]
    rows: list[Row]
    document: dict[str, Any] | None = None  # None: no extract could be read from the bytes
    status: str | None = None  # expected extracts.status (None: no extracts row)
    pupils_kept: int = 0
    marks_kept: int = 0
    absent_upns: set[str] = field(default_factory=set)  # rejected pupils: in no stored table
    absent_marks: set[tuple[str, dt.date, str]] = field(default_factory=set)  # (upn, date, session)
    kept_marks: set[tuple[str, dt.date, str, str]] = field(default_factory=set)  # (upn, date, session, code)
    registered: str | None = "Open"  # register status of the school (None: not in the register)
    dead_letter: bool = False
    withheld: list[bytes] = field(default_factory=list)  # chunks never sent (MSG_INCOMPLETE)

    @property
    def severity(self) -> str:
        return RULES[self.code].severity


def _school(number: int) -> tuple[str, str, int]:
    establishment = 4000 + number
    return f"{310000 + number}", f"{LA_CODE}{establishment}", establishment


def _partition(number: int) -> int:
    """The partition kafka-python's default partitioner gives the school's URN key."""
    return (murmur2(_school(number)[0].encode()) & 0x7FFFFFFF) % PARTITIONS


def _document(number: int, extract_date: dt.date = DAY, pupils: int = PUPILS_PER_EXTRACT) -> dict[str, Any]:
    """A valid extract of Year 4 pupils with distinct, plausible dates of birth (aged 8 at 31 August)."""
    urn, laestab, establishment = _school(number)
    document = make_extract(urn, laestab, extract_date, pupils=pupils, la_code=LA_CODE,
                            establishment=establishment)
    for n, pupil in enumerate(document["pupils"]):
        pupil["date_of_birth"] = dt.date(ACADEMIC_YEAR - 8, 3, 1 + number % 14 + n).isoformat()
    return document


def _message(document: dict[str, Any], chunk_index: int = 0, chunk_count: int = 1,
             pupils: list[dict] | None = None, **header: Any) -> bytes:
    """One chunk's bytes, built by hand (chunk_extract only makes well-formed chunks)."""
    head = {k: v for k, v in document.items() if k != "pupils"}
    head.update(header)
    return orjson.dumps({**head, "chunk_index": chunk_index, "chunk_count": chunk_count,
                         "pupils": document["pupils"] if pupils is None else pupils})


def _sent(document: dict[str, Any]) -> list[bytes]:
    return [chunk.value for chunk in chunk_extract(document, 1_000_000)]


def _wrong_check_letter(upn: str) -> str:
    return ALPHABET[(ALPHABET.index(upn[0]) + 1) % len(ALPHABET)] + upn[1:]


def _upn(document: dict[str, Any], position: int) -> str:
    return document["pupils"][position]["upn"]


def _message_case(code: str, number: int, field_name: str, *, registered: str | None = "Open",
                  extract_date: dt.date = DAY, laestab: str | None = None) -> Case:
    document = _document(number, extract_date)
    urn, register_laestab, _ = _school(number)
    if laestab is not None:
        document["laestab"] = laestab
    return Case(code, urn, register_laestab, _sent(document), [Row(0, code, field_name)], document,
                status="rejected", registered=registered)


def _pupil_case(code: str, number: int, field_name: str, change: dict[str, Any]) -> Case:
    """Pupil 1 of 3 changed: it and its marks are quarantined, pupils 0 and 2 are stored."""
    document = _document(number)
    urn, laestab, _ = _school(number)
    document["pupils"][1].update(change)
    upn = _upn(document, 1)
    return Case(code, urn, laestab, _sent(document), [Row(0, code, field_name, pupil_position=1)], document,
                status="complete", pupils_kept=PUPILS_PER_EXTRACT - 1,
                marks_kept=(PUPILS_PER_EXTRACT - 1) * MARKS_PER_PUPIL,
                absent_upns={upn}, absent_marks={(upn, DAY, "AM"), (upn, DAY, "PM")})


def _mark_case(code: str, number: int, rows: list[Row], *, replace: dict[int, dict] | None = None,
               append: dict | None = None, absent: set[tuple[dt.date, str]] = frozenset(),
               kept: set[tuple[dt.date, str, str]] = frozenset()) -> Case:
    """Pupil 1's marks changed (``replace`` by position, or one ``append``ed at position 2)."""
    document = _document(number)
    urn, laestab, _ = _school(number)
    marks = document["pupils"][1]["sessions"]
    for position, mark in (replace or {}).items():
        marks[position] = mark
    if append is not None:
        marks.append(append)
    upn = _upn(document, 1)
    stored = PUPILS_PER_EXTRACT * MARKS_PER_PUPIL - len({date_session for date_session in absent
                                                         if date_session[0] == DAY})
    return Case(code, urn, laestab, _sent(document), rows, document, status="complete",
                pupils_kept=PUPILS_PER_EXTRACT, marks_kept=stored,
                absent_marks={(upn, date, session) for date, session in absent},
                kept_marks={(upn, date, session, mark_code) for date, session, mark_code in kept})


def _build_cases() -> list[Case]:
    cases: list[Case] = []

    # --- message: unreadable bytes (also dead-lettered) ------------------------------------------------
    urn, laestab, _ = _school(1)
    cases.append(Case("MSG_NOT_UTF8", urn, laestab, [b'{"urn": "' + urn.encode() + b'", "pupils": ["\xc3\x28"]}'],
                      [Row(0, "MSG_NOT_UTF8", "(message)")], dead_letter=True))
    urn, laestab, _ = _school(2)
    cases.append(Case("MSG_NOT_JSON", urn, laestab, [b'{"urn": "' + urn.encode() + b'", "pupils": [{"upn": '],
                      [Row(0, "MSG_NOT_JSON", "(message)")], dead_letter=True))

    # --- message: structure and header ---------------------------------------------------------------
    document = _document(3)
    urn, laestab, _ = _school(3)
    cases.append(Case("MSG_CONTRACT", urn, laestab, [_message(document, laestab=int(laestab))],
                      [Row(0, "MSG_CONTRACT", "laestab")], document, status="rejected"))
    cases.append(_message_case("MSG_UNKNOWN_URN", 4, "urn", registered=None))
    cases.append(_message_case("MSG_CLOSED_URN", 5, "urn", registered="Closed"))
    cases.append(_message_case("MSG_LAESTAB_MISMATCH", 6, "laestab", laestab=f"{LA_CODE}9999"))
    cases.append(_message_case("MSG_EXTRACT_DATE_FUTURE", 7, "extract_date",
                               extract_date=TODAY + dt.timedelta(days=1)))
    cases.append(_message_case("MSG_EXTRACT_DATE_TOO_OLD", 8, "extract_date",
                               extract_date=TODAY - dt.timedelta(days=40)))

    document = _document(9)
    urn, laestab, _ = _school(9)
    cases.append(Case("MSG_CHUNK_NUMBERING", urn, laestab, [_message(document, chunk_index=1, chunk_count=1)],
                      [Row(0, "MSG_CHUNK_NUMBERING", "chunk_index")], document, status="rejected"))

    document = _document(10)
    urn, laestab, _ = _school(10)
    document["pupil_count"] = PUPILS_PER_EXTRACT + 2
    cases.append(Case("MSG_PUPIL_COUNT_MISMATCH", urn, laestab, _sent(document),
                      [Row(0, "MSG_PUPIL_COUNT_MISMATCH", "pupil_count")], document, status="rejected"))

    document = _document(11)
    urn, laestab, _ = _school(11)
    later = f"{DAY.isoformat()}T18:30:00+00:00"
    cases.append(Case("MSG_HEADER_INCONSISTENT", urn, laestab, [
        _message(document, 0, 2, document["pupils"][:2]),
        _message(document, 1, 2, document["pupils"][2:], generated_at=later),
    ], [Row(0, "MSG_HEADER_INCONSISTENT", "generated_at"), Row(1, "MSG_HEADER_INCONSISTENT", "generated_at")],
        document, status="rejected"))

    # Chunk 1 breaks the contract; chunk 0 is fine on its own but must not be stored without it.
    document = _document(12)
    urn, laestab, _ = _school(12)
    broken = copy.deepcopy(document["pupils"][2:])
    broken[0]["sessions"] = "none"
    cases.append(Case("MSG_EXTRACT_REJECTED", urn, laestab, [
        _message(document, 0, 2, document["pupils"][:2]),
        _message(document, 1, 2, broken),
    ], [Row(0, "MSG_EXTRACT_REJECTED", "chunk_index"), Row(1, "MSG_CONTRACT", "pupils.sessions")],
        document, status="rejected"))

    # Chunk 1 of 2 never arrives: held (invisible) in the first run, reported once the timeout passes. It
    # is sent first, on the partition of the not-UTF-8 message, so the second run re-reads a dead letter.
    number = next(n for n in range(31, 200) if _partition(n) == _partition(1))
    document = _document(number)
    urn, laestab, _ = _school(number)
    cases.append(Case("MSG_INCOMPLETE", urn, laestab, [_message(document, 0, 2, document["pupils"][:2])],
                      [Row(0, "MSG_INCOMPLETE", "chunk_count")], document, status="incomplete",
                      withheld=[_message(document, 1, 2, document["pupils"][2:])]))

    # --- pupil -----------------------------------------------------------------------------------------
    dob = dt.date.fromisoformat(_document(14)["pupils"][1]["date_of_birth"])
    cases.append(_pupil_case("PUPIL_CONTRACT", 14, "date_of_birth", {"date_of_birth": dob.strftime("%d/%m/%Y")}))
    upn = _upn(_document(15), 1)
    cases.append(_pupil_case("PUPIL_UPN_INVALID", 15, "upn", {"upn": _wrong_check_letter(upn)}))
    cases.append(_pupil_case("PUPIL_YEAR_GROUP_INVALID", 17, "nc_year_group", {"nc_year_group": "15"}))
    cases.append(_pupil_case("PUPIL_DOB_IMPLAUSIBLE", 18, "date_of_birth",
                             {"date_of_birth": dt.date(ACADEMIC_YEAR - 30, 3, 1).isoformat()}))
    cases.append(_pupil_case("PUPIL_SEX_INVALID", 19, "sex", {"sex": "U"}))
    cases.append(_pupil_case("PUPIL_SEN_INVALID", 20, "sen_provision", {"sen_provision": "Z"}))

    # Pupils 1 and 2 share a UPN: both copies are rejected, only pupil 0 is stored.
    document = _document(16)
    urn, laestab, _ = _school(16)
    shared = _upn(document, 1)
    document["pupils"][2]["upn"] = shared
    cases.append(Case("PUPIL_DUPLICATE_UPN", urn, laestab, _sent(document), [
        Row(0, "PUPIL_DUPLICATE_UPN", "upn", pupil_position=1),
        Row(0, "PUPIL_DUPLICATE_UPN", "upn", pupil_position=2),
    ], document, status="complete", pupils_kept=1, marks_kept=MARKS_PER_PUPIL, absent_upns={shared},
        absent_marks={(shared, DAY, "AM"), (shared, DAY, "PM")}))

    # A warning: the leaver's marks after leaving_date are kept.
    document = _document(21)
    urn, laestab, _ = _school(21)
    document["pupils"][1]["leaving_date"] = (DAY - dt.timedelta(days=1)).isoformat()
    leaver = _upn(document, 1)
    cases.append(Case("PUPIL_LEFT", urn, laestab, _sent(document),
                      [Row(0, "PUPIL_LEFT", "leaving_date", pupil_position=1)], document, status="complete",
                      pupils_kept=PUPILS_PER_EXTRACT, marks_kept=PUPILS_PER_EXTRACT * MARKS_PER_PUPIL,
                      kept_marks={(leaver, DAY, "AM", "/"), (leaver, DAY, "PM", "\\")}))

    # --- mark ------------------------------------------------------------------------------------------
    day = DAY.isoformat()
    cases.append(_mark_case("MARK_CONTRACT", 22, [Row(0, "MARK_CONTRACT", "code", 1, 1)],
                            replace={1: {"date": day, "session": "PM"}}, absent={(DAY, "PM")},
                            kept={(DAY, "AM", "/")}))
    cases.append(_mark_case("MARK_CODE_UNKNOWN", 23, [Row(0, "MARK_CODE_UNKNOWN", "code", 1, 0)],
                            replace={0: {"date": day, "session": "AM", "code": "QQ"}}, absent={(DAY, "AM")},
                            kept={(DAY, "PM", "\\")}))
    cases.append(_mark_case("MARK_CODE_NOT_VALID_ON_DATE", 24, [Row(0, "MARK_CODE_NOT_VALID_ON_DATE", "code", 1, 0)],
                            replace={0: {"date": day, "session": "AM", "code": "H"}}, absent={(DAY, "AM")}))
    cases.append(_mark_case("MARK_SESSION_INVALID", 25, [Row(0, "MARK_SESSION_INVALID", "session", 1, 1)],
                            replace={1: {"date": day, "session": "EV", "code": "\\"}}, absent={(DAY, "PM")},
                            kept={(DAY, "AM", "/")}))
    cases.append(_mark_case("MARK_DATE_OUTSIDE_WINDOW", 26, [Row(0, "MARK_DATE_OUTSIDE_WINDOW", "date", 1, 2)],
                            append={"date": THREE_WEEKS_BEFORE.isoformat(), "session": "AM", "code": "/"},
                            absent={(THREE_WEEKS_BEFORE, "AM")}, kept={(DAY, "AM", "/"), (DAY, "PM", "\\")}))
    cases.append(_mark_case("MARK_WEEKEND", 27, [Row(0, "MARK_WEEKEND", "date", 1, 2)],
                            append={"date": SATURDAY_BEFORE.isoformat(), "session": "AM", "code": "/"},
                            absent={(SATURDAY_BEFORE, "AM")}))
    cases.append(_mark_case("MARK_DUPLICATE_CONFLICT", 28, [
        Row(0, "MARK_DUPLICATE_CONFLICT", "code", 1, 0), Row(0, "MARK_DUPLICATE_CONFLICT", "code", 1, 2),
    ], append={"date": day, "session": "AM", "code": "I"}, absent={(DAY, "AM")}, kept={(DAY, "PM", "\\")}))
    cases.append(_mark_case("MARK_DUPLICATE_SAME", 29, [Row(0, "MARK_DUPLICATE_SAME", "code", 1, 2)],
                            append={"date": day, "session": "AM", "code": "/"}, kept={(DAY, "AM", "/")}))
    cases.append(_mark_case("MARK_NO_MARK", 30, [Row(0, "MARK_NO_MARK", "code", 1, 1)],
                            replace={1: {"date": day, "session": "PM", "code": "-"}}, kept={(DAY, "PM", "-")}))
    return cases


CASES = _build_cases()
CASE_BY_CODE = {case.code: case for case in CASES}
#: Codes with no case, and why each cannot be produced through Kafka. None: every rule can.
UNREACHABLE: dict[str, str] = {}


@dataclass
class Judged:
    settings: Settings
    positions: dict[str, list[tuple[int, int]]]  # case code -> (partition, offset) of each message sent
    first: dict[str, pl.DataFrame]  # tables after the first worker run
    second: dict[str, pl.DataFrame]  # after the second (short completeness timeout)
    dead_letters: list[Any]
    seconds: dict[str, float]


def _tables(settings: Settings) -> dict[str, pl.DataFrame]:
    return {c.name: table(settings, c) for c in (ATTENDANCE_SESSIONS, PUPILS, EXTRACTS, QUARANTINE)}


def _write_register(lake_uri: str) -> None:
    registered = [case for case in CASES if case.registered is not None]
    schools = write_register(lake_uri, [(case.urn, case.laestab, "Primary") for case in registered])
    closed = pa.array([case.urn for case in registered if case.registered != "Open"])
    status = pc.if_else(pc.is_in(schools.column("urn"), value_set=closed), "Closed", schools.column("status"))
    schools = schools.set_column(schools.schema.get_field_index("status"), "status", status)
    write_deltalake(SCHOOLS.path(lake_uri), schools.cast(SCHOOLS.schema), mode="overwrite")


def _send(settings: Settings) -> dict[str, list[tuple[int, int]]]:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    in_order = sorted(CASES, key=lambda case: case.code != "MSG_INCOMPLETE")
    futures = {case.code: [producer.send(settings.topic_extracts, key=case.urn.encode(), value=value)
                           for value in case.messages] for case in in_order}
    producer.flush()
    producer.close()
    return {code: [(m.partition, m.offset) for m in (f.get(timeout=10) for f in sent)]
            for code, sent in futures.items()}


def _read_dead_letters(settings: Settings) -> list[Any]:
    consumer = KafkaConsumer(settings.topic_deadletter, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=3000)
    try:
        return list(consumer)
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def judged(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Judged:
    root: Path = tmp_path_factory.mktemp("rules-e2e")
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap, lake_uri=str(root / "lake"), state_dir=root / "state",
        topic_extracts=f"test.extracts.{suffix}", topic_optouts=f"test.optouts.{suffix}",
        topic_deadletter=f"test.deadletter.{suffix}", consumer_group=f"test-rules-{suffix}",
        extracts_partitions=PARTITIONS, connect_timeout_s=5.0, delivery_timeout_s=10.0,
    )
    create_topics(settings)
    _write_register(settings.lake_uri)
    positions = _send(settings)
    sent_at = time.monotonic()
    seconds = {}
    started = time.monotonic()
    run_worker(settings)
    seconds["first run"] = time.monotonic() - started
    first = _tables(settings)
    time.sleep(max(0.0, 1.5 - (time.monotonic() - sent_at)))  # past the 1 s timeout of the second run
    started = time.monotonic()
    run_worker(settings.model_copy(update={"incomplete_extract_timeout_s": 1.0}))
    seconds["second run"] = time.monotonic() - started
    return Judged(settings, positions, first, _tables(settings), _read_dead_letters(settings), seconds)


# --- the tests -------------------------------------------------------------------------------------------


def test_every_rule_has_an_end_to_end_case_or_a_reason_it_cannot_have_one():
    assert set(CASE_BY_CODE) | set(UNREACHABLE) == set(RULES)
    assert not set(CASE_BY_CODE) & set(UNREACHABLE)


def _case_rows(judged: Judged, case: Case, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    positions = judged.positions[case.code]
    spots = pl.DataFrame({"partition": [p for p, _ in positions], "offset": [o for _, o in positions],
                          "message": list(range(len(positions)))},
                         schema={"partition": pl.Int32, "offset": pl.Int64, "message": pl.Int64})
    return tables[QUARANTINE.name].join(spots, on=["partition", "offset"], how="inner")


@pytest.mark.parametrize("code", list(CASE_BY_CODE))
def test_rule_is_quarantined_with_its_reason_and_position(judged: Judged, code: str):
    case = CASE_BY_CODE[code]
    rows = _case_rows(judged, case, judged.second)
    found = sorted(
        (r["message"], r["reason_code"], r["field"], r["pupil_position"], r["mark_position"])
        for r in rows.iter_rows(named=True)
    )
    expected = sorted((r.message, r.reason_code, r.field, r.pupil_position, r.mark_position) for r in case.rows)
    assert found == expected
    assert set(rows["topic"].to_list()) == {judged.settings.topic_extracts}
    assert set(rows["severity"].to_list()) == {RULES[r.reason_code].severity for r in case.rows}
    assert rows["quarantined_at"].null_count() == 0 and rows["replayed_at"].null_count() == rows.height
    if case.document is not None:  # the header was readable: the row says which extract and school
        assert set(rows["extract_id"].to_list()) == {case.document["extract_id"]}
        assert set(rows["urn"].to_list()) == {case.urn}
    else:
        assert set(rows["extract_id"].to_list()) == {None}


@pytest.mark.parametrize("code", [c.code for c in CASES if c.severity == "message"])
def test_message_rejection_keeps_the_bytes_and_rejects_the_whole_extract(judged: Judged, code: str):
    case = CASE_BY_CODE[code]
    rows = _case_rows(judged, case, judged.second)
    by_message = dict(zip(rows["message"].to_list(), rows["raw_message"].to_list(), strict=True))
    assert by_message == dict(enumerate(case.messages))  # every chunk, byte for byte (replayable)
    assert judged.second[ATTENDANCE_SESSIONS.name].filter(pl.col("urn") == case.urn).height == 0
    assert judged.second[PUPILS.name].filter(pl.col("urn") == case.urn).height == 0
    extracts = judged.second[EXTRACTS.name]
    if case.document is None:
        assert extracts.filter(pl.col("urn") == case.urn).height == 0
    else:
        row = extracts.filter(pl.col("extract_id") == case.document["extract_id"])
        assert row["status"].to_list() == [case.status]
        assert row["pupils_accepted"].to_list() in ([0], [None]) and row["marks_accepted"].to_list() in ([0], [None])


@pytest.mark.parametrize("code", [c.code for c in CASES if c.severity != "message"])
def test_record_rejection_drops_only_its_pupil_or_mark(judged: Judged, code: str):
    case = CASE_BY_CODE[code]
    tables = judged.second
    sessions = tables[ATTENDANCE_SESSIONS.name].filter(pl.col("urn") == case.urn)
    pupils = tables[PUPILS.name].filter(pl.col("urn") == case.urn)
    assert pupils.height == case.pupils_kept
    assert sessions.height == case.marks_kept
    assert not case.absent_upns & set(pupils["upn"].to_list())
    assert not case.absent_upns & set(sessions["upn"].to_list())
    stored = set(sessions.select("upn", "date", "session").iter_rows())
    assert not case.absent_marks & stored
    assert case.kept_marks <= set(sessions.select("upn", "date", "session", "code").iter_rows())
    # Every pupil not rejected is stored, with every mark not rejected.
    expected_upns = {p["upn"] for p in case.document["pupils"]} - case.absent_upns
    assert set(pupils["upn"].to_list()) == expected_upns
    row = tables[EXTRACTS.name].filter(pl.col("extract_id") == case.document["extract_id"])
    assert row.select("status", "pupils_accepted", "marks_accepted", "pupils_rejected", "marks_rejected").rows() == [(
        "complete", case.pupils_kept, case.marks_kept,
        sum(RULES[r.reason_code].severity == "pupil" for r in case.rows),
        sum(RULES[r.reason_code].severity == "mark" for r in case.rows),
    )]


def test_unreadable_messages_are_dead_lettered_with_their_bytes(judged: Judged):
    unreadable = [case for case in CASES if case.dead_letter]
    expected = {(case.urn.encode(), case.messages[0],
                 f"{judged.settings.topic_extracts}/{judged.positions[case.code][0][0]}/"
                 f"{judged.positions[case.code][0][1]}".encode()) for case in unreadable}
    delivered = {(r.key, r.value, dict(r.headers)["source"]) for r in judged.dead_letters}
    assert delivered == expected
    held, reread = judged.positions["MSG_INCOMPLETE"][0], judged.positions["MSG_NOT_UTF8"][0]
    assert reread[0] == held[0] and reread[1] > held[1], "set-up: the second run must re-read a dead letter"


def test_a_message_reread_is_not_dead_lettered_twice(judged: Judged):
    held = judged.positions["MSG_INCOMPLETE"][0]
    reread = judged.positions["MSG_NOT_UTF8"][0]
    assert reread[0] == held[0] and reread[1] > held[1]  # precondition: the second run re-read it
    assert len(judged.dead_letters) == sum(case.dead_letter for case in CASES)


def test_an_extract_missing_a_chunk_is_invisible_and_unreported_until_the_timeout(judged: Judged):
    case = CASE_BY_CODE["MSG_INCOMPLETE"]
    for name in (ATTENDANCE_SESSIONS.name, PUPILS.name):
        assert judged.first[name].filter(pl.col("urn") == case.urn).height == 0
    assert _case_rows(judged, case, judged.first).height == 0
    assert judged.first[EXTRACTS.name].filter(pl.col("extract_id") == case.document["extract_id"]).height == 0
    row = judged.second[EXTRACTS.name].filter(pl.col("extract_id") == case.document["extract_id"])
    assert row.select("status", "chunk_count", "chunks_received").rows() == [("incomplete", 2, 1)]


def test_the_second_run_doubles_nothing(judged: Judged):
    incomplete = CASE_BY_CODE["MSG_INCOMPLETE"]
    new_rows = _case_rows(judged, incomplete, judged.second).height
    assert judged.second[QUARANTINE.name].height == judged.first[QUARANTINE.name].height + new_rows
    assert judged.second[EXTRACTS.name].height == judged.first[EXTRACTS.name].height + 1
    for name in (ATTENDANCE_SESSIONS.name, PUPILS.name):
        assert judged.second[name].sort(judged.second[name].columns).equals(
            judged.first[name].sort(judged.first[name].columns)), name
    keys = list(QUARANTINE.key)
    assert judged.second[QUARANTINE.name].select(keys).is_duplicated().sum() == 0


def test_no_quarantine_detail_quotes_a_pupil_identifier_or_date_of_birth(judged: Judged):
    secrets: set[str] = set()
    for case in CASES:
        for pupil in (case.document or {}).get("pupils", []):
            secrets.add(pupil["upn"])
            dob = pupil["date_of_birth"]
            secrets.add(dob)
            with contextlib.suppress(ValueError):  # a date_of_birth crafted not to be ISO is itself a secret
                secrets.add(dt.date.fromisoformat(dob).strftime("%d/%m/%Y"))
    details = [d for d in judged.second[QUARANTINE.name]["detail"].to_list() if d]
    assert details, "no detail to check"
    leaks = [(detail, secret) for detail in details for secret in secrets if secret in detail]
    assert leaks == []
