"""Incremental aggregation over Delta: only touched days are recomputed; totals stay exact."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from official_stats import contracts, incremental, measures, scope, synthetic
from storage.tables import table

MONDAY = dt.date(2026, 11, 16)
DAYS = [MONDAY + dt.timedelta(days=i) for i in range(5)]


def build_lake(path: Path, days: list[dt.date] = DAYS, cdf: bool = False) -> synthetic.SyntheticRoll:
    roll = synthetic.make_roll(24, 20, 2026, la_codes=["830", "831", "201"])
    synthetic.write_reference(str(path), roll)
    for day in days:
        sessions, extracts = synthetic.make_day(roll, day)
        synthetic.append_day(str(path), sessions, extracts, cdf=cdf)
    return roll


def view_files(lake: Path) -> dict[tuple[str, str], set[str]]:
    actions = pa.table(DeltaTable(contracts.VIEWS_UNSUPPRESSED.path(str(lake))).get_add_actions(flatten=True))
    files: dict[tuple[str, str], set[str]] = {}
    for path, frame, start in zip(
        actions.column("path").to_pylist(),
        actions.column("partition.time_frame").to_pylist(),
        actions.column("partition.period_start").to_pylist(),
        strict=True,
    ):
        files.setdefault((frame, str(start)), set()).add(path)
    return files


def amended(roll: synthetic.SyntheticRoll, day: dt.date) -> pa.Table:
    """The day's marks with every AM mark of the first 40 pupils turned into N (no reason yet)."""
    sessions, _ = synthetic.make_day(roll, day)
    n = roll.pupils.num_rows
    mask = np.zeros(2 * n, dtype=bool)
    mask[:40] = True
    codes = pc.if_else(pa.array(mask), pa.scalar("N"), sessions.column("code"))
    return sessions.set_column(sessions.schema.get_field_index("code"), "code", codes)


def brute_force_pupil_totals(lake: Path) -> pl.DataFrame:
    """Per-enrolment possible and absence sessions over all days, straight from the sink tables."""
    marks = pl.from_arrow(
        DeltaTable(table("attendance_sessions").path(str(lake))).to_pyarrow_table(
            columns=["urn", "upn", "date", "session", "code", "extract_id"]
        )
    )
    result = scope.apply_scope(
        marks,
        extracts=pl.from_arrow(DeltaTable(table("extracts").path(str(lake))).to_pyarrow_table()),
        pupils=pl.from_arrow(DeltaTable(table("pupils").path(str(lake))).to_pyarrow_table()),
        schools=pl.from_arrow(DeltaTable(table("schools").path(str(lake))).to_pyarrow_table()),
    )
    return (
        measures.session_counts(result.counted, ["urn", "upn"])
        .select("urn", "upn", "possible_sessions", "overall_absence")
        .sort("urn", "upn")
    )


def running_totals(lake: Path) -> pl.DataFrame:
    totals = pl.from_arrow(DeltaTable(contracts.PUPIL_PERIOD_TOTALS.path(str(lake))).to_pyarrow_table())
    return (
        totals.group_by("urn", "upn")
        .agg(pl.col("possible_sessions").sum(), pl.col("overall_absence").sum())
        .filter(pl.col("possible_sessions") + pl.col("overall_absence") > 0)
        .sort("urn", "upn")
    )


def national_total(lake: Path, time_frame: str) -> dict:
    rows = incremental.views_frame(str(lake)).filter(
        (pl.col("time_frame") == time_frame)
        & (pl.col("geographic_level") == "National")
        & (pl.col("education_phase") == "Total")
        & (pl.col("fsm_status") == "Total")
        & (pl.col("sen_status") == "Total")
        & (pl.col("year_group") == "Total")
    )
    assert rows.height == 1
    return rows.row(0, named=True)


def test_first_run_processes_every_day_and_a_second_run_nothing(tmp_path: Path) -> None:
    build_lake(tmp_path)
    first = incremental.run_aggregation(str(tmp_path))
    assert first.dates_recomputed == DAYS
    second = incremental.run_aggregation(str(tmp_path))
    assert second.dates_recomputed == []


