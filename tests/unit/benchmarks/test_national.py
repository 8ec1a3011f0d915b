"""Pure helpers of the national-day benchmark: options, rate arithmetic, log reading, the content hash and
the report's scale-out figures."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pyarrow as pa
import pytest

from attendance.errors import UserFacingError
from benchmarks import national
from benchmarks.national import (
    WorkerLog,
    amendment_rate_for,
    benchmark_days,
    format_table,
    merge_worker_logs,
    parse_worker_log,
    parse_workers,
    partitions_for,
    per_second,
    scale_out_summary,
    sessions_content_hash,
    table_differences,
    throughput,
)


def test_worker_counts_are_parsed_in_order_without_repeats():
    assert parse_workers("1,2,4") == (1, 2, 4)
    assert parse_workers(" 2, 1,2 ") == (2, 1)


@pytest.mark.parametrize("text", ["", "0", "1,-2", "two", "1.5"])
def test_a_worker_count_that_is_not_a_positive_number_is_a_clear_error(text: str):
    with pytest.raises(UserFacingError, match="--workers"):
        parse_workers(text)


def test_partitions_are_two_per_worker_of_the_largest_run_and_never_below_eight():
    assert partitions_for([1]) == 8
    assert partitions_for([1, 2, 4]) == 8
    assert partitions_for([1, 6]) == 12


def test_rates_divide_by_positive_durations_only():
    assert per_second(1_000, 4.0) == 250.0
    assert per_second(1_000, 0.0) is None
    assert per_second(1_000, None) is None


def test_throughput_reports_pupil_records_marks_and_megabytes_per_second():
    figures = throughput(8.0, messages=40, pupil_records=20_000, marks=42_000, value_bytes=16_000_000)
    assert figures["pupil_records_per_s"] == 2_500
    assert figures["marks_per_s"] == 5_250
    assert figures["megabytes"] == 16.0
    assert figures["megabytes_per_s"] == 2.0
    assert throughput(None, messages=1, pupil_records=1, marks=2, value_bytes=1)["pupil_records_per_s"] is None


def test_the_next_day_share_is_the_generators_own():
    from ingest.generate import _OFFSET_CUM

    assert float(_OFFSET_CUM[0]) == pytest.approx(national.NEXT_DAY_RESEND_SHARE)


def test_the_amendment_rate_gives_the_wanted_share_of_resent_marks_on_day_two(tmp_path):
    from ingest.generate import generate

    history, day = dt.date(2026, 11, 20), dt.date(2026, 11, 23)
    summary = generate(tmp_path / "data", schools=30, start_date=history, days=2,
                       amendment_rate=amendment_rate_for(0.05))
    day_one_marks = resent = 0
    for folder, counter in ((history, "own"), (day, "resent")):
        for path in (tmp_path / "data" / "extracts" / folder.isoformat()).glob("*.json.gz"):
            document = json.loads(gzip.decompress(path.read_bytes()))
            marks = [m for p in document["pupils"] for m in p["sessions"]]
            if counter == "own":
                day_one_marks += len(marks)
            else:
                resent += sum(1 for m in marks if m["date"] == history.isoformat())
    assert resent == summary.amendments
    assert resent / day_one_marks == pytest.approx(0.05, abs=0.01)


def test_an_amendment_share_beyond_what_one_day_can_carry_is_refused():
    with pytest.raises(UserFacingError, match="--amendments"):
        amendment_rate_for(0.5)


@pytest.mark.parametrize(("today", "expected"), [
    (dt.date(2026, 11, 23), (dt.date(2026, 11, 20), dt.date(2026, 11, 23))),  # Monday: Friday before
    (dt.date(2026, 11, 22), (dt.date(2026, 11, 19), dt.date(2026, 11, 20))),  # Sunday: Thursday, Friday
    (dt.date(2026, 11, 25), (dt.date(2026, 11, 24), dt.date(2026, 11, 25))),  # Wednesday
])
def test_the_measured_day_is_the_latest_weekday_and_the_history_the_weekday_before(today, expected):
    assert benchmark_days(today) == expected


def _at(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def test_the_worker_log_gives_first_assignment_and_last_commit():
    lines = [
        "2026-11-23 10:00:00,000 INFO faust.app.base: Executing _on_partitions_assigned",
        "2026-11-23 10:00:00,500 INFO streams.app: assigned 0 extract partitions; resuming from Delta offsets",
        "\x1b[?25h2026-11-23 10:00:01,250 INFO streams.app: assigned 8 extract partitions; resuming from Delta",
        "2026-11-23 10:00:03,000 INFO streams.app: batch: 256 messages, 9 pupils accepted, offsets {} (committed)",
        "2026-11-23 10:00:04,000 INFO streams.app: batch: 3 messages, 0 pupils accepted, offsets {} (replay skipped)",
        "2026-11-23 10:00:05,750 INFO streams.app: batch: 10 messages, 2 pupils accepted, offsets {} (committed)",
        "2026-11-23 10:00:06,000 INFO streams.app: drained: every assigned partition processed to its end offset",
    ]
    log = parse_worker_log(lines)
    assert log.first_assigned == _at("2026-11-23 10:00:01.250")
    assert log.last_commit == _at("2026-11-23 10:00:05.750")
    assert (log.batches, log.replays_skipped) == (2, 1)


def test_the_data_has_landed_when_the_last_fold_has_committed():
    lines = [
        "2026-11-23 10:00:01,250 INFO streams.app: assigned 8 extract partitions; resuming from Delta",
        "2026-11-23 10:00:05,750 INFO streams.app: batch: 10 messages, 2 pupils accepted, offsets {} (committed)",
        "2026-11-23 10:00:06,000 INFO streams.app: drained: every partition of the topic processed to its end offset",
        "2026-11-23 10:00:09,500 INFO streams.app: fold (drained): 5 staged marks, 9 staged pupil records folded",
        "2026-11-23 10:00:20,000 ERROR streams.app: fold (idle) failed, staged rows wait for the next one: OSError: x",
    ]
    assert parse_worker_log(lines).last_commit == _at("2026-11-23 10:00:09.500")


def test_stage_seconds_are_summed_over_committed_batches_and_folds():
    lines = [
        "2026-11-23 10:00:03,000 INFO streams.app: batch: 256 messages, 9 pupils accepted, 18 marks accepted, "
        "gather 0.01s, barrier 0.00s, process 0.50s, wait 0.10s, write 0.40s, rss 900 MiB, offsets {} (committed)",
        "2026-11-23 10:00:04,000 INFO streams.app: batch: 256 messages, 9 pupils accepted, 18 marks accepted, "
        "gather 0.02s, barrier 0.01s, process 0.25s, wait 0.00s, write 0.35s (by table: attendance_sessions "
        "0.20s, staged_pupils 0.10s), rss 900 MiB, offsets {} (committed)",
        "2026-11-23 10:00:09,500 INFO streams.app: fold (drained): 5 staged marks, 9 staged pupil records folded "
        "in 4.4s, rss 1000 MiB",
    ]
    stages = parse_worker_log(lines).stage_seconds
    assert stages == {"gather": 0.03, "barrier": 0.01, "process": 0.75, "wait": 0.1, "write": 0.75, "fold": 4.4,
                      "write.attendance_sessions": 0.2, "write.staged_pupils": 0.1}
    merged = merge_worker_logs([parse_worker_log(lines), parse_worker_log(lines[:1])])
    assert merged.stage_seconds["process"] == 1.25
    assert merged.last_batch == _at("2026-11-23 10:00:04.000")
    assert merged.last_commit == _at("2026-11-23 10:00:09.500")


def test_several_workers_span_from_the_earliest_start_to_the_latest_commit():
    merged = merge_worker_logs([WorkerLog(10.0, 20.0, 3, 0), WorkerLog(12.0, 25.0, 2, 1), WorkerLog()])
    assert merged == WorkerLog(10.0, 25.0, 5, 1, {}, None)


def _sessions(rows: list[tuple[str, str, str, str]], ingested_hour: int) -> pa.Table:
    return pa.table({
        "urn": [r[0] for r in rows], "upn": [r[1] for r in rows],
        "date": [dt.date(2026, 11, 23)] * len(rows), "session": [r[2] for r in rows],
        "code": [r[3] for r in rows],
        "ingested_at": pa.array([dt.datetime(2026, 11, 23, ingested_hour, tzinfo=dt.UTC)] * len(rows),
                                pa.timestamp("us", tz="UTC")),
    })


ROWS = [("100001", "A1", "AM", "/"), ("100001", "A1", "PM", "\\"), ("100002", "B1", "AM", "N")]


def test_the_sessions_hash_ignores_row_order_and_commit_time():
    assert sessions_content_hash([_sessions(ROWS, 9)]) == sessions_content_hash([_sessions(ROWS[::-1], 17)])


def test_the_sessions_hash_is_the_same_however_the_rows_are_split_into_batches():
    whole = sessions_content_hash([_sessions(ROWS, 9)])
    assert sessions_content_hash([_sessions(ROWS[2:], 9), _sessions([], 9), _sessions(ROWS[:2], 9)]) == whole
    assert sessions_content_hash(_sessions(ROWS, 9).to_batches(max_chunksize=1)) == whole


def test_the_sessions_hash_tells_a_duplicated_row_from_a_single_one():
    assert sessions_content_hash([_sessions(ROWS + ROWS[:1], 9)]) != sessions_content_hash([_sessions(ROWS, 9)])


def test_the_sessions_hash_changes_when_one_mark_changes_or_goes_missing():
    reference = sessions_content_hash([_sessions(ROWS, 9)])
    amended = [*ROWS[:2], ("100002", "B1", "AM", "I")]
    assert sessions_content_hash([_sessions(amended, 9)]) != reference
    assert sessions_content_hash([_sessions(ROWS[:2], 9)]) != reference


def test_lake_differences_name_the_entries_that_differ():
    reference = {"pupils": 10, "quarantine_by_reason": {"MSG_UNKNOWN_URN": 1}, "sessions_sha256": "a"}
    assert table_differences(reference, dict(reference)) == []
    other = {**reference, "pupils": 9, "sessions_sha256": "b"}
    assert table_differences(reference, other) == ["pupils", "sessions_sha256"]


def test_speed_up_is_against_the_run_with_fewest_workers():
    runs = [{"workers": 1, "seconds": 120.0, "equal_to_reference": True},
            {"workers": 2, "seconds": 80.0, "equal_to_reference": True},
            {"workers": 4, "seconds": 96.0, "equal_to_reference": False}]
    summary = scale_out_summary(runs, 2)
    assert [r["speedup"] for r in summary["runs"]] == [1.0, 1.5, 1.25]
    assert summary["reference_workers"] == 1
    assert summary["all_equal"] is False


def test_the_table_flags_a_scale_out_run_whose_tables_differ():
    report = {
        "parameters": {"schools": 2000, "day": "2026-11-23"},
        "data": {"pupil_records": 100, "marks": 210, "amended_marks": 10, "messages": 5, "megabytes": 1.0},
        "machine": {"cpu_count": 2, "memory_gib": 23.5, "load_average_start": [1.0, 1.0, 1.0]},
        "stages": {"produce": throughput(2.0, messages=5, pupil_records=100, marks=210, value_bytes=10**6)},
        "scale_out": scale_out_summary([
            {"workers": 1, "seconds": 4.0, "equal_to_reference": True},
            {"workers": 2, "seconds": 2.0, "equal_to_reference": False, "differences": ["pupils"]},
        ], 2),
    }
    text = format_table(report)
    assert "produce (send_files)" in text and "50" in text
    assert "DIFFER: pupils" in text
