"""The Delta sink against real Delta tables on disk: amendments, exactly-once offsets, replays, races."""

from __future__ import annotations

import json
import multiprocessing
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from storage import lake
from storage.sink import PUPIL_FOLD_RANGES, DeltaSink, FoldCount, SinkBatch, dedupe_newest, fold_ranges
from storage.tables import (
    ATTENDANCE_SESSIONS,
    EXTRACTS,
    OPTOUT_AUDIT,
    PUPILS,
    QUARANTINE,
    SESSION_SCHOOL_DAYS,
    STAGED_EXTRACTS,
    STAGED_PUPILS,
    STAGED_SESSIONS,
)

TOPIC = "attendance.extracts.v1"
DAY = date(2026, 11, 16)
NINE = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)
TEN = NINE + timedelta(hours=1)
ELEVEN = NINE + timedelta(hours=2)


def sessions(rows: list[tuple[str, str, date, str, str, datetime]]) -> pa.Table:
    """(urn, upn, date, session, code, generated_at) -> session rows."""
    urn, upn, day, session, code, generated = (list(column) for column in zip(*rows, strict=True))
    return pa.table(
        {
            "urn": urn,
            "upn": upn,
            "date": day,
            "session": session,
            "code": code,
            "is_present": [c == "/" for c in code],
            "extract_id": [f"x-{g:%H}" for g in generated],
            "generated_at": pa.array(generated, pa.timestamp("us", tz="UTC")),
        }
    )


def pupils(rows: list[tuple[str, str, str, datetime]]) -> pa.Table:
    """(urn, upn, sen_provision, generated_at) -> pupil rows."""
    urn, upn, sen, generated = (list(column) for column in zip(*rows, strict=True))
    return pa.table(
        {
            "urn": urn,
            "upn": upn,
            "sen_provision": sen,
            "extract_id": [f"x-{g:%H}" for g in generated],
            "generated_at": pa.array(generated, pa.timestamp("us", tz="UTC")),
        }
    )


def current_marks(lake_uri: str) -> dict[tuple[str, str, str, str], tuple[str, datetime]]:
    table = lake.read_table(ATTENDANCE_SESSIONS, lake_uri)
    return {
        (r["urn"], r["upn"], r["date"].isoformat(), r["session"]): (r["code"], r["generated_at"])
        for r in table.to_pylist()
    }


def row_counts(lake_uri: str) -> dict[str, int]:
    return {
        c.name: lake.read_table(c, lake_uri).num_rows
        for c in (ATTENDANCE_SESSIONS, PUPILS, EXTRACTS, QUARANTINE, OPTOUT_AUDIT, STAGED_SESSIONS, STAGED_PUPILS,
                  STAGED_EXTRACTS)
    }


@pytest.fixture
def lake_uri(tmp_path: Path) -> str:
    return str(tmp_path / "lake")


def test_newest_generated_at_wins_and_a_late_older_extract_never_overwrites(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri)
    sink.write_batch(
        SinkBatch(
            sessions=sessions([("100001", "A1", DAY, "AM", "/", TEN), ("100001", "A2", DAY, "AM", "/", TEN)]),
            offsets={(TOPIC, 0): 1},
        )
    )
    # An amendment (newer) changes A1; a late extract taken earlier (09:00) tries to change both, once before
    # the amendment is folded and once after.
    sink.write_batch(
        SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "N", ELEVEN)]), offsets={(TOPIC, 0): 2})
    )
    older = [("100001", "A1", DAY, "AM", "U", NINE), ("100001", "A2", DAY, "AM", "O", NINE)]
    late = SinkBatch(sessions=sessions(older), offsets={(TOPIC, 0): 3})
    sink.write_batch(late)
    sink.fold()
    sink.write_batch(
        SinkBatch(
            sessions=sessions(
                [("100001", "A1", DAY, "AM", "U", NINE), ("100001", "A2", DAY, "AM", "O", NINE)]
            ),
            offsets={(TOPIC, 0): 4},
        )
    )
    sink.fold()

    assert current_marks(lake_uri) == {
        ("100001", "A1", DAY.isoformat(), "AM"): ("N", ELEVEN),
        ("100001", "A2", DAY.isoformat(), "AM"): ("/", TEN),
    }
    assert sink.committed_offset(TOPIC, 0) == 4  # the no-op batch still advanced the offset
    assert row_counts(lake_uri)["staged_sessions"] == 0  # the fold removed what it folded


