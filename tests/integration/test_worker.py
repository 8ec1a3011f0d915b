"""The stream worker against the real broker and real Delta tables: validation, quarantine, opt-outs,
completeness, and a restart that neither loses nor doubles anything."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import orjson
import polars as pl
import pytest
from kafka import KafkaProducer

from attendance.settings import Settings
from attendance.topics import create_topics
from ingest.producer import chunk_extract
from storage.current import read_current
from storage.tables import ATTENDANCE_SESSIONS, EXTRACTS, OPTOUT_AUDIT, PUPILS, QUARANTINE
from tests.conftest import settings_env
from tests.extract_factory import make_extract
from tests.lake_factory import write_register

pytestmark = pytest.mark.integration

TODAY = dt.date.today()
DAY = TODAY - dt.timedelta(days=(TODAY.weekday() - 4) if TODAY.weekday() > 4 else 0)  # a weekday <= today
SCHOOLS = [("100001", "3732001", "Primary"), ("100002", "3732002", "Primary"), ("100003", "8862003", "Secondary")]


def run_worker(settings: Settings, timeout: float = 180) -> subprocess.CompletedProcess:
    env = settings_env(settings)
    env["ATTENDANCE_METRICS_PORT"] = "0"
    done = subprocess.run([sys.executable, "-m", "attendance", "worker", "--until-drained"], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def send_raw(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for key, value in messages:
        producer.send(settings.topic_extracts, key=key, value=value)
    producer.flush()
    producer.close()


def send_extract(settings: Settings, document: dict, max_bytes: int = 1_000_000) -> None:
    send_raw(settings, [(c.key, c.value) for c in chunk_extract(document, max_bytes)])


def table(settings: Settings, contract) -> pl.DataFrame:
    """The table's current state: rows the sink staged and nobody folded yet included (storage.current)."""
    return read_current(contract, settings.lake_uri)


@pytest.fixture()
def world(settings: Settings) -> Settings:
    create_topics(settings)
    write_register(settings.lake_uri, SCHOOLS)
    return settings


def test_valid_extracts_land_once_and_faults_are_quarantined_with_reasons(world: Settings):
    good = make_extract("100001", "3732001", DAY, pupils=5)
    faulty = make_extract("100002", "3732002", DAY, pupils=4, la_code=373, establishment=2002)
    faulty["pupils"][1]["upn"] = "A" + faulty["pupils"][1]["upn"][1:] if faulty["pupils"][1]["upn"][0] != "A" \
        else "B" + faulty["pupils"][1]["upn"][1:]
    faulty["pupils"][2]["sessions"][0]["code"] = "QQ"
    unknown = make_extract("999999", "3739999", DAY, pupils=2)
    send_extract(world, good)
    send_extract(world, faulty)
    send_extract(world, unknown)
    send_raw(world, [(b"100001", b"\xff\xfe not utf-8"), (b"100001", b"{not json")])
    run_worker(world)

    sessions = table(world, ATTENDANCE_SESSIONS)
    assert sessions.filter(pl.col("urn") == "100001").height == 10
    # pupil 1 rejected whole (2 marks), pupil 2 loses one mark: 8 - 2 - 1
    assert sessions.filter(pl.col("urn") == "100002").height == 5
    assert sessions.filter(pl.col("urn") == "999999").height == 0
    assert table(world, PUPILS).height == 5 + 3
    reasons = table(world, QUARANTINE).group_by("reason_code").len()
    found = dict(reasons.iter_rows())
    assert found.get("PUPIL_UPN_INVALID") == 1
    assert found.get("MARK_CODE_UNKNOWN") == 1
    assert found.get("MSG_UNKNOWN_URN") == 1
    assert found.get("MSG_NOT_UTF8") == 1 and found.get("MSG_NOT_JSON") == 1
    statuses = dict(table(world, EXTRACTS).select("urn", "status").iter_rows())
    assert statuses["100001"] == "complete" and statuses["100002"] == "complete"
    assert statuses["999999"] == "rejected"

    # A restart re-reads nothing already committed: no row doubled.
    before = {c.name: table(world, c).height for c in (ATTENDANCE_SESSIONS, PUPILS, QUARANTINE, EXTRACTS)}
    run_worker(world)
    after = {c.name: table(world, c).height for c in (ATTENDANCE_SESSIONS, PUPILS, QUARANTINE, EXTRACTS)}
    assert after == before