def test_an_amended_day_and_a_new_day_are_the_only_days_recomputed(tmp_path: Path) -> None:
    roll = build_lake(tmp_path, DAYS[:4])
    incremental.run_aggregation(str(tmp_path))
    before = view_files(tmp_path)

    synthetic.replace_marks(str(tmp_path), amended(roll, DAYS[2]))
    sessions, extracts = synthetic.make_day(roll, DAYS[4])
    synthetic.append_day(str(tmp_path), sessions, extracts)
    report = incremental.run_aggregation(str(tmp_path))

    assert report.dates_recomputed == [DAYS[2], DAYS[4]]
    after = view_files(tmp_path)
    for day in (DAYS[0], DAYS[1], DAYS[3]):  # untouched days: the very same files
        assert after[("Day", day.isoformat())] == before[("Day", day.isoformat())]
    assert after[("Day", DAYS[2].isoformat())] != before[("Day", DAYS[2].isoformat())]
    assert ("Day", DAYS[4].isoformat()) in after and ("Day", DAYS[4].isoformat()) not in before
    assert report.weeks_recomputed == [MONDAY]


def test_running_pupil_totals_equal_a_recount_after_amendments(tmp_path: Path) -> None:
    roll = build_lake(tmp_path, DAYS[:3])
    incremental.run_aggregation(str(tmp_path))
    synthetic.replace_marks(str(tmp_path), amended(roll, DAYS[1]))
    incremental.run_aggregation(str(tmp_path))
    synthetic.replace_marks(str(tmp_path), amended(roll, DAYS[0]))
    sessions, extracts = synthetic.make_day(roll, DAYS[3])
    synthetic.append_day(str(tmp_path), sessions, extracts)
    incremental.run_aggregation(str(tmp_path))

    expected = brute_force_pupil_totals(tmp_path)
    assert running_totals(tmp_path).equals(expected)
    # and the published persistent absence is that recount's
    flags = measures.persistent_absence_flags(expected)
    ytd = national_total(tmp_path, "Year to date")
    assert ytd["pa_enrolments"] == int(flags["is_enrolment"].sum())
    assert ytd["enrolments_pa_10_exact"] == int(flags["is_pa_10"].sum())
    assert ytd["enrolments_pa_50_exact"] == int(flags["is_pa_50"].sum())


def test_incremental_views_equal_a_full_recompute(tmp_path: Path) -> None:
    roll = build_lake(tmp_path, DAYS[:3])
    incremental.run_aggregation(str(tmp_path))
    synthetic.replace_marks(str(tmp_path), amended(roll, DAYS[1]))
    sessions, extracts = synthetic.make_day(roll, DAYS[3])
    synthetic.append_day(str(tmp_path), sessions, extracts)
    incremental.run_aggregation(str(tmp_path))
    keys = [
        "time_frame",
        "period_start",
        "geographic_level",
        "old_la_code",
        "region_code",
        "education_phase",
        "fsm_status",
        "sen_status",
        "year_group",
    ]
    incremental_rows = incremental.views_frame(str(tmp_path)).sort(keys)
    full = incremental.run_aggregation(str(tmp_path), full=True)
    assert full.mode == "full" and full.dates_recomputed == DAYS[:4]
    assert incremental.views_frame(str(tmp_path)).sort(keys).equals(incremental_rows)


def test_week_and_year_to_date_sum_the_days(tmp_path: Path) -> None:
    build_lake(tmp_path)
    incremental.run_aggregation(str(tmp_path))
    days = incremental.views_frame(str(tmp_path)).filter(
        (pl.col("time_frame") == "Day")
        & (pl.col("geographic_level") == "National")
        & (pl.col("education_phase") == "Total")
        & (pl.col("fsm_status") == "Total")
        & (pl.col("sen_status") == "Total")
        & (pl.col("year_group") == "Total")
    )
    week = national_total(tmp_path, "Week")
    ytd = national_total(tmp_path, "Year to date")
    assert week["possible_sessions"] == days["possible_sessions"].sum() == ytd["possible_sessions"]
    assert week["enrolments"] == pytest.approx(days["enrolments"].mean())
    assert ytd["period_start"] == dt.date(2026, 9, 1) and ytd["period_end"] == DAYS[-1]