def test_duplicates_within_a_batch_keep_the_newest_row(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri)
    sink.write_batch(
        SinkBatch(
            sessions=sessions(
                [
                    ("100001", "A1", DAY, "AM", "/", NINE),
                    ("100001", "A1", DAY, "AM", "L", ELEVEN),
                    ("100001", "A1", DAY, "AM", "N", TEN),
                    ("100001", "A1", DAY, "PM", "/", NINE),
                ]
            ),
            offsets={(TOPIC, 0): 0},
        )
    )
    assert current_marks(lake_uri) == {
        ("100001", "A1", DAY.isoformat(), "AM"): ("L", ELEVEN),
        ("100001", "A1", DAY.isoformat(), "PM"): ("/", NINE),
    }


def test_dedupe_newest_keeps_the_last_row_on_equal_timestamps() -> None:
    data = pa.table({"k": ["a", "b", "a", "a"], "t": [1, 5, 3, 3], "v": ["first", "only", "second", "third"]})
    kept = dedupe_newest(data, ("k",), "t").sort_by("k").to_pylist()
    assert kept == [{"k": "a", "t": 3, "v": "third"}, {"k": "b", "t": 5, "v": "only"}]


def full_batch(offset: int) -> SinkBatch:
    return SinkBatch(
        sessions=sessions([("100001", "A1", DAY, "AM", "/", TEN), ("100002", "B1", DAY, "AM", "N", TEN)]),
        pupils=pupils([("100001", "A1", "N", TEN), ("100002", "B1", "K", TEN)]),
        extracts=pa.table(
            {
                "extract_id": ["e1"],
                "urn": ["100001"],
                "status": ["complete"],
                "pupils_accepted": [1],
                "first_seen_at": [TEN],
                "last_seen_at": [TEN],
            }
        ),
        quarantine=pa.table(
            {
                "topic": [TOPIC, TOPIC],
                "partition": [0, 0],
                "offset": [7, 7],
                "pupil_position": [None, 3],
                "reason_code": ["bad_json", "bad_upn"],
                "severity": ["message", "pupil"],
                "quarantined_at": [TEN, TEN],
            }
        ),
        optout_audit=pa.table(
            {"urn": ["100009"], "extract_id": ["e9"], "pupils_dropped": [30], "dropped_at": [TEN]}
        ),
        offsets={(TOPIC, 0): offset, (TOPIC, 1): offset + 100},
    )


def test_replaying_the_same_batch_changes_nothing(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri)
    first = sink.write_batch(full_batch(41))
    sink.fold()
    counts = row_counts(lake_uri)
    written = (ATTENDANCE_SESSIONS, PUPILS, EXTRACTS, STAGED_PUPILS, STAGED_SESSIONS, STAGED_EXTRACTS)
    versions = {c.name: DeltaTable(c.path(lake_uri)).version() for c in written}

    replay = DeltaSink(lake_uri).write_batch(full_batch(41))  # e.g. a new worker after a crash

    assert not first.replay_skipped and replay.replay_skipped
    assert counts == {
        "attendance_sessions": 2,
        "pupils": 2,
        "extracts": 1,
        "quarantine": 2,
        "optout_audit": 1,
        "staged_sessions": 0,
        "staged_pupils": 0,
        "staged_extracts": 0,
    }
    assert row_counts(lake_uri) == counts
    assert {c.name: DeltaTable(c.path(lake_uri)).version() for c in written} == versions
    assert (sink.committed_offset(TOPIC, 0), sink.committed_offset(TOPIC, 1)) == (41, 141)