def test_amended_marks_replace_older_ones_and_a_late_older_extract_does_not(world: Settings):
    first = make_extract("100001", "3732001", DAY, pupils=2, generated_at=f"{DAY}T17:00:00+00:00")
    newer = make_extract("100001", "3732001", DAY, pupils=2, generated_at=f"{DAY}T19:00:00+00:00",
                         codes=("I", "I"))
    older_late = make_extract("100001", "3732001", DAY, pupils=2, generated_at=f"{DAY}T18:00:00+00:00",
                              codes=("O", "O"))
    send_extract(world, first)
    send_extract(world, newer)
    send_extract(world, older_late)
    run_worker(world)
    sessions = table(world, ATTENDANCE_SESSIONS)
    assert sessions.height == 4
    assert set(sessions["code"].to_list()) == {"I"}


def test_an_extract_is_invisible_until_all_chunks_arrive(world: Settings):
    document = make_extract("100001", "3732001", DAY, pupils=30)
    chunks = chunk_extract(document, 3_000)
    assert len(chunks) >= 3
    send_raw(world, [(c.key, c.value) for c in chunks[:-1]])
    run_worker(world)
    assert table(world, ATTENDANCE_SESSIONS).height == 0
    send_raw(world, [(chunks[-1].key, chunks[-1].value)])
    run_worker(world)
    assert table(world, ATTENDANCE_SESSIONS).height == 60
    assert dict(table(world, EXTRACTS).select("extract_id", "status").iter_rows())[document["extract_id"]] == "complete"


def test_an_opt_out_published_before_the_extract_wins(world: Settings):
    env = settings_env(world)
    done = subprocess.run([sys.executable, "-m", "attendance", "optout", "100002", "--by", "test"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    send_extract(world, make_extract("100002", "3732002", DAY, pupils=3, la_code=373, establishment=2002))
    send_extract(world, make_extract("100001", "3732001", DAY, pupils=3))
    faulty = make_extract("100002", "3732002", DAY + dt.timedelta(days=0), pupils=1, codes=("QQ", "QQ"),
                          generated_at=f"{DAY}T20:00:00+00:00")
    send_extract(world, faulty)
    run_worker(world)
    for contract in (ATTENDANCE_SESSIONS, PUPILS, QUARANTINE):
        frame = table(world, contract)
        assert frame.filter(pl.col("urn") == "100002").height == 0, contract.name
    assert table(world, ATTENDANCE_SESSIONS).filter(pl.col("urn") == "100001").height == 6
    audit = table(world, OPTOUT_AUDIT)
    assert audit.filter(pl.col("urn") == "100002")["pupils_dropped"].sum() == 4
    assert "upn" not in audit.columns

    done = subprocess.run([sys.executable, "-m", "attendance", "optin", "100002", "--by", "test"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    send_extract(world, make_extract("100002", "3732002", DAY, pupils=2, la_code=373, establishment=2002,
                                     generated_at=f"{DAY}T21:00:00+00:00"))
    run_worker(world)
    assert table(world, ATTENDANCE_SESSIONS).filter(pl.col("urn") == "100002").height == 4


def test_fields_outside_the_contract_are_not_stored(world: Settings, tmp_path: Path):
    send_extract(world, make_extract("100001", "3732001", DAY, pupils=2))
    run_worker(world)
    for contract in (ATTENDANCE_SESSIONS, PUPILS):
        assert "forename" not in table(world, contract).columns
    raw = orjson.dumps(table(world, PUPILS).to_dicts(), default=str)
    assert b"Not-in-contract" not in raw
