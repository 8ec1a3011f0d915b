"""The LA-and-above zone holds only disclosure-controlled rows; the exact figures stay in the school zone."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from official_stats import contracts, ees, incremental, publication, synthetic
from official_stats.disclosure import DisclosureRules, recoverable_rows
from storage.tables import Zone

MONDAY = dt.date(2026, 11, 16)
DAYS = [MONDAY + dt.timedelta(days=i) for i in range(3)]
#: Schools go to these LAs in turn: 830 gets schools 0 and 3, 831 schools 1 and 4, 201 school 2 only.
LA_CODES = ["830", "831", "201"]
RULES = DisclosureRules()  # the defaults the run uses: one school, fewer than 10 pupils
KEYS = list(contracts.VIEW_DIMENSIONS)


def build_lake(path: Path, days: list[dt.date] = DAYS) -> synthetic.SyntheticRoll:
    roll = synthetic.make_roll(5, 20, 2026, la_codes=LA_CODES)
    synthetic.write_reference(str(path), roll)
    for day in days:
        sessions, extracts = synthetic.make_day(roll, day)
        synthetic.append_day(str(path), sessions, extracts)
    return roll


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("controlled")
    build_lake(lake)
    report = incremental.run_aggregation(str(lake))
    assert report.academic_years_controlled == [2026]
    return lake


def test_a_one_school_la_is_stored_suppressed_without_its_figures(aggregated: Path) -> None:
    controlled = incremental.controlled_views_frame(str(aggregated))
    la201 = controlled.filter(pl.col("old_la_code") == "201")
    # school 2 alone: its Day rows, its Week, Term and Year-to-date rows, by phase (Primary) and Total
    assert la201.height == (3 + 3) * 2
    assert la201["suppressed"].all() and set(la201["suppression_reason"]) == {"single_school"}
    for name in contracts.SUPPRESSIBLE_COLUMNS:
        assert la201[name].null_count() == la201.height, name
    assert set(la201["num_schools"]) == {1.0}  # school counts are not suppressed (the register is public)


def test_unsuppressed_rows_carry_the_exact_figures_and_nothing_is_recoverable(aggregated: Path) -> None:
    controlled = incremental.controlled_views_frame(str(aggregated))
    exact = incremental.views_frame(str(aggregated))
    assert controlled.height == exact.height  # no ISO week 53 here: every exact row has its controlled row
    shown = controlled.filter(~pl.col("suppressed")).select(KEYS + list(contracts.SUPPRESSIBLE_COLUMNS))
    same = exact.join(shown.select(KEYS), on=KEYS, how="semi", nulls_equal=True).select(shown.columns)
    assert shown.sort(KEYS, nulls_last=True).equals(same.sort(KEYS, nulls_last=True))
    assert controlled.filter(~pl.col("suppressed")).height > 0
    # no additive relation (phase, region, nation, week, term, year) reveals a suppressed row
    assert recoverable_rows(controlled, controlled["suppressed"]) == []
    # and no unsuppressed row breaks a primary rule
    lone_la = (pl.col("geographic_level") == "Local authority") & (pl.col("school_submitted_count") <= 1)
    assert controlled.filter(~pl.col("suppressed") & (lone_la | (pl.col("enrolments") < 10))).height == 0


def test_the_stored_rows_render_to_exactly_the_release_files(aggregated: Path) -> None:
    built = publication.build_release(str(aggregated), DAYS[-1] + dt.timedelta(days=1), rules=RULES, storage_options={})
    assert built.data_end == DAYS[-1] and built.suppressed_rows > 0
    stored = ees.build_files(incremental.controlled_views_frame(str(aggregated)), RULES)
    assert [f.name for f in stored] == [f.name for f in built.files]
    for mine, released in zip(stored, built.files, strict=True):
        assert mine.data.equals(released.data), mine.name
        assert mine.meta.equals(released.meta), mine.name
    daily = {f.name: f.data for f in stored}["attendance_daily_weekly"]
    assert set(daily.filter(pl.col("old_la_code") == "201")["possible_sessions"]) == {"c"}


def test_incremental_controlled_rows_equal_a_full_recompute(tmp_path: Path) -> None:
    roll = build_lake(tmp_path, DAYS[:2])
    incremental.run_aggregation(str(tmp_path))
    sessions, extracts = synthetic.make_day(roll, DAYS[2])
    synthetic.append_day(str(tmp_path), sessions, extracts)
    incremental.run_aggregation(str(tmp_path))
    after_incremental = incremental.controlled_views_frame(str(tmp_path)).drop("controlled_at").sort(KEYS)
    incremental.run_aggregation(str(tmp_path), full=True)
    after_full = incremental.controlled_views_frame(str(tmp_path)).drop("controlled_at").sort(KEYS)
    assert after_incremental.equals(after_full)


def test_a_lake_in_the_earlier_layout_is_moved_out_of_the_la_zone(tmp_path: Path) -> None:
    build_lake(tmp_path, DAYS[:2])
    first = incremental.run_aggregation(str(tmp_path))
    la_zone = tmp_path / Zone.LA_AND_ABOVE.value
    # the earlier layout: exact views and the run bookkeeping both in la_aggregates
    shutil.rmtree(la_zone / "stats_attendance_views")
    shutil.move(
        tmp_path / Zone.SCHOOL.value / "stats_attendance_views_unsuppressed", la_zone / "stats_attendance_views"
    )
    shutil.move(tmp_path / Zone.RESTRICTED.value / "stats_aggregation_runs", la_zone / "stats_aggregation_runs")

    report = incremental.run_aggregation(str(tmp_path))

    assert report.dates_recomputed == []  # the moved bookkeeping says every day is done
    assert report.academic_years_controlled == [2026]  # the controlled table is rebuilt from the moved rows
    assert sorted(p.name for p in la_zone.iterdir()) == ["stats_attendance_views"]
    assert "suppressed" in DeltaTable(str(la_zone / "stats_attendance_views")).schema().to_arrow().names
    runs = pl.read_delta(contracts.AGGREGATION_STATE.path(str(tmp_path)))
    assert runs.sort("run_at")["run_id"].to_list()[0] == first.run_id and runs.height == 2
    exact = incremental.views_frame(str(tmp_path))
    assert exact.filter(pl.col("time_frame") == "Day")["period_start"].unique().sort().to_list() == DAYS[:2]