def test_a_crash_before_the_offsets_commit_replays_without_doubling_rows(lake_uri: str) -> None:
    class CrashingSink(DeltaSink):
        def _commit_sessions_and_offsets(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise RuntimeError("killed before the last commit")

    with pytest.raises(RuntimeError):
        CrashingSink(lake_uri).write_batch(full_batch(5))
    sink = DeltaSink(lake_uri)
    assert sink.committed_offset(TOPIC, 0) is None  # the side tables were written, the offset was not
    result = sink.write_batch(full_batch(5))  # the batch is consumed again
    assert not result.replay_skipped
    assert row_counts(lake_uri)["staged_pupils"] == 4  # staged twice ...
    sink.fold()
    assert row_counts(lake_uri) == {  # ... folded once
        "attendance_sessions": 2,
        "pupils": 2,
        "extracts": 1,
        "quarantine": 2,
        "optout_audit": 1,
        "staged_sessions": 0,
        "staged_pupils": 0,
        "staged_extracts": 0,
    }
    assert sink.committed_offset(TOPIC, 0) == 5


def test_a_lower_offset_than_the_stored_one_is_not_written(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri)
    sink.write_batch(
        SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "/", TEN)]), offsets={(TOPIC, 0): 20})
    )
    stale = DeltaSink(lake_uri).write_batch(
        SinkBatch(sessions=sessions([("100001", "A9", DAY, "AM", "N", ELEVEN)]), offsets={(TOPIC, 0): 15})
    )
    assert stale.replay_skipped and stale.offsets_already_stored == {(TOPIC, 0): 20}
    assert sink.committed_offset(TOPIC, 0) == 20
    assert list(current_marks(lake_uri)) == [("100001", "A1", DAY.isoformat(), "AM")]


def commit_actions(table_path: str, version: int) -> list[dict]:
    log_file = Path(table_path) / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]


def test_offsets_are_in_the_same_delta_commit_as_the_session_rows(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri, app_id_prefix="w")
    result = sink.write_batch(
        SinkBatch(
            sessions=sessions([("100001", "A1", DAY, "AM", "/", TEN)]),
            offsets={(TOPIC, 3): 77, (TOPIC, 4): 12},
        )
    )
    actions = commit_actions(ATTENDANCE_SESSIONS.path(lake_uri), result.sessions_version)
    assert {(a["txn"]["appId"], a["txn"]["version"]) for a in actions if "txn" in a} == {
        (f"w-{TOPIC}-3", 77),
        (f"w-{TOPIC}-4", 12),
    }
    assert (
        sum(a["add"]["stats"] and json.loads(a["add"]["stats"])["numRecords"] for a in actions if "add" in a)
        == 1
    )


def test_an_amendment_is_staged_its_offsets_commit_and_the_fold_applies_it(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri)
    sink.write_batch(
        SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "/", TEN)]), offsets={(TOPIC, 0): 1})
    )
    result = sink.write_batch(
        SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "N", ELEVEN)]), offsets={(TOPIC, 0): 2})
    )
    # Only an existing school-day: the row is staged, then a data-less commit carries the offset.
    actions = commit_actions(ATTENDANCE_SESSIONS.path(lake_uri), result.sessions_version)
    assert [a["txn"]["version"] for a in actions if "txn" in a] == [2]
    assert not [a for a in actions if "add" in a]
    assert sink.committed_offset(TOPIC, 0) == 2
    assert result.rows_written["attendance_sessions"] == 0 and result.rows_written["staged_sessions"] == 1
    assert row_counts(lake_uri)["staged_sessions"] == 1
    assert current_marks(lake_uri)[("100001", "A1", DAY.isoformat(), "AM")] == ("/", TEN)  # not folded yet
    folded = sink.fold()
    assert (folded.sessions.staged, folded.sessions.changed, folded.sessions.removed) == (1, 1, 1)
    assert current_marks(lake_uri)[("100001", "A1", DAY.isoformat(), "AM")] == ("N", ELEVEN)
    again = sink.fold()  # nothing staged: nothing to do
    assert again.sessions.staged == 0 and row_counts(lake_uri)["attendance_sessions"] == 1
    assert lake.read_table(SESSION_SCHOOL_DAYS, lake_uri).num_rows == 1  # recorded once, not again by the fold


