"""Disclosure control: DfE's single-school rule, the minimum pupil count, secondary suppression, symbols."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import polars as pl

from official_stats import ees
from official_stats.disclosure import DisclosureRules, apply_disclosure, recoverable_rows

sys.path.insert(0, str(Path(__file__).parent))
from test_stats_views import EM, LONDON, crafted_day_rows  # noqa: E402

DAY = dt.date(2026, 11, 17)


def view_row(
    level: str,
    phase: str = "Total",
    la: str = "",
    region: str = "R1",
    schools: int = 5,
    enrolments: float = 500,
    fsm: str = "Total",
    time_frame: str = "Day",
    start: dt.date = DAY,
    end: dt.date | None = None,
) -> dict:
    return {
        "time_frame": time_frame,
        "period_start": start,
        "period_end": end or start,
        "academic_year": "202627",
        "term": None,
        "geographic_level": level,
        "country_code": "E92000001",
        "country_name": "England",
        "region_code": "" if level == "National" else region,
        "region_name": "",
        "old_la_code": la,
        "new_la_code": "",
        "la_name": "",
        "education_phase": phase,
        "fsm_status": fsm,
        "sen_status": "Total",
        "year_group": "Total",
        "school_submitted_count": schools,
        "enrolments": enrolments,
        "possible_sessions": int(enrolments * 2),
    }


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema_overrides={"term": pl.String})


RULES = DisclosureRules(single_school_max=1, min_pupil_count=10)


def reasons(result: pl.DataFrame) -> list[str | None]:
    return result["suppression_reason"].to_list()


def test_la_phase_built_from_one_school_is_suppressed_and_the_next_smallest_phase_too() -> None:
    rows = frame(
        [
            view_row("Local authority", "Primary", la="830", schools=3, enrolments=300),
            view_row("Local authority", "Secondary", la="830", schools=1, enrolments=100),
            view_row("Local authority", "Special", la="830", schools=2, enrolments=50),
            view_row("Local authority", "Total", la="830", schools=6, enrolments=450),
        ]
    )
    result = apply_disclosure(rows, RULES)
    # Secondary: one school (DfE rule). Total - Primary - Special would reveal it, so the smallest other
    # phase (Special, 50 pupils) is suppressed as well; Primary and Total stay published.
    assert reasons(result) == [None, "single_school", "secondary", None]
    assert recoverable_rows(result, result["suppressed"]) == []


def test_primary_suppression_alone_would_be_recoverable() -> None:
    rows = frame(
        [
            view_row("Local authority", "Primary", la="830", schools=3, enrolments=300),
            view_row("Local authority", "Secondary", la="830", schools=1, enrolments=100),
            view_row("Local authority", "Total", la="830", schools=4, enrolments=400),
        ]
    )
    primary_only = pl.Series([False, True, False])
    assert recoverable_rows(rows, primary_only) == [1]


def test_one_suppressed_la_in_a_region_makes_a_second_la_suppressed() -> None:
    rows = frame(
        [
            view_row("Regional", region="R1", schools=9, enrolments=780),
            view_row("Local authority", la="801", region="R1", schools=5, enrolments=500),
            view_row("Local authority", la="802", region="R1", schools=1, enrolments=80),
            view_row("Local authority", la="803", region="R1", schools=3, enrolments=200),
        ]
    )
    result = apply_disclosure(rows, RULES)
    # region - 801 - 803 would reveal 802: the next smallest LA (803) is suppressed too
    assert reasons(result) == [None, None, "single_school", "secondary"]
    assert recoverable_rows(result, result["suppressed"]) == []


def test_a_region_of_one_la_is_suppressed_with_its_la() -> None:
    rows = frame(
        [
            view_row("National", schools=20, enrolments=2000),
            view_row("Regional", region="R1", schools=1, enrolments=90),
            view_row("Regional", region="R2", schools=19, enrolments=1910),
            view_row("Local authority", la="201", region="R1", schools=1, enrolments=90),
        ]
    )
    result = apply_disclosure(rows, RULES)
    # R1 = its only LA; then National - R2 would reveal R1, but R2 is the only other region: suppressed too
    assert reasons(result) == [None, "secondary", "secondary", "single_school"]
    assert recoverable_rows(result, result["suppressed"]) == []


def test_small_characteristic_group_is_suppressed_with_its_sibling() -> None:
    rows = frame(
        [
            view_row("National", fsm="Total", enrolments=100),
            view_row("National", fsm="FSM eligible", enrolments=7),
            view_row("National", fsm="Not known to be eligible for FSM", enrolments=93),
        ]
    )
    result = apply_disclosure(rows, RULES)
    assert reasons(result) == [None, "few_pupils", "secondary"]


def test_a_day_built_from_one_school_is_protected_within_its_week() -> None:
    monday = dt.date(2026, 11, 16)
    rows = frame(
        [
            view_row(
                "Local authority",
                la="830",
                time_frame="Day",
                start=monday + dt.timedelta(days=i),
                schools=1 if i == 1 else 2,
                enrolments=100 + i,
            )
            for i in range(5)
        ]
        + [
            view_row(
                "Local authority",
                la="830",
                time_frame="Week",
                start=monday,
                end=monday + dt.timedelta(days=6),
                schools=2,
                enrolments=102,
            )
        ]
    )
    result = apply_disclosure(rows, RULES)
    # Tuesday had one school; Week - other days would reveal it: Monday (fewest pupils) is suppressed too
    assert reasons(result) == ["secondary", "single_school", None, None, None, None]


def test_an_la_week_whose_published_school_count_is_one_is_suppressed() -> None:
    monday = dt.date(2026, 11, 16)
    # two schools that never submitted on the same day: 2 distinct schools, but a daily mean of 1 (2 schools
    # on no day), which the file would publish as num_schools "1" beside the figures (DfE: num_schools == 1)
    week = view_row("Local authority", la="830", time_frame="Week", start=monday, schools=2, enrolments=100)
    busier = view_row("Local authority", la="831", time_frame="Week", start=monday, schools=2, enrolments=100)
    rows = frame([week, busier]).with_columns(pl.Series("num_schools", [1.0, 1.6]))
    result = apply_disclosure(rows, RULES)
    # 1.6 rounds to 2 at count_dp 0: published as "2", not suppressed
    assert reasons(result) == ["single_school", None]
    assert reasons(apply_disclosure(rows.drop("num_schools"), RULES)) == [None, None]


def test_crafted_day_publication_has_hand_derived_suppression() -> None:
    """The crafted day of test_stats_views, with DfE's single-school rule only (no pupil threshold)."""
    rows = crafted_day_rows()
    result = apply_disclosure(rows, DisclosureRules(single_school_max=1, min_pupil_count=0))

    def reason(level: str, phase: str, la: str = "", region: str = "") -> str | None:
        hit = result.filter(
            (pl.col("geographic_level") == level)
            & (pl.col("education_phase") == phase)
            & (pl.col("old_la_code") == la)
            & (pl.col("region_code") == region)
            & (pl.col("fsm_status") == "Total")
            & (pl.col("sen_status") == "Total")
            & (pl.col("year_group") == "Total")
        )
        return hit["suppression_reason"].item()

    # every LA phase row has one school; LA 830 Total has two but LA 830 Primary and Secondary are its parts
    assert reason("Local authority", "Primary", "830", EM) == "single_school"
    assert reason("Local authority", "Secondary", "830", EM) == "single_school"
    assert reason("Local authority", "Total", "831", EM) == "single_school"
    assert reason("Local authority", "Total", "201", LONDON) == "single_school"
    # East Midlands Secondary = LA 830 Secondary alone -> suppressed; then EM Primary (phase sibling);
    # EM Total = 830 Total + 831 Total with 831 suppressed -> 830 Total suppressed (secondary) ...
    assert reason("Local authority", "Total", "830", EM) == "secondary"
    assert reason("Regional", "Secondary", region=EM) == "secondary"
    assert reason("Regional", "Primary", region=EM) == "secondary"
    # ... London = LA 201 alone; National Total - East Midlands would reveal London -> EM Total suppressed
    assert reason("Regional", "Total", region=LONDON) == "secondary"
    assert reason("Regional", "Total", region=EM) == "secondary"
    # National Secondary = EM Secondary alone -> suppressed, and with it its phase sibling National Primary
    assert reason("National", "Secondary") == "secondary"
    assert reason("National", "Primary") == "secondary"
    assert reason("National", "Total") is None
    assert recoverable_rows(result, result["suppressed"]) == []


