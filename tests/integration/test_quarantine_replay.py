"""`attendance quarantine replay` against the real broker and lake: a register fix lets a rejected extract in
exactly once, a second replay re-sends nothing, and replaying record-level rejections (bytes re-read from
Kafka by offset) changes nothing already accepted."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from typing import Any

import polars as pl
import pytest

from attendance.settings import Settings
from attendance.topics import create_topics
from ingest.producer import chunk_extract
from storage.tables import ATTENDANCE_SESSIONS, EXTRACTS, PUPILS, QUARANTINE
from tests.conftest import settings_env
from tests.extract_factory import make_extract
from tests.integration.test_worker import DAY, run_worker, send_extract, table
from tests.lake_factory import write_register

pytestmark = pytest.mark.integration

ACADEMIC_YEAR = DAY.year if DAY.month >= 9 else DAY.year - 1
#: (urn, laestab, establishment): the register knows Y and Z from the start, X only after its fix.
X, Y, Z = ("320001", "3735001", 5001), ("320002", "3735002", 5002), ("320003", "3735003", 5003)


def _extract(school: tuple[str, str, int], pupils: int) -> dict[str, Any]:
    urn, laestab, establishment = school
    document = make_extract(urn, laestab, DAY, pupils=pupils, establishment=establishment)
    for n, pupil in enumerate(document["pupils"]):  # Year 4: aged 8 at 31 August, whatever today is
        pupil["date_of_birth"] = dt.date(ACADEMIC_YEAR - 8, 4, 1 + n).isoformat()
    return document


def _register(settings: Settings, *schools: tuple[str, str, int]) -> None:
    write_register(settings.lake_uri, [(urn, laestab, "Primary") for urn, laestab, _ in schools])


def _replay(settings: Settings, *arguments: str) -> str:
    done = subprocess.run([sys.executable, "-m", "attendance", "quarantine", "replay", *arguments],
                          env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _of(frame: pl.DataFrame, school: tuple[str, str, int]) -> pl.DataFrame:
    return frame.filter(pl.col("urn") == school[0]).sort(frame.columns)


@pytest.fixture()
def world(settings: Settings) -> Settings:
    create_topics(settings)
    return settings


def test_a_register_fix_lets_a_rejected_extract_in_once_and_a_second_replay_sends_nothing(world: Settings):
    _register(world, Y)
    document = _extract(X, pupils=4)
    chunks = chunk_extract(document, 2_500)
    assert len(chunks) >= 2  # a multi-chunk extract: every chunk is quarantined and replayed
    send_extract(world, document, 2_500)
    send_extract(world, _extract(Y, pupils=2))
    run_worker(world)

    quarantine = table(world, QUARANTINE)
    rejected = quarantine.filter(pl.col("urn") == X[0])
    assert rejected["reason_code"].to_list() == ["MSG_UNKNOWN_URN"] * len(chunks)
    assert sorted(rejected["raw_message"].to_list()) == sorted(c.value for c in chunks)
    assert table(world, ATTENDANCE_SESSIONS).filter(pl.col("urn") == X[0]).height == 0
    statuses = dict(table(world, EXTRACTS).select("extract_id", "status").iter_rows())
    assert statuses[document["extract_id"]] == "rejected"

    _register(world, Y, X)  # the register is reloaded with the school
    assert f"{len(chunks)} message(s) to re-submit" in _replay(world, "--reason", "MSG_UNKNOWN_URN")
    run_worker(world)

    sessions, pupils = table(world, ATTENDANCE_SESSIONS), table(world, PUPILS)
    assert _of(sessions, X).select("upn", "date", "session").is_duplicated().sum() == 0
    assert _of(sessions, X).height == 4 * 2 and _of(pupils, X).height == 4
    assert {p["upn"] for p in document["pupils"]} == set(_of(pupils, X)["upn"].to_list())
    assert _of(sessions, Y).height == 2 * 2
    extract = table(world, EXTRACTS).filter(pl.col("extract_id") == document["extract_id"])
    assert extract.select("status", "pupils_accepted", "marks_accepted").rows() == [("complete", 4, 8)]
    quarantine = table(world, QUARANTINE)
    assert quarantine.filter(pl.col("urn") == X[0]).height == len(chunks)  # the accepted replay added none
    assert quarantine.filter(pl.col("urn") == X[0])["replayed_at"].null_count() == 0
    settled = {c.name: table(world, c) for c in (ATTENDANCE_SESSIONS, PUPILS, EXTRACTS, QUARANTINE)}

    assert "0 message(s) to re-submit" in _replay(world, "--reason", "MSG_UNKNOWN_URN")
    run_worker(world)
    for contract in (ATTENDANCE_SESSIONS, PUPILS, EXTRACTS, QUARANTINE):
        now = table(world, contract)
        assert now.height == settled[contract.name].height, contract.name
    for contract in (ATTENDANCE_SESSIONS, PUPILS):  # not even rewritten
        now = table(world, contract)
        assert now.sort(now.columns).equals(settled[contract.name].sort(now.columns)), contract.name


def test_replaying_record_rejections_re_reads_kafka_and_changes_nothing_already_accepted(world: Settings):
    _register(world, Y, Z)
    faulty_pupil = _extract(Y, pupils=3)
    faulty_pupil["pupils"][1]["sex"] = "U"
    old_mark = DAY - dt.timedelta(days=21)  # a weekday, 15 school days back: outside the default 7-day window
    faulty_mark = _extract(Z, pupils=3)
    faulty_mark["pupils"][1]["sessions"].append({"date": old_mark.isoformat(), "session": "AM", "code": "/"})
    send_extract(world, faulty_pupil)
    send_extract(world, faulty_mark)
    run_worker(world)

    before = {c.name: table(world, c) for c in (ATTENDANCE_SESSIONS, PUPILS, QUARANTINE, EXTRACTS)}
    quarantine = before[QUARANTINE.name]
    assert quarantine.select("urn", "reason_code", "pupil_position", "mark_position").sort("urn").rows() == [
        (Y[0], "PUPIL_SEX_INVALID", 1, None), (Z[0], "MARK_DATE_OUTSIDE_WINDOW", 1, 2)]
    assert quarantine["raw_message"].null_count() == 2  # record-level rows keep no bytes: replay re-reads Kafka
    assert _of(before[PUPILS.name], Y).height == 2 and _of(before[ATTENDANCE_SESSIONS.name], Z).height == 6

    # The rule fix: a wider amendment window. The pupil's fault is not fixed and must be rejected again.
    out = _replay(world, "--reason", "PUPIL_SEX_INVALID", "--reason", "MARK_DATE_OUTSIDE_WINDOW")
    assert "2 message(s) to re-submit" in out and "re-submitted 2 message(s)" in out
    run_worker(world.model_copy(update={"amendment_window_school_days": 20}))

    sessions, pupils = table(world, ATTENDANCE_SESSIONS), table(world, PUPILS)
    assert _of(pupils, Y).equals(_of(before[PUPILS.name], Y))
    assert _of(sessions, Y).equals(_of(before[ATTENDANCE_SESSIONS.name], Y))
    assert _of(pupils, Z).equals(_of(before[PUPILS.name], Z))
    upn = faulty_mark["pupils"][1]["upn"]
    new_mark = (pl.col("upn") == upn) & (pl.col("date") == old_mark) & (pl.col("session") == "AM")
    assert _of(sessions, Z).filter(new_mark).select("code").rows() == [("/",)]
    assert _of(sessions, Z).filter(~new_mark).equals(_of(before[ATTENDANCE_SESSIONS.name], Z))

    quarantine = table(world, QUARANTINE)
    originals = quarantine.join(before[QUARANTINE.name].select("topic", "partition", "offset"),
                                on=["topic", "partition", "offset"], how="semi")
    assert originals.height == 2 and originals["replayed_at"].null_count() == 0
    again = quarantine.join(originals, on=["topic", "partition", "offset"], how="anti")
    # The replayed pupil is still wrong: quarantined again, at the replayed message's offset, not yet replayed.
    assert again.select("urn", "reason_code", "pupil_position", "replayed_at").rows() == [
        (Y[0], "PUPIL_SEX_INVALID", 1, None)]
    assert table(world, EXTRACTS).height == before[EXTRACTS.name].height