def test_a_batch_without_session_rows_still_commits_its_offsets(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri)
    result = sink.write_batch(
        SinkBatch(
            quarantine=pa.table(
                {
                    "topic": [TOPIC],
                    "partition": [2],
                    "offset": [9],
                    "reason_code": ["bad_json"],
                    "severity": ["message"],
                    "quarantined_at": [TEN],
                }
            ),
            offsets={(TOPIC, 2): 9},
        )
    )
    assert result.offsets_committed == {(TOPIC, 2): 9}
    assert sink.committed_offset(TOPIC, 2) == 9
    assert lake.read_table(ATTENDANCE_SESSIONS, lake_uri).num_rows == 0
    assert [
        a for a in commit_actions(ATTENDANCE_SESSIONS.path(lake_uri), result.sessions_version) if "add" in a
    ] == []


@pytest.mark.parametrize("fold_each_batch", [True, False])
def test_pupils_newest_wins_and_current_since_moves_only_when_characteristics_change(
        lake_uri: str, fold_each_batch: bool) -> None:
    # The clock is read once per batch: batch 1 at 12:00, batch 2 at 13:00, and so on.
    times = iter([datetime(2026, 11, 16, h, tzinfo=UTC) for h in range(12, 20)])
    sink = DeltaSink(lake_uri, clock=lambda: next(times))
    for offset, (sen, generated) in enumerate([("N", NINE), ("N", TEN), ("K", ELEVEN), ("E", TEN)], start=1):
        # new, the same again (newer), changed (newer: staged at 14:00), a late older extract
        sink.write_batch(SinkBatch(pupils=pupils([("100001", "A1", sen, generated)]), offsets={(TOPIC, 0): offset}))
        if fold_each_batch:
            sink.fold()
    sink.fold()

    [row] = lake.read_table(PUPILS, lake_uri).to_pylist()
    assert (row["sen_provision"], row["generated_at"], row["current_since"]) == (
        "K",
        ELEVEN,
        datetime(2026, 11, 16, 14, tzinfo=UTC),
    )


def test_a_version_is_current_since_the_first_record_that_said_it_however_often_folds_run(lake_uri: str) -> None:
    times = iter([datetime(2026, 11, 16, h, tzinfo=UTC) for h in range(12, 20)])
    sink = DeltaSink(lake_uri, clock=lambda: next(times))
    sink.write_batch(SinkBatch(pupils=pupils([("100001", "A1", "N", NINE)]), offsets={(TOPIC, 0): 1}))
    sink.fold()
    # Changed at 13:00, said again at 14:00, both staged before the next fold.
    for offset, generated in ((2, TEN), (3, ELEVEN)):
        sink.write_batch(SinkBatch(pupils=pupils([("100001", "A1", "K", generated)]), offsets={(TOPIC, 0): offset}))
    sink.fold()

    [row] = lake.read_table(PUPILS, lake_uri).to_pylist()
    assert (row["sen_provision"], row["generated_at"], row["current_since"]) == (
        "K", ELEVEN, datetime(2026, 11, 16, 13, tzinfo=UTC))


