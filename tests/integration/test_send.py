"""The contractor's producer against the real broker: what is sent is what is read back, and every
refusal path refuses before anything of the file is sent."""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from attendance.errors import UserFacingError
from attendance.settings import Settings
from attendance.topics import create_topics
from ingest.producer import chunk_extract, read_extract_file, send_files
from tests.conftest import settings_env
from tests.extract_factory import make_extract

pytestmark = pytest.mark.integration


def read_all(settings: Settings) -> list[tuple[int, bytes, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    partitions = [TopicPartition(settings.topic_extracts, p) for p in consumer.partitions_for_topic(
        settings.topic_extracts)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    end = consumer.end_offsets(partitions)
    records: list[tuple[int, bytes, bytes]] = []
    deadline = time.monotonic() + 30
    while any(consumer.position(tp) < end[tp] for tp in partitions) and time.monotonic() < deadline:
        for tp_records in consumer.poll(timeout_ms=500).values():
            records.extend((r.partition, r.key, r.value) for r in tp_records)
    consumer.close()
    return records


def write(path: Path, document: object, gz: bool = False) -> Path:
    data = orjson.dumps(document)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_sent_extract_reads_back_identical_message_by_message(settings: Settings, tmp_path: Path):
    settings = settings.model_copy(update={"max_message_bytes": 4_000})  # force several chunks
    create_topics(settings)
    document = make_extract(pupils=40)
    path = write(tmp_path / "100001.json.gz", document, gz=True)
    summary = send_files([tmp_path], settings, settings.kafka_bootstrap)
    assert summary.ok and summary.files_sent == 1 and summary.pupils_sent == 40
    expected = chunk_extract(read_extract_file(path), settings.max_message_bytes)
    assert len(expected) > 2 and all(len(c.value) <= settings.max_message_bytes for c in expected)
    received = read_all(settings)
    assert [(key, value) for _, key, value in received] == [(c.key, c.value) for c in expected]
    assert len({partition for partition, _, _ in received}) == 1  # one school's chunks on one partition
    pupils = [p for _, _, value in received for p in orjson.loads(value)["pupils"]]
    assert pupils == document["pupils"]


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("broken.json", b'{"schema_version": "1", "urn": ', "not valid UTF-8 JSON"),
        ("latin1.json", '{"x": "caf\xe9"}'.encode("latin-1"), "not valid UTF-8 JSON"),
        ("array.json", b"[1, 2]", "expected a JSON object"),
        ("nogz.json.gz", b"not gzip at all", "cannot be read"),
    ],
)
def test_unreadable_files_are_refused_and_nothing_is_sent(settings, tmp_path, name, content, needle):
    create_topics(settings)
    (tmp_path / name).write_bytes(content)
    write(tmp_path / "good.json", make_extract())
    summary = send_files([tmp_path], settings, settings.kafka_bootstrap)
    assert [Path(f).name for f, _ in summary.refused] == [name]
    assert needle in summary.refused[0][1]
    assert summary.files_sent == 1 and len(read_all(settings)) == 1


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("urn"), "urn"),
        (lambda d: d.update(urn=100001), "urn"),
        (lambda d: d.update(extract_date=20261117), "extract_date"),
        (lambda d: d.update(generated_at="yesterday"), "generated_at"),
        (lambda d: d.update(pupils="none"), "pupils"),
        (lambda d: d["pupils"][0].update(sessions={"AM": "/"}), "pupils.0.sessions"),
    ],
)
def test_contract_violations_are_refused_naming_the_field(settings, tmp_path, mutate, needle):
    create_topics(settings)
    document = make_extract()
    mutate(document)
    write(tmp_path / "bad.json", document)
    summary = send_files([tmp_path / "bad.json"], settings, settings.kafka_bootstrap)
    assert len(summary.refused) == 1 and needle in summary.refused[0][1]
    assert summary.files_sent == 0 and read_all(settings) == []


def test_record_level_faults_are_sent_for_the_stream_to_judge(settings, tmp_path):
    create_topics(settings)
    document = make_extract(codes=("QQ", "/"))
    document["pupils"][0]["upn"] = "A000000000000"
    write(tmp_path / "faulty.json", document)
    summary = send_files([tmp_path], settings, settings.kafka_bootstrap)
    assert summary.ok and len(read_all(settings)) == 1


def test_a_pupil_too_large_for_any_message_is_refused(settings, tmp_path):
    settings = settings.model_copy(update={"max_message_bytes": 1_500})
    create_topics(settings)
    document = make_extract(pupils=1)
    document["pupils"][0]["sessions"] *= 40
    write(tmp_path / "huge.json", document)
    summary = send_files([tmp_path], settings, settings.kafka_bootstrap)
    assert "over the" in summary.refused[0][1] and read_all(settings) == []


def test_a_missing_path_is_a_clear_error(settings, tmp_path):
    with pytest.raises(UserFacingError, match="no such file"):
        send_files([tmp_path / "nope"], settings, settings.kafka_bootstrap)


def test_a_broker_that_is_down_gives_a_clear_error_within_seconds(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{port}", connect_timeout_s=3, delivery_timeout_s=5)
    write(tmp_path / "x.json", make_extract())
    started = time.monotonic()
    with pytest.raises(UserFacingError, match="cannot reach Kafka"):
        send_files([tmp_path], settings, settings.kafka_bootstrap)
    assert time.monotonic() - started < 20


def test_cli_exit_code_is_non_zero_when_a_file_is_refused(settings, tmp_path):
    create_topics(settings)
    write(tmp_path / "good.json", make_extract())
    (tmp_path / "bad.json").write_bytes(b"{")
    done = subprocess.run([sys.executable, "-m", "attendance", "send", "--no-progress", str(tmp_path)],
                          env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "refused" in done.stderr and "bad.json" in done.stderr
    assert "sent 1 extracts" in done.stdout


def test_a_generated_day_reads_back_identical_message_by_message(settings: Settings, tmp_path: Path):
    import datetime as dt

    from ingest.generate import generate

    create_topics(settings)
    generate(tmp_path / "gen", schools=3, start_date=dt.date(2026, 11, 16), days=1, seed=5)
    files = sorted((tmp_path / "gen" / "extracts").rglob("*.json*"))
    summary = send_files([tmp_path / "gen" / "extracts"], settings, settings.kafka_bootstrap)
    assert summary.ok and summary.files_sent == len(files) == 3
    limit = settings.max_message_bytes
    expected = [(c.key, c.value) for f in files for c in chunk_extract(read_extract_file(f), limit)]
    received = [(key, value) for _, key, value in read_all(settings)]
    assert sorted(received) == sorted(expected)  # partitions interleave; within a school order is kept
    by_school: dict[bytes, list[bytes]] = {}
    for key, value in received:
        by_school.setdefault(key, []).append(value)
    for key, values in by_school.items():
        assert values == [v for k, v in expected if k == key]
