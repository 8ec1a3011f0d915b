"""Routine maintenance on real Delta tables: compaction, checkpoint, vacuum within the retention window."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from attendance.errors import UserFacingError
from storage import lake
from storage.maintenance import maintain
from storage.sink import DeltaSink, SinkBatch
from storage.tables import ATTENDANCE_SESSIONS

TOPIC = "attendance.extracts.v1"


def one_school_day(urn: str, day: date) -> pa.Table:
    return pa.table(
        {
            "urn": [urn] * 4,
            "upn": [f"U{urn}{i}" for i in range(4)],
            "date": [day] * 4,
            "session": ["AM", "PM"] * 2,
            "code": ["/"] * 4,
            "generated_at": pa.array(
                [datetime(2026, 11, 16, 16, tzinfo=UTC)] * 4, pa.timestamp("us", tz="UTC")
            ),
        }
    )


@pytest.fixture
def lake_uri(tmp_path: Path) -> str:
    uri = str(tmp_path / "lake")
    sink = DeltaSink(uri)
    for offset in range(12):  # twelve small batches: twelve small files over two day partitions
        day = date(2026, 11, 16 + offset % 2)
        sink.write_batch(
            SinkBatch(sessions=one_school_day(f"{100000 + offset}", day), offsets={(TOPIC, 0): offset})
        )
    return uri


def test_maintain_compacts_small_files_without_changing_rows(lake_uri: str) -> None:
    table_path = ATTENDANCE_SESSIONS.path(lake_uri)
    files_before = len(DeltaTable(table_path).file_uris())
    rows_before = lake.read_table(ATTENDANCE_SESSIONS, lake_uri).sort_by(
        [("urn", "ascending"), ("upn", "ascending")]
    )

    report = maintain(lake_uri)

    [sessions] = [t for t in report.tables if t.table == "attendance_sessions"]
    assert files_before == 12
    assert sessions.files_after == 2  # one file per day partition
    assert sessions.compaction_skipped is None and sessions.files_compacted_away == 12
    after = lake.read_table(ATTENDANCE_SESSIONS, lake_uri).sort_by(
        [("urn", "ascending"), ("upn", "ascending")]
    )
    assert after.equals(rows_before)
    assert DeltaSink(lake_uri).committed_offset(TOPIC, 0) == 11  # compaction keeps the offsets


def test_maintain_writes_a_checkpoint_and_keeps_recent_versions_readable(lake_uri: str) -> None:
    table_path = ATTENDANCE_SESSIONS.path(lake_uri)
    version_before = DeltaTable(table_path).version()

    report = maintain(lake_uri, retention_hours=168)

    [sessions] = [t for t in report.tables if t.table == "attendance_sessions"]
    assert (
        Path(table_path) / "_delta_log" / f"{sessions.checkpoint_version:020d}.checkpoint.parquet"
    ).exists()
    assert sessions.files_vacuumed == 0  # the compacted-away files are younger than the window
    old = lake.read_table(ATTENDANCE_SESSIONS, lake_uri, version=version_before)
    assert old.num_rows == 12 * 4  # time travel within the window still works
    assert "pupils" in report.missing  # tables never written are reported, not created


def test_maintain_refuses_a_zero_retention_window(lake_uri: str) -> None:
    with pytest.raises(UserFacingError, match="at least 1 hour"):
        maintain(lake_uri, retention_hours=0)


def _amend_repeatedly(lake_uri: str, rounds: int) -> None:
    sink = DeltaSink(lake_uri)
    for number in range(rounds):
        amended = (
            one_school_day("100000", date(2026, 11, 16))
            .set_column(4, "code", pa.array([str(number)] * 4))
            .set_column(
                5,
                "generated_at",
                pa.array([datetime(2026, 11, 17, 0, number, tzinfo=UTC)] * 4, pa.timestamp("us", tz="UTC")),
            )
        )
        sink.write_batch(SinkBatch(sessions=amended, offsets={(TOPIC, 1): number}))
        sink.fold()  # folds (MERGEs into the day) race maintenance too


def test_maintenance_while_the_sink_writes_loses_nothing(lake_uri: str) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writer = context.Process(target=_amend_repeatedly, args=(lake_uri, 15))
    writer.start()
    while writer.is_alive():
        maintain(lake_uri)  # compactions that conflict are retried or skipped, never forced
    writer.join(timeout=120)
    assert writer.exitcode == 0

    rows = lake.read_table(ATTENDANCE_SESSIONS, lake_uri)
    assert rows.num_rows == 12 * 4
    amended = [r["code"] for r in rows.to_pylist() if r["urn"] == "100000"]
    assert amended == ["14"] * 4  # the last amendment of the writer
    assert DeltaSink(lake_uri).committed_offset(TOPIC, 1) == 14