def test_a_national_days_extracts_fold_in_one_merge(lake_uri: str) -> None:
    # 21,292 URNs spelt out in the MERGE's predicate overflowed delta-rs's stack (the worker died of SIGSEGV).
    schools = 21_292
    urns = [f"{100000 + n}" for n in range(schools)]
    sink = DeltaSink(lake_uri)
    sink.write_batch(SinkBatch(
        extracts=pa.table({"extract_id": [f"e{u}" for u in urns], "urn": urns, "status": ["complete"] * schools,
                           "first_seen_at": [NINE] * schools, "last_seen_at": [TEN] * schools}),
        offsets={(TOPIC, 0): 1}))
    assert sink.fold().extracts == FoldCount(schools, schools, schools)
    assert lake.read_table(EXTRACTS, lake_uri).num_rows == schools


def test_pruning_filters_spell_out_few_values_and_give_the_range_of_many() -> None:
    assert lake.in_list("urn", pa.array(["100002", None, "100001", "100002"])) == "urn IN ('100001', '100002')"
    many = pa.array([f"{100000 + n}" for n in range(lake.IN_LIST_MAX + 1)])
    assert lake.in_list("t.urn", many) == "(t.urn >= '100000' AND t.urn <= '101000')"


@pytest.mark.parametrize("fold_each_batch", [False, True])
def test_extract_status_moves_forward_and_keeps_first_seen(lake_uri: str, fold_each_batch: bool) -> None:
    sink = DeltaSink(lake_uri)

    def extract(status: str, chunks: int, first: datetime, last: datetime, offset: int) -> None:
        sink.write_batch(
            SinkBatch(
                extracts=pa.table(
                    {
                        "extract_id": ["e1"],
                        "urn": ["100001"],
                        "status": [status],
                        "chunks_received": [chunks],
                        "first_seen_at": [first],
                        "last_seen_at": [last],
                    }
                ),
                offsets={(TOPIC, 0): offset},
            )
        )
        if fold_each_batch:
            sink.fold()

    extract("incomplete", 1, NINE, NINE, 1)
    extract("complete", 3, TEN, ELEVEN, 2)  # a later batch saw the remaining chunks
    extract("incomplete", 2, NINE, TEN, 3)  # an older state, re-sent: ignored
    assert lake.read_table(EXTRACTS, lake_uri).num_rows == (1 if fold_each_batch else 0)  # staged till a fold
    folded = sink.fold()
    assert folded.extracts.staged == (0 if fold_each_batch else 3)
    assert lake.read_table(STAGED_EXTRACTS, lake_uri).num_rows == 0
    [row] = lake.read_table(EXTRACTS, lake_uri).to_pylist()
    assert (row["status"], row["chunks_received"], row["first_seen_at"], row["last_seen_at"]) == (
        "complete",
        3,
        NINE,
        ELEVEN,
    )


def test_rows_outside_the_table_contract_are_refused(lake_uri: str) -> None:
    with_name = sessions([("100001", "A1", DAY, "AM", "/", TEN)]).append_column("forename", pa.array(["Ann"]))
    with pytest.raises(ValueError, match="forename"):
        DeltaSink(lake_uri).write_batch(SinkBatch(sessions=with_name, offsets={(TOPIC, 0): 1}))


def test_no_upn_reaches_the_delta_log_statistics(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri)
    sink.write_batch(full_batch(1))
    sink.write_batch(SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "N", ELEVEN)]), offsets={(TOPIC, 0): 2}))
    sink.fold()
    for contract in (ATTENDANCE_SESSIONS, PUPILS, STAGED_SESSIONS, STAGED_PUPILS):
        text = "".join(p.read_text() for p in (Path(contract.path(lake_uri)) / "_delta_log").glob("*.json"))
        assert "100001" in text  # URN statistics are kept (pruning), so the scan below is meaningful
        assert "A1" not in text and "B1" not in text


