"""Destruction of pupil-level data on real Delta tables: opt-out purge, retention, and the proof."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from attendance.errors import UserFacingError
from storage import lake
from storage.destruction import apply_retention, purge_school, retention_cutoff, verify_destroyed
from storage.sink import DeltaSink, SinkBatch
from storage.tables import ATTENDANCE_SESSIONS, DESTRUCTION_LOG, PUPILS, QUARANTINE, STAGED_PUPILS, STAGED_SESSIONS

TOPIC = "attendance.extracts.v1"
GONE, KEPT = "100001", "100002"


def marks(urn: str, days: list[date], generated_at: datetime) -> pa.Table:
    rows = [(urn, f"U{urn}{p}", d, s) for p in range(3) for d in days for s in ("AM", "PM")]
    return pa.table(
        {
            "urn": [r[0] for r in rows],
            "upn": [r[1] for r in rows],
            "date": [r[2] for r in rows],
            "session": [r[3] for r in rows],
            "code": ["/"] * len(rows),
            "generated_at": pa.array([generated_at] * len(rows), pa.timestamp("us", tz="UTC")),
        }
    )


def roll(urn: str, generated_at: datetime) -> pa.Table:
    return pa.table(
        {
            "urn": [urn] * 3,
            "upn": [f"U{urn}{p}" for p in range(3)],
            "generated_at": pa.array([generated_at] * 3, pa.timestamp("us", tz="UTC")),
        }
    )


def quarantined(urn: str, offset: int, at: datetime) -> pa.Table:
    return pa.table(
        {
            "urn": [urn],
            "topic": [TOPIC],
            "partition": [0],
            "offset": [offset],
            "reason_code": ["bad_upn"],
            "severity": ["pupil"],
            "quarantined_at": [at],
        }
    )


PUPIL_LEVEL = {"attendance_sessions", "pupils", "quarantine", "staged_sessions", "staged_pupils"}


@pytest.fixture
def lake_uri(tmp_path: Path) -> str:
    uri = str(tmp_path / "lake")
    sink = DeltaSink(uri)
    at = datetime(2026, 11, 16, 16, tzinfo=UTC)
    offset = 0
    for urn in (GONE, KEPT):  # two batches per school, so each school's rows are spread over several files
        for days in ([date(2026, 11, 16)], [date(2026, 11, 17)]):
            sink.write_batch(
                SinkBatch(
                    sessions=marks(urn, days, at),
                    pupils=roll(urn, at),
                    quarantine=quarantined(urn, offset, at),
                    offsets={(TOPIC, 0): offset},
                )
            )
            offset += 1
    sink.fold()
    return uri


def rows_of(urn: str, lake_uri: str, contract=ATTENDANCE_SESSIONS, version: int | None = None) -> int:  # noqa: ANN001
    table = lake.read_table(contract, lake_uri, version=version)
    return sum(1 for u in table.column("urn").to_pylist() if u == urn)


def test_purge_removes_the_schools_rows_and_files_and_time_travel_cannot_read_them(lake_uri: str) -> None:
    version_before = DeltaTable(ATTENDANCE_SESSIONS.path(lake_uri)).version()
    assert rows_of(GONE, lake_uri) == 2 * 3 * 2  # 2 days x 3 pupils x 2 sessions

    records = purge_school(GONE, lake_uri, requested_by="dpo@example.org", reason="school opted out")

    by_table = {r.table_name: r for r in records}
    assert set(by_table) == PUPIL_LEVEL  # every pupil-level table, staging included
    assert (by_table["attendance_sessions"].rows_deleted, by_table["pupils"].rows_deleted) == (12, 3)
    assert by_table["quarantine"].rows_deleted == 2
    assert by_table["attendance_sessions"].files_removed >= 2
    assert by_table["attendance_sessions"].version_before == version_before
    assert by_table["attendance_sessions"].version_after > version_before
    for contract in (ATTENDANCE_SESSIONS, PUPILS, QUARANTINE):
        assert rows_of(GONE, lake_uri, contract) == 0
    assert rows_of(KEPT, lake_uri) == 12 and rows_of(KEPT, lake_uri, PUPILS) == 3  # other schools untouched
    with pytest.raises((FileNotFoundError, OSError)):
        rows_of(GONE, lake_uri, version=version_before)  # the old version loads, but its files are gone


def test_purge_writes_one_destruction_log_row_per_table(lake_uri: str) -> None:
    purge_school(GONE, lake_uri, requested_by="dpo@example.org", reason="school opted out")
    logged = lake.read_table(DESTRUCTION_LOG, lake_uri).to_pylist()
    assert sorted(r["table_name"] for r in logged) == sorted(PUPIL_LEVEL)
    assert {(r["action"], r["urn"], r["requested_by"], r["reason"]) for r in logged} == {
        ("purge", GONE, "dpo@example.org", "school opted out")
    }
    assert len({r["destruction_id"] for r in logged}) == 1
    assert {r["predicate"] for r in logged} == {f"urn = '{GONE}'"}
    assert sum(r["rows_deleted"] for r in logged) == 12 + 3 + 2


def test_verify_destroyed_is_false_before_and_true_after_a_purge(lake_uri: str) -> None:
    before = verify_destroyed(GONE, lake_uri)
    assert not before.destroyed
    assert before.rows_remaining["attendance_sessions"] == 12 and before.files_remaining

    purge_school(GONE, lake_uri, requested_by="dpo", reason="opt-out")
    after = verify_destroyed(GONE, lake_uri)
    assert after.destroyed, after
    assert after.files_scanned > 0 and set(after.rows_remaining) == PUPIL_LEVEL
    assert not verify_destroyed(KEPT, lake_uri).destroyed


def test_verify_destroyed_finds_a_file_no_version_references(lake_uri: str) -> None:
    purge_school(GONE, lake_uri, requested_by="dpo", reason="opt-out")
    # A Parquet file left by a write that never committed, holding the school's marks.
    orphan = Path(ATTENDANCE_SESSIONS.path(lake_uri)) / "date=2026-11-16" / "part-orphan.parquet"
    pq.write_table(marks(GONE, [date(2026, 11, 16)], datetime(2026, 11, 16, tzinfo=UTC)), orphan)
    result = verify_destroyed(GONE, lake_uri)
    assert not result.destroyed and result.files_remaining == [str(orphan)]
    assert not any(result.rows_remaining.values())  # invisible to queries, still there on storage


def test_purge_rejects_a_malformed_urn(lake_uri: str) -> None:
    with pytest.raises(UserFacingError, match="6 digits"):
        purge_school("1' OR '1'='1", lake_uri, requested_by="dpo", reason="opt-out")


def test_no_upn_of_a_purged_school_stays_in_the_delta_log(lake_uri: str) -> None:
    purge_school(GONE, lake_uri, requested_by="dpo", reason="opt-out")
    for contract in (ATTENDANCE_SESSIONS, PUPILS, QUARANTINE):
        log_dir = Path(contract.path(lake_uri)) / "_delta_log"
        text = "".join(p.read_text() for p in log_dir.glob("*.json"))
        assert f"U{GONE}" not in text  # statistics are restricted to non-personal columns


@pytest.mark.parametrize(
    ("today", "years", "cutoff"),
    [
        (date(2026, 11, 20), 3, date(2023, 8, 31)),  # 2022/23 data was kept until 31 Aug 2026
        (date(2026, 8, 31), 3, date(2022, 8, 31)),  # 31 Aug 2026 is still within 2022/23's retention
        (date(2026, 9, 1), 3, date(2023, 8, 31)),  # ... and the next day it has expired
        (date(2026, 11, 20), 0, date(2026, 8, 31)),  # zero years: data of finished academic years
    ],
)
def test_retention_cutoff_is_the_end_of_the_academic_year_plus_the_retention_years(
    today: date, years: int, cutoff: date
) -> None:
    assert retention_cutoff(today, years) == cutoff


def test_apply_retention_destroys_expired_academic_years_only(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    sink = DeltaSink(uri)
    old = datetime(2023, 7, 1, tzinfo=UTC)  # academic year 2022/23
    new = datetime(2023, 9, 10, tzinfo=UTC)  # academic year 2023/24
    sink.write_batch(
        SinkBatch(
            sessions=pa.concat_tables(
                [
                    marks(GONE, [date(2023, 7, 1), date(2023, 8, 31)], old),
                    marks(KEPT, [date(2023, 9, 1)], new),
                ]
            ),
            pupils=pa.concat_tables([roll(GONE, old), roll(KEPT, new)]),
            offsets={(TOPIC, 0): 0},
        )
    )
    sink.fold()
    version_before = DeltaTable(ATTENDANCE_SESSIONS.path(uri)).version()

    records = apply_retention(uri, today=date(2026, 11, 20), retention_years=3)

    kept = lake.read_table(ATTENDANCE_SESSIONS, uri)
    assert sorted({d.isoformat() for d in kept.column("date").to_pylist()}) == ["2023-09-01"]
    assert lake.read_table(PUPILS, uri).column("urn").to_pylist() == [KEPT] * 3
    by_table = {r.table_name: r for r in records}
    assert by_table["attendance_sessions"].rows_deleted == 3 * 2 * 2
    assert by_table["pupils"].rows_deleted == 3
    assert {r.action for r in records} == {"retention"}
    assert len(lake.read_table(DESTRUCTION_LOG, uri)) == len(records)
    with pytest.raises((FileNotFoundError, OSError)):
        lake.read_table(ATTENDANCE_SESSIONS, uri, version=version_before)


def test_retention_predicates_per_column_type() -> None:
    from storage.destruction import retention_predicate
    from storage.tables import TableContract, Zone

    contract = TableContract(
        name="example",
        zone=Zone.RESTRICTED,
        schema=pa.schema(
            [
                ("date", pa.date32()),
                ("academic_year_start", pa.int32()),
                ("seen", pa.timestamp("us", tz="UTC")),
            ]
        ),
        partition_by=(),
        key=(),
        purpose="",
        pupil_level=True,
    )
    cutoff = date(2023, 8, 31)
    assert retention_predicate(contract, "date", cutoff) == "date <= '2023-08-31'"
    assert (
        retention_predicate(contract, "academic_year_start", cutoff) == "academic_year_start <= 2022"
    )  # 2022/23
    # the academic year ends at midnight in England: 1 September 00:00 BST is 31 August 23:00 UTC
    assert retention_predicate(contract, "seen", cutoff) == "seen < '2023-08-31T23:00:00Z'"


def test_purge_destroys_rows_still_staged_for_a_fold_and_a_later_fold_cannot_bring_them_back(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri)
    amended_at = datetime(2026, 11, 18, 16, tzinfo=UTC)
    sink.write_batch(SinkBatch(sessions=marks(GONE, [date(2026, 11, 16)], amended_at),
                               pupils=roll(GONE, amended_at), offsets={(TOPIC, 0): 10}))
    assert rows_of(GONE, lake_uri, STAGED_SESSIONS) == 6 and rows_of(GONE, lake_uri, STAGED_PUPILS) == 3

    purge_school(GONE, lake_uri, requested_by="dpo@example.org", reason="school opted out")
    sink.fold()

    for contract in (ATTENDANCE_SESSIONS, PUPILS, STAGED_SESSIONS, STAGED_PUPILS):
        assert rows_of(GONE, lake_uri, contract) == 0, contract.name
    assert verify_destroyed(GONE, lake_uri).destroyed
