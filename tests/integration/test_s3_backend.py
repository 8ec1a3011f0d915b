"""The Delta sink on an S3-compatible store (moto's S3 server), with the storage options from storage.lake."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from storage import lake
from storage.destruction import purge_school, verify_destroyed
from storage.sink import DeltaSink, SinkBatch
from storage.tables import ATTENDANCE_SESSIONS, PUPILS, STAGED_SESSIONS

pytestmark = pytest.mark.integration

TOPIC = "attendance.extracts.v1"
DAY = date(2026, 11, 16)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server in its own process. (In-process ``ThreadedMotoServer`` deadlocks: deltalake's
    QueryBuilder holds the GIL while it waits for the server thread's response.)"""
    port = _free_port()
    log_file = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto_server did not start on port {port}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        log_file.close()


@pytest.fixture
def s3_lake(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, str]]:
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "eu-west-2",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    bucket = "attendance-lake"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-2")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    lake_uri = f"s3://{bucket}/lake-{datetime.now(UTC):%H%M%S%f}"
    return lake_uri, lake.storage_options(lake_uri=lake_uri)


def marks(upns: list[str], code: str, generated_at: datetime) -> pa.Table:
    n = len(upns)
    return pa.table(
        {
            "urn": ["100001"] * n,
            "upn": upns,
            "date": [DAY] * n,
            "session": ["AM"] * n,
            "code": [code] * n,
            "generated_at": pa.array([generated_at] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def test_storage_options_ask_for_conditional_puts_on_s3(s3_lake: tuple[str, dict[str, str]]) -> None:
    _, options = s3_lake
    assert options["aws_conditional_put"] == "etag"
    assert options["AWS_ALLOW_HTTP"] == "true"
    assert "AWS_S3_ALLOW_UNSAFE_RENAME" not in options
    assert lake.storage_options(lake_uri="./lake") == {}


def test_write_amend_and_offset_round_trip_on_s3(s3_lake: tuple[str, dict[str, str]]) -> None:
    lake_uri, options = s3_lake
    ten, eleven = datetime(2026, 11, 16, 10, tzinfo=UTC), datetime(2026, 11, 16, 11, tzinfo=UTC)
    sink = DeltaSink(lake_uri, options)
    assert sink.committed_offset(TOPIC, 0) is None

    sink.write_batch(SinkBatch(sessions=marks(["A1", "A2"], "/", ten), offsets={(TOPIC, 0): 10}))
    sink.write_batch(SinkBatch(sessions=marks(["A1"], "N", eleven), offsets={(TOPIC, 0): 11}))  # amendment
    replay = DeltaSink(lake_uri, options).write_batch(
        SinkBatch(sessions=marks(["A1"], "N", eleven), offsets={(TOPIC, 0): 11})
    )

    assert replay.replay_skipped
    assert DeltaSink(lake_uri, options).committed_offset(TOPIC, 0) == 11
    folded = sink.fold()  # the amendment was staged; the fold MERGEs it and empties staging on S3 too
    assert (folded.sessions.changed, folded.sessions.removed) == (1, 1)
    assert lake.read_table(STAGED_SESSIONS, lake_uri, storage_options=options).num_rows == 0
    rows = lake.read_table(ATTENDANCE_SESSIONS, lake_uri, storage_options=options).sort_by("upn").to_pylist()
    assert [(r["upn"], r["code"], r["generated_at"]) for r in rows] == [("A1", "N", eleven), ("A2", "/", ten)]


def test_purge_and_verification_on_s3(s3_lake: tuple[str, dict[str, str]]) -> None:
    lake_uri, options = s3_lake
    at = datetime(2026, 11, 16, 10, tzinfo=UTC)
    DeltaSink(lake_uri, options).write_batch(
        SinkBatch(
            sessions=marks(["A1"], "/", at),
            pupils=pa.table({"urn": ["100001"], "upn": ["A1"], "generated_at": [at]}),
            offsets={(TOPIC, 0): 1},
        )
    )
    assert not verify_destroyed("100001", lake_uri, options).destroyed
    purge_school("100001", lake_uri, options, requested_by="test", reason="opt-out")
    result = verify_destroyed("100001", lake_uri, options)
    assert result.destroyed and result.files_scanned == 0
    assert lake.read_table(PUPILS, lake_uri, storage_options=options).num_rows == 0