def _write_partition(lake_uri: str, partition: int, schools: list[str], queue) -> None:  # noqa: ANN001
    """One worker process: per school, a first extract (new school-days: appended) and then an amendment
    of every mark (existing school-days: staged); then a fold, MERGEing into the same day partitions as the
    other process's fold, so that their commits may conflict and are retried."""
    sink = DeltaSink(lake_uri)
    conflicts = 0
    offset = 0
    for urn in schools:
        for code, generated in (("/", TEN), ("L", ELEVEN)):
            rows = [
                (urn, f"P{urn}{i:03d}", DAY - timedelta(days=d), s, code, generated)
                for i in range(50)
                for d in (0, 1)
                for s in ("AM", "PM")
            ]
            result = sink.write_batch(
                SinkBatch(
                    sessions=sessions(rows),
                    pupils=pupils([(urn, f"P{urn}{i:03d}", code, generated) for i in range(50)]),
                    offsets={(TOPIC, partition): offset},
                )
            )
            conflicts += result.conflicts
            offset += 1
    conflicts += sink.fold().conflicts  # both processes fold at about the same time, into the same days
    queue.put((partition, conflicts))


def test_two_processes_writing_different_partitions_at_once_both_succeed(lake_uri: str) -> None:
    context = multiprocessing.get_context("spawn")  # a fork after deltalake was used panics (stack notes)
    queue = context.Queue()
    schools = {0: [f"1000{i:02d}" for i in range(0, 12, 2)], 1: [f"1000{i:02d}" for i in range(1, 12, 2)]}
    workers = [
        context.Process(target=_write_partition, args=(lake_uri, p, schools[p], queue)) for p in (0, 1)
    ]
    for worker in workers:
        worker.start()
    finished = dict(queue.get(timeout=240) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    assert set(finished) == {0, 1}
    sink = DeltaSink(lake_uri)
    assert (sink.committed_offset(TOPIC, 0), sink.committed_offset(TOPIC, 1)) == (11, 11)
    marks = lake.read_table(ATTENDANCE_SESSIONS, lake_uri)
    assert marks.num_rows == 12 * 50 * 2 * 2
    assert pc.unique(marks["code"]).to_pylist() == ["L"]  # every amendment landed
    keys = pc.binary_join_element_wise(
        marks["urn"], marks["upn"], marks["date"].cast(pa.string()), marks["session"], "|"
    )
    assert pc.count_distinct(keys).as_py() == marks.num_rows
    assert lake.read_table(PUPILS, lake_uri).num_rows == 12 * 50


def test_read_table_filters_on_strings_after_a_merge_rewrote_the_files(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri)
    sink.write_batch(
        SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "/", TEN)]), offsets={(TOPIC, 0): 1})
    )
    sink.write_batch(
        SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "N", ELEVEN)]), offsets={(TOPIC, 0): 2})
    )
    sink.fold()
    # The MERGE-written file stores strings as string_view: a plain string filter must still work.
    found = lake.read_table(
        ATTENDANCE_SESSIONS, lake_uri, filter=pc.field("urn") == "100001", columns=["code"]
    )
    assert found.column("code").to_pylist() == ["N"]


def test_a_batch_held_behind_an_incomplete_extract_still_writes_what_it_judged(lake_uri: str) -> None:
    # The worker holds an incomplete extract's chunk at offset 10: its committed offset stays at 9 while it
    # writes the complete extracts it judged after that chunk (offsets 11..60).
    sink = DeltaSink(lake_uri)
    sink.write_batch(SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "/", TEN)]), offsets={(TOPIC, 0): 9}))
    held = sink.write_batch(SinkBatch(sessions=sessions([("100002", "B1", DAY, "AM", "/", TEN)]),
                                      offsets={(TOPIC, 0): 9}, processed_through={(TOPIC, 0): 60}))
    assert not held.replay_skipped
    assert sink.committed_offset(TOPIC, 0) == 9
    assert sorted(current_marks(lake_uri)) == [("100001", "A1", DAY.isoformat(), "AM"),
                                               ("100002", "B1", DAY.isoformat(), "AM")]
    replay = sink.write_batch(SinkBatch(sessions=sessions([("100002", "B1", DAY, "AM", "N", ELEVEN)]),
                                        offsets={(TOPIC, 0): 9}, processed_through={(TOPIC, 0): 9}))
    assert replay.replay_skipped  # everything it judged is covered by the stored offset