def test_an_extract_completed_later_gets_its_day_recomputed(tmp_path: Path) -> None:
    roll = build_lake(tmp_path, DAYS[:2])
    sessions, extracts = synthetic.make_day(roll, DAYS[2])
    first_school = extracts.column("urn")[0].as_py()
    status = pc.if_else(
        pc.equal(extracts.column("urn"), first_school), pa.scalar("incomplete"), extracts.column("status")
    )
    synthetic.append_day(
        str(tmp_path),
        sessions,
        extracts.set_column(extracts.schema.get_field_index("status"), "status", status),
    )
    report = incremental.run_aggregation(str(tmp_path))
    assert report.pending_extracts == 1
    schools_day3 = national_total(tmp_path, "Week")["school_submitted_count"]

    # the extract completes: the sink rewrites the extracts table; no session row changes
    path = table("extracts").path(str(tmp_path))
    all_extracts = DeltaTable(path).to_pyarrow_table()
    write_deltalake(
        path,
        all_extracts.set_column(
            all_extracts.schema.get_field_index("status"),
            "status",
            pa.array(["complete"] * all_extracts.num_rows),
        ),
        mode="overwrite",
    )
    report = incremental.run_aggregation(str(tmp_path))
    assert report.dates_recomputed == [DAYS[2]]
    assert report.pending_extracts == 0
    day3 = incremental.views_frame(str(tmp_path)).filter(
        (pl.col("time_frame") == "Day")
        & (pl.col("period_start") == DAYS[2])
        & (pl.col("geographic_level") == "National")
        & (pl.col("education_phase") == "Total")
        & (pl.col("fsm_status") == "Total")
        & (pl.col("sen_status") == "Total")
        & (pl.col("year_group") == "Total")
    )
    assert day3["num_schools"].item() == 24
    assert schools_day3 == 24  # distinct schools over the week already included it (days 1 and 2)


def test_an_opt_out_recomputes_days_from_its_effective_date_and_excludes_the_school(tmp_path: Path) -> None:
    roll = build_lake(tmp_path)
    incremental.run_aggregation(str(tmp_path), optouts=None)
    urn = roll.schools.column("urn")[0].as_py()
    optouts = pa.table(
        {
            "urn": [urn],
            "status": ["opted_out"],
            "effective_at": pa.array([dt.datetime(2026, 11, 18, 9, tzinfo=dt.UTC)], pa.timestamp("us", tz="UTC")),
        }
    )
    report = incremental.run_aggregation(str(tmp_path), optouts=optouts)
    assert report.dates_recomputed == DAYS[2:]
    school_days = pl.from_arrow(
        DeltaTable(contracts.SCHOOL_DAILY.path(str(tmp_path))).to_pyarrow_table(columns=["date", "urn"])
    )
    assert sorted(school_days.filter(pl.col("urn") == urn)["date"].to_list()) == DAYS[:2]
    assert incremental.run_aggregation(str(tmp_path), optouts=optouts).dates_recomputed == []


def test_one_date_can_be_recomputed_on_request(tmp_path: Path) -> None:
    build_lake(tmp_path, DAYS[:2])
    first = incremental.run_aggregation(str(tmp_path))
    report = incremental.run_aggregation(str(tmp_path), day=DAYS[1])
    assert report.dates_recomputed == [DAYS[1]] and report.mode == "date"
    assert report.sessions_version == first.sessions_version


def test_change_data_feed_and_log_give_the_same_touched_days(tmp_path: Path) -> None:
    cdf_lake, log_lake = tmp_path / "cdf", tmp_path / "log"
    for lake, cdf in ((cdf_lake, True), (log_lake, False)):
        roll = build_lake(lake, DAYS[:3], cdf=cdf)
        version = DeltaTable(table("attendance_sessions").path(str(lake))).version()
        synthetic.replace_marks(str(lake), amended(roll, DAYS[0]))
        sessions, extracts = synthetic.make_day(roll, DAYS[3])
        synthetic.append_day(str(lake), sessions, extracts)
        current = DeltaTable(table("attendance_sessions").path(str(lake))).version()
        touched = incremental.changed_dates(
            incremental.Lake(str(lake), {}), table("attendance_sessions"), version, current
        )
        assert touched == {DAYS[0], DAYS[3]}, lake.name


def test_file_list_diff_is_the_fallback_when_the_log_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roll = build_lake(tmp_path, DAYS[:3])
    version = DeltaTable(table("attendance_sessions").path(str(tmp_path))).version()
    synthetic.replace_marks(str(tmp_path), amended(roll, DAYS[1]))

    def gone(*_: object) -> set:
        raise FileNotFoundError("log cleaned up")

    monkeypatch.setattr(incremental, "_dates_from_log_files", gone)
    touched = incremental.changed_dates(
        incremental.Lake(str(tmp_path), {}), table("attendance_sessions"), version, version + 1
    )
    assert touched == {DAYS[1]}


def test_missing_sessions_table_is_a_clear_error(tmp_path: Path) -> None:
    from attendance.errors import UserFacingError

    with pytest.raises(UserFacingError, match="no attendance_sessions table"):
        incremental.run_aggregation(str(tmp_path))