def test_published_symbols_c_z_and_low() -> None:
    rules = DisclosureRules(single_school_max=1, min_pupil_count=0, rate_dp=2)
    rows = crafted_day_rows()
    # a tiny positive rate that rounds to 0.00 at 2 dp -> "low"; a rate with no possible sessions -> "z"
    rows = rows.with_columns(
        pl.when(
            (pl.col("geographic_level") == "National")
            & (pl.col("education_phase") == "Total")
            & (pl.col("fsm_status") == "Total")
            & (pl.col("sen_status") == "Total")
            & (pl.col("year_group") == "Total")
        )
        .then(0.001)
        .otherwise(pl.col("illness_perc"))
        .alias("illness_perc"),
    )
    disclosed = ees.disclose(rows, rules)
    files = {f.name: f for f in ees.build_files(disclosed, rules)}
    data = files["attendance_daily_weekly"].data
    national = data.filter((pl.col("geographic_level") == "National") & (pl.col("education_phase") == "Total"))
    assert national["illness_perc"].item() == "low"
    assert national["possible_sessions"].item() == "14"
    assert national["attendance_perc"].item() == "57.14"
    la201 = data.filter(pl.col("old_la_code") == "201")
    assert set(la201["possible_sessions"].to_list()) == {"c"}
    assert set(la201["attendance_perc"].to_list()) == {"c"}
    assert set(la201["num_schools"].to_list()) == {"1"}  # school counts are not suppressed
    week_rows = data.filter(pl.col("time_frame") == "Week")
    assert week_rows.height == 0  # a Day-only input has no Week rows
    assert set(data["attendance_date"].to_list()) == {"2026-11-17"}