def test_quarantined_messages_names_only_the_messages_the_quarantine_already_holds(lake_uri: str) -> None:
    sink = DeltaSink(lake_uri)
    assert sink.quarantined_messages([(TOPIC, 0, 7)]) == set()  # no table yet: nothing held
    sink.write_batch(full_batch(41))  # quarantines offset 7 of partition 0
    asked = [(TOPIC, 0, 7), (TOPIC, 1, 7), (TOPIC, 0, 8)]
    assert sink.quarantined_messages(asked) == {(TOPIC, 0, 7)}
    assert sink.quarantined_messages([]) == set()


def test_fold_ranges_count_the_boundaries_at_or_below_each_urn() -> None:
    urns = pa.array(["140000", "100001", "100100", "120000", "100002"])
    assert fold_ranges(urns, ["100100", "110000", "130000"]).to_pylist() == [3, 0, 1, 2, 0]
    assert fold_ranges(urns, []).to_pylist() == [0] * 5


def test_the_pupils_fold_works_in_urn_ranges_and_every_file_holds_one_range(lake_uri: str) -> None:
    from tests.lake_factory import write_register

    urns = [f"{100000 + 7 * i}" for i in range(80)]
    write_register(lake_uri, [(urn, f"373{i:04d}", "Primary") for i, urn in enumerate(urns)])
    sink = DeltaSink(lake_uri)
    boundaries = sink._urn_boundaries()
    assert len(boundaries) == PUPIL_FOLD_RANGES - 1
    for offset, generated in enumerate((TEN, ELEVEN)):  # a first fold inserts, the second updates
        sink.write_batch(SinkBatch(pupils=pupils([(u, f"P{u}{p}", "N", generated) for u in urns for p in range(3)]),
                                   offsets={(TOPIC, 0): offset}))
        sink.fold()
    table = lake.read_table(PUPILS, lake_uri)
    assert table.num_rows == 80 * 3 and set(table.column("generated_at").to_pylist()) == {ELEVEN}
    actions = pa.table(DeltaTable(PUPILS.path(lake_uri)).get_add_actions(flatten=True)).to_pylist()
    assert len(actions) > 1
    edges = ["", *boundaries, "~"]
    for action in actions:
        low, high = action["min.urn"], action["max.urn"]
        assert any(edges[i] <= low and high < edges[i + 1] for i in range(len(edges) - 1)), (low, high)


def test_rows_staged_during_a_fold_wait_for_the_next_one(lake_uri: str) -> None:
    class Interleaving(DeltaSink):
        """Another worker stages an amendment between this fold's read of staging and its removal."""

        def _remove_staged(self, contract, snapshot, progress):  # type: ignore[no-untyped-def]
            if contract.name == STAGED_SESSIONS.name:
                DeltaSink(lake_uri).write_batch(SinkBatch(
                    sessions=sessions([("100001", "A1", DAY, "AM", "L", ELEVEN)]), offsets={(TOPIC, 1): 5}))
            return super()._remove_staged(contract, snapshot, progress)

    sink = Interleaving(lake_uri)
    sink.write_batch(SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "/", NINE)]), offsets={(TOPIC, 0): 1}))
    sink.write_batch(SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "N", TEN)]), offsets={(TOPIC, 0): 2}))
    folded = sink.fold()
    assert folded.sessions.removed == 1  # only what it read
    assert lake.read_table(STAGED_SESSIONS, lake_uri).column("code").to_pylist() == ["L"]  # kept for the next
    assert current_marks(lake_uri)[("100001", "A1", DAY.isoformat(), "AM")] == ("N", TEN)
    DeltaSink(lake_uri).fold()
    assert current_marks(lake_uri)[("100001", "A1", DAY.isoformat(), "AM")] == ("L", ELEVEN)


