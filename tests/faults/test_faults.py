"""The fault suite: a broker restart mid-stream, poison messages of every kind, duplicates and reordering,
an opt-out racing its school's extract, and an unwritable lake. After each, the tables hold exactly what
they should and the worker is still running or restarts cleanly. Bounded in time and count; loopback only."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import polars as pl
import pytest
from kafka import KafkaProducer

from attendance import broker
from attendance.settings import Settings
from ingest.producer import read_extract_file, send_files
from storage.tables import ATTENDANCE_SESSIONS, OPTOUT_AUDIT, QUARANTINE
from tests.conftest import settings_env
from tests.faults.harness import (
    Sender,
    assert_exactly_expected,
    kill,
    make_world,
    read,
    run_until_drained,
    start_worker,
    wait,
    worker_env,
    worker_log,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def raw_producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", compression_type="zstd",
                         max_request_size=12_000_000)


def test_broker_stopped_and_restarted_mid_stream(settings: Settings, tmp_path: Path,
                                                  kafka_broker_state: Path | None):
    if kafka_broker_state is None:
        pytest.skip("an external cluster is in use: the test restarts only a broker it started")
    world = make_world(settings, tmp_path / "world", schools=20, days=2)
    first, second = world.files(world.days[0]), world.files(world.days[1])
    Sender(settings, first, pause_s=0).run()
    worker = start_worker(settings, ATTENDANCE_LOG_LEVEL="INFO")
    try:
        time.sleep(8)
        broker.kill(Settings(state_dir=kafka_broker_state), state_dir=kafka_broker_state)
        time.sleep(3)
        broker.start(Settings(state_dir=kafka_broker_state), state_dir=kafka_broker_state)
        Sender(settings, second, pause_s=0).run()
        time.sleep(10)
        assert worker.poll() is None, "the worker died when the broker went away"
        worker.send_signal(signal.SIGTERM)
        assert wait(worker, 60) == 0, worker_log(worker)
    finally:
        kill(worker)
    run_until_drained(settings)
    assert_exactly_expected(settings, first + second)


def _poison(good: dict) -> list[tuple[str, bytes]]:
    header = {k: v for k, v in good.items() if k != "pupils"}
    header.update(chunk_index=0, chunk_count=1)
    ids = iter(f"00000000-0000-4000-8000-00000000000{n}" for n in range(10))
    nested: bytes = b"[" * 100_000 + b"]" * 100_000
    wrong_upns = ["", "x", "A" * 13, "B80120000500", "b801200005001", 801200005001, None, ["B801200005001"],
                  "B80120000500I", "Ｂ801200005001"]
    pupils_bad_upn = [dict(good["pupils"][0], upn=value) for value in wrong_upns]
    return [
        ("not JSON", b"{this is not json"),
        ("not UTF-8", b"\xff\xfe\x00garbage"),
        ("10 MB", orjson.dumps({**header, "extract_id": next(ids), "pupils": [{"padding": "x" * 10_000_000}]})),
        ("deeply nested", b'{"pupils": ' + nested + b"}"),
        ("wrong types", orjson.dumps({**header, "extract_id": next(ids), "chunk_index": "zero", "pupils": "none"})),
        ("huge numbers", orjson.dumps({**header, "extract_id": next(ids), "pupil_count": 1, "pupils": []}).replace(
            b'"pupil_count":1', b'"pupil_count":' + b"9" * 400)),
        ("UPN shapes", orjson.dumps({**header, "extract_id": next(ids),
                                     "pupil_count": len(pupils_bad_upn), "pupils": pupils_bad_upn})),
    ]


def test_poison_messages_of_every_kind_are_quarantined_and_nothing_else_is_lost(settings: Settings,
                                                                               tmp_path: Path):
    world = make_world(settings, tmp_path / "world", schools=8, days=1)
    files = world.files()
    producer = raw_producer(settings)
    poison = _poison(read_extract_file(files[0]))
    offsets = [producer.send(settings.topic_extracts, key=b"100000", value=value).get(timeout=30).offset
               for _, value in poison]
    send_files(files, settings, settings.kafka_bootstrap)
    run_until_drained(settings)
    assert_exactly_expected(settings, files)
    quarantine = read(settings, QUARANTINE).filter(pl.col("offset").is_in(offsets))
    judged = set(quarantine["offset"].to_list())
    for (kind, _), offset in zip(poison, offsets, strict=True):
        assert offset in judged, f"poison message '{kind}' was dropped without a quarantine row"
    upn_rows = quarantine.filter(pl.col("offset") == offsets[-1])
    assert upn_rows.filter(pl.col("reason_code").is_in(["PUPIL_UPN_INVALID", "PUPIL_CONTRACT"])).height == 10


def test_the_same_extract_twice_and_an_older_after_a_newer_store_each_mark_once(settings: Settings,
                                                                                 tmp_path: Path):
    world = make_world(settings, tmp_path / "world", schools=6, days=2)
    files = world.files()
    send_files(files, settings, settings.kafka_bootstrap)
    send_files(files, settings, settings.kafka_bootstrap)  # everything again
    send_files(list(reversed(world.files(world.days[0]))), settings, settings.kafka_bootstrap)  # old after new
    run_until_drained(settings)
    assert_exactly_expected(settings, files)


def test_an_opt_out_racing_its_schools_extract_wins_when_published_first(settings: Settings, tmp_path: Path):
    world = make_world(settings, tmp_path / "world", schools=6, days=1)
    files = world.files()
    target = files[0]
    urn = read_extract_file(target)["urn"]
    worker = start_worker(settings)
    try:
        time.sleep(6)
        optout = subprocess.run([sys.executable, "-m", "attendance", "optout", urn, "--by", "fault-test"],
                                env=settings_env(settings), capture_output=True, text=True, timeout=60)
        assert optout.returncode == 0, optout.stderr
        # Published after the opt-out, while the worker runs: must be dropped whichever worker judges it.
        sender = threading.Thread(target=send_files, args=(files, settings, settings.kafka_bootstrap))
        sender.start()
        sender.join(timeout=60)
        time.sleep(6)
        worker.send_signal(signal.SIGTERM)
        assert wait(worker, 60) == 0, worker_log(worker)
    finally:
        kill(worker)
    run_until_drained(settings)
    for contract in (ATTENDANCE_SESSIONS, QUARANTINE):
        assert read(settings, contract).filter(pl.col("urn") == urn).height == 0, contract.name
    assert read(settings, OPTOUT_AUDIT).filter(pl.col("urn") == urn).height == 1
    others = [f for f in files if f != target]
    assert read(settings, ATTENDANCE_SESSIONS).height == sum(
        len(p["sessions"]) for f in others for p in read_extract_file(f)["pupils"])


def test_an_unwritable_lake_stops_the_worker_keeps_offsets_and_resumes_without_loss(settings: Settings,
                                                                                     tmp_path: Path):
    world = make_world(settings, tmp_path / "world", schools=8, days=1)
    files = world.files()
    send_files(files[:4], settings, settings.kafka_bootstrap)
    run_until_drained(settings)
    log_dir = Path(ATTENDANCE_SESSIONS.path(settings.lake_uri)) / "_delta_log"
    moved = log_dir.with_name("_delta_log.moved")
    log_dir.rename(moved)
    log_dir.write_text("the disk is unwritable")  # a file where the log directory must be: every commit fails
    send_files(files[4:], settings, settings.kafka_bootstrap)
    try:
        env = worker_env(settings, ATTENDANCE_WORKER_MAX_CONSECUTIVE_FAILURES="2")
        done = subprocess.run([sys.executable, "-m", "attendance", "worker", "--until-drained"], env=env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode != 0, "the worker must stop accepting when it cannot write"
    finally:
        log_dir.unlink()
        moved.rename(log_dir)
    run_until_drained(settings)
    assert_exactly_expected(settings, files)