def test_two_folds_at_once_leave_the_tables_right_and_staging_empty(lake_uri: str) -> None:
    class Racing(DeltaSink):
        """Another worker folds the same staged rows while this fold is about to remove them."""

        def _remove_staged(self, contract, snapshot, progress):  # type: ignore[no-untyped-def]
            if contract.name == STAGED_SESSIONS.name:
                DeltaSink(lake_uri).fold()
            return super()._remove_staged(contract, snapshot, progress)

    sink = Racing(lake_uri)
    sink.write_batch(SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "/", NINE)]), offsets={(TOPIC, 0): 1}))
    sink.write_batch(SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "N", TEN)]),
                               pupils=pupils([("100001", "A1", "K", TEN)]), offsets={(TOPIC, 0): 2}))
    folded = sink.fold()
    assert folded.sessions.removed == 0 and folded.conflicts >= 1  # the other fold removed them first
    assert current_marks(lake_uri)[("100001", "A1", DAY.isoformat(), "AM")] == ("N", TEN)
    assert row_counts(lake_uri)["staged_sessions"] == 0 and row_counts(lake_uri)["pupils"] == 1


def test_offsets_wait_for_the_other_tables_and_stay_put_when_one_fails(lake_uri: str) -> None:
    class PupilsFailLate(DeltaSink):
        def _append(self, contract, data, progress, *, count=True):  # type: ignore[no-untyped-def]
            if contract.name == STAGED_PUPILS.name:
                time.sleep(0.5)  # the marks' side is done long before
                raise OSError("disk full")
            return super()._append(contract, data, progress, count=count)

    batch = SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "/", NINE)]),
                      pupils=pupils([("100001", "A1", "N", NINE)]), offsets={(TOPIC, 0): 5})
    with pytest.raises(OSError, match="disk full"):
        PupilsFailLate(lake_uri).write_batch(batch)
    sink = DeltaSink(lake_uri)
    assert sink.committed_offset(TOPIC, 0) is None
    assert sink.write_batch(batch).offsets_committed == {(TOPIC, 0): 5}
    assert len(lake.read_table(STAGED_PUPILS, lake_uri)) == 1


def test_a_fold_never_writes_back_a_school_purged_after_it_read_staging(lake_uri: str) -> None:
    from storage.destruction import purge_school, verify_destroyed

    class PurgedMeanwhile(DeltaSink):
        """The school is purged after this fold has read staging, before it writes the tables."""

        purged = False

        def _urns_still_staged(self, contract, column, value):  # type: ignore[no-untyped-def]
            if not self.purged:
                self.purged = True
                purge_school("100002", lake_uri, requested_by="dpo@example.org", reason="opted out")
            return super()._urns_still_staged(contract, column, value)

    sink = PurgedMeanwhile(lake_uri)
    day2 = DAY + timedelta(days=1)
    sink.write_batch(SinkBatch(sessions=sessions([("100001", "A1", DAY, "AM", "/", NINE),
                                                  ("100002", "B1", DAY, "AM", "/", NINE)]), offsets={(TOPIC, 0): 1}))
    sink.write_batch(SinkBatch(  # amendments of a stored day (staged) and pupils, for both schools
        sessions=sessions([("100001", "A1", DAY, "AM", "N", TEN), ("100002", "B1", DAY, "AM", "N", TEN),
                           ("100002", "B1", day2, "AM", "/", TEN)]),
        pupils=pupils([("100001", "A1", "N", TEN), ("100002", "B1", "N", TEN)]), offsets={(TOPIC, 0): 2}))
    sink.fold()

    assert sink.purged
    assert verify_destroyed("100002", lake_uri).rows_remaining == {
        name: 0 for name in verify_destroyed("100002", lake_uri).rows_remaining}
    assert current_marks(lake_uri) == {("100001", "A1", DAY.isoformat(), "AM"): ("N", TEN)}
    assert lake.read_table(PUPILS, lake_uri).column("urn").to_pylist() == ["100001"]
