"""A crafted multi-school, multi-LA day, compared figure by figure with a hand computation.

The day (Tuesday 17 November 2026, academic year 2026/27; ages at 31 August 2026):

=====  ======  =========  ==========================================================================
school  LA      phase      pupils (AM, PM)
=====  ======  =========  ==========================================================================
A      830     Primary    P1 (7, FSM) / \\ ; P2 (9) I I ; P3 (6, FSM) L \\
B      830     Secondary  P4 (12) / U ; P5 (14, FSM) B B ; P6 (16: out of scope) / \\
C      831     Primary    P7 (8) D D (no possible session) ; P8 (10, FSM) G O
D      201     Primary    P9 (5) M \\
E      831     Secondary  P10 (13) / \\  -- the school opted out at 08:00 that day: excluded
F      830     Primary    P11 (7) / \\  -- its extract is incomplete: held back (pending)
G      830     (out of scope phase)  P12 (9) / \\
=====  ======  =========  ==========================================================================
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from official_stats import scope, views
from schemas.reference import local_authorities

DAY = dt.date(2026, 11, 17)
LAS = local_authorities()


def _dob(age: int) -> dt.date:
    """A birthday giving ``age`` at 31 August 2026."""
    return dt.date(2026 - age, 3, 15)


def crafted_inputs() -> dict[str, pl.DataFrame]:
    pupils = [  # urn, upn, age, year group, fsm, sen, am, pm, extract
        ("100001", "P1", 7, "2", True, "N", "/", "\\", "eA"),
        ("100001", "P2", 9, "4", False, "K", "I", "I", "eA"),
        ("100001", "P3", 6, "1", True, "N", "L", "\\", "eA"),
        ("100002", "P4", 12, "7", False, "N", "/", "U", "eB"),
        ("100002", "P5", 14, "9", True, "E", "B", "B", "eB"),
        ("100002", "P6", 16, "11", False, "N", "/", "\\", "eB"),
        ("100003", "P7", 8, "3", False, "N", "D", "D", "eC"),
        ("100003", "P8", 10, "5", True, "K", "G", "O", "eC"),
        ("100004", "P9", 5, "R", False, "N", "M", "\\", "eD"),
        ("100005", "P10", 13, "8", False, "N", "/", "\\", "eE"),
        ("100006", "P11", 7, "2", False, "N", "/", "\\", "eF"),
        ("100007", "P12", 9, "4", False, "N", "/", "\\", "eG"),
    ]
    marks = pl.DataFrame(
        [(u, p, DAY, s, c, e) for u, p, _, _, _, _, am, pm, e in pupils for s, c in (("AM", am), ("PM", pm))],
        schema=["urn", "upn", "date", "session", "code", "extract_id"],
        orient="row",
    )
    pupil_frame = pl.DataFrame(
        [(u, p, _dob(a), yg, f, sen) for u, p, a, yg, f, sen, *_ in pupils],
        schema=["urn", "upn", "date_of_birth", "nc_year_group", "fsm_eligible", "sen_provision"],
        orient="row",
    )
    school_rows = [
        ("100001", "830", "Primary"),
        ("100002", "830", "Secondary"),
        ("100003", "831", "Primary"),
        ("100004", "201", "Primary"),
        ("100005", "831", "Secondary"),
        ("100006", "830", "Primary"),
        ("100007", "830", "Out of scope"),
    ]
    schools = pl.DataFrame(
        [
            {
                "urn": urn,
                "attendance_phase": phase,
                "status": "Open",
                "open_date": None,
                "close_date": None,
                "laestab": LAS[la].old_la_code + "2001",
                "school_name": f"School {urn}",
                "old_la_code": la,
                "new_la_code": LAS[la].new_la_code,
                "la_name": LAS[la].la_name,
                "region_code": LAS[la].region_code,
                "region_name": LAS[la].region_name,
            }
            for urn, la, phase in school_rows
        ],
        schema_overrides={"open_date": pl.Date, "close_date": pl.Date},
    )
    extracts = pl.DataFrame(
        {
            "extract_id": ["eA", "eB", "eC", "eD", "eE", "eF", "eG"],
            "status": ["complete"] * 5 + ["incomplete", "complete"],
        }
    )
    optouts = pl.DataFrame(
        {
            "urn": ["100005"],
            "status": ["opted_out"],
            "effective_at": [dt.datetime(2026, 11, 17, 8, 0, tzinfo=dt.UTC)],
        }
    )
    return {
        "marks": marks,
        "pupils": pupil_frame,
        "schools": schools,
        "extracts": extracts,
        "optouts": optouts,
    }


def crafted_day_rows() -> pl.DataFrame:
    inputs = crafted_inputs()
    result = scope.apply_scope(
        inputs["marks"],
        extracts=inputs["extracts"],
        pupils=inputs["pupils"],
        schools=inputs["schools"],
        optouts=inputs["optouts"],
    )
    cells = views.cell_rows(views.pupil_day_rows(result.counted))
    return views.day_rows(cells, scope.schools_in_scope(inputs["schools"], DAY))


def row(
    rows: pl.DataFrame, level: str, phase: str = "Total", la: str = "", region: str = "", fsm: str = "Total"
) -> dict:
    match = rows.filter(
        (pl.col("geographic_level") == level)
        & (pl.col("education_phase") == phase)
        & (pl.col("old_la_code") == la)
        & (pl.col("region_code") == region)
        & (pl.col("fsm_status") == fsm)
        & (pl.col("sen_status") == "Total")
        & (pl.col("year_group") == "Total")
    )
    assert match.height == 1, f"expected one row for {level}/{phase}/{la}/{region}/{fsm}, got {match.height}"
    return match.row(0, named=True)


EM = LAS["830"].region_code  # East Midlands
LONDON = LAS["201"].region_code


def test_scope_holds_back_incomplete_extracts_and_excludes_opted_out_and_out_of_scope() -> None:
    inputs = crafted_inputs()
    result = scope.apply_scope(
        inputs["marks"],
        extracts=inputs["extracts"],
        pupils=inputs["pupils"],
        schools=inputs["schools"],
        optouts=inputs["optouts"],
    )
    assert result.excluded["extract_not_complete"] == 2  # P11's two marks
    assert result.excluded["school_opted_out"] == 2  # P10
    assert result.excluded["school_phase_out_of_scope"] == 2  # P12
    assert result.excluded["not_compulsory_school_age"] == 2  # P6 is 16
    assert result.pending_extracts.rows() == [("eF", "100006", DAY)]
    assert sorted(result.counted["upn"].unique().to_list()) == [
        "P1",
        "P2",
        "P3",
        "P4",
        "P5",
        "P7",
        "P8",
        "P9",
    ]


def test_la_830_primary_matches_hand_computation() -> None:
    r = row(crafted_day_rows(), "Local authority", "Primary", la="830", region=EM)
    assert (r["possible_sessions"], r["present_sessions"], r["approved_educational_activity"]) == (6, 4, 0)
    assert (r["overall_attendance"], r["authorised_absence"], r["unauthorised_absence"]) == (4, 2, 0)
    assert (r["overall_absence"], r["late_sessions"], r["enrolments"], r["num_schools"]) == (2, 1, 3, 1)
    assert (r["reason_i_authorised_illness"], r["reason_l_present_late_before_registers_closed"]) == (2, 1)
    assert (r["reason_present_am"], r["reason_present_pm"]) == (1, 2)
    assert r["attendance_perc"] == pytest.approx(400 / 6)
    assert r["illness_perc"] == pytest.approx(200 / 6)
    assert r["school_all_count"] == 2  # A and F (F submitted nothing complete)
    assert r["school_submitted_count"] == 1


def test_la_830_total_and_secondary_match_hand_computation() -> None:
    rows = crafted_day_rows()
    sec = row(rows, "Local authority", "Secondary", la="830", region=EM)
    assert (sec["possible_sessions"], sec["present_sessions"], sec["approved_educational_activity"]) == (
        4,
        1,
        2,
    )
    assert (sec["overall_attendance"], sec["unauthorised_absence"], sec["late_sessions"]) == (3, 1, 1)
    assert (
        sec["reason_b_aea_education_off_site"],
        sec["reason_u_unauthorised_late_after_registers_closed"],
    ) == (2, 1)
    assert sec["enrolments"] == 2  # P6 (16) is out of scope
    total = row(rows, "Local authority", "Total", la="830", region=EM)
    assert (total["possible_sessions"], total["overall_attendance"], total["overall_absence"]) == (10, 7, 3)
    assert (total["authorised_absence"], total["unauthorised_absence"], total["late_sessions"]) == (2, 1, 2)
    assert (total["enrolments"], total["num_schools"], total["school_all_count"]) == (5, 2, 3)
    assert total["overall_absence_perc"] == pytest.approx(30.0)
    assert total["unauthorised_absence_perc"] == pytest.approx(10.0)


def test_dual_registered_pupil_counts_in_reasons_not_in_possible_or_enrolments() -> None:
    r = row(crafted_day_rows(), "Local authority", "Primary", la="831", region=EM)
    assert (r["possible_sessions"], r["unauthorised_absence"], r["enrolments"], r["num_schools"]) == (
        2,
        2,
        1,
        1,
    )
    assert (
        r["reason_d_dual_registration"],
        r["reason_g_unauthorised_holiday"],
        r["reason_o_other_unauthorised"],
    ) == (2, 1, 1)
    assert r["unauthorised_absence_perc"] == pytest.approx(100.0)
    assert (r["unauth_hol_perc"], r["unauth_oth_perc"]) == (pytest.approx(50.0), pytest.approx(50.0))


def test_opted_out_school_is_not_counted_but_stays_in_the_register_count() -> None:
    r = row(crafted_day_rows(), "Local authority", "Total", la="831", region=EM)
    assert (r["num_schools"], r["school_submitted_count"], r["school_all_count"]) == (1, 1, 2)
    assert r["possible_sessions"] == 2


def test_region_and_national_totals_match_hand_computation() -> None:
    rows = crafted_day_rows()
    em = row(rows, "Regional", region=EM)
    assert (em["possible_sessions"], em["present_sessions"], em["approved_educational_activity"]) == (
        12,
        5,
        2,
    )
    assert (em["overall_attendance"], em["authorised_absence"], em["unauthorised_absence"]) == (7, 2, 3)
    assert (em["overall_absence"], em["late_sessions"], em["enrolments"], em["num_schools"]) == (5, 2, 6, 3)
    london = row(rows, "Regional", region=LONDON)
    assert (
        london["possible_sessions"],
        london["reason_m_authorised_medical_dental"],
        london["enrolments"],
    ) == (2, 1, 1)
    assert london["appointments_perc"] == pytest.approx(50.0)
    nat = row(rows, "National")
    assert (nat["possible_sessions"], nat["present_sessions"], nat["approved_educational_activity"]) == (
        14,
        6,
        2,
    )
    assert (nat["overall_attendance"], nat["authorised_absence"], nat["unauthorised_absence"]) == (8, 3, 3)
    assert (nat["overall_absence"], nat["late_sessions"], nat["enrolments"], nat["num_schools"]) == (
        6,
        2,
        7,
        4,
    )
    assert (nat["school_submitted_count"], nat["school_all_count"]) == (4, 6)
    assert nat["overall_absence_perc"] == pytest.approx(600 / 14)
    assert nat["attendance_perc"] == pytest.approx(800 / 14)
    primary = row(rows, "National", "Primary")
    assert (primary["possible_sessions"], primary["overall_absence"], primary["enrolments"]) == (10, 5, 5)


def test_fsm_breakdown_at_national_level() -> None:
    rows = crafted_day_rows()
    eligible = row(rows, "National", fsm="FSM eligible")
    assert (eligible["possible_sessions"], eligible["overall_absence"], eligible["enrolments"]) == (8, 2, 4)
    other = row(rows, "National", fsm="Not known to be eligible for FSM")
    assert (other["possible_sessions"], other["overall_absence"], other["enrolments"]) == (6, 4, 3)
    assert (
        rows.filter((pl.col("geographic_level") == "Local authority") & (pl.col("fsm_status") != "Total")).height == 0
    )


def test_week_sums_sessions_and_averages_enrolments_and_schools() -> None:
    day1 = crafted_day_rows()
    day2 = day1.with_columns(
        pl.lit(DAY + dt.timedelta(days=1)).alias("period_start"),
        pl.lit(DAY + dt.timedelta(days=1)).alias("period_end"),
        (pl.col("enrolments") + 1).alias("enrolments"),
        (pl.col("num_schools") * 0).alias("num_schools"),
    )
    days = pl.concat([day1, day2])
    inputs = crafted_inputs()
    school_days = pl.DataFrame(
        {
            "date": [DAY, DAY + dt.timedelta(days=1)],
            "urn": ["100001", "100003"],
            "education_phase": ["Primary", "Primary"],
            "region_code": [EM, EM],
            "region_name": ["East Midlands"] * 2,
            "old_la_code": ["830", "831"],
            "new_la_code": [LAS["830"].new_la_code, LAS["831"].new_la_code],
            "la_name": [LAS["830"].la_name, LAS["831"].la_name],
        }
    )
    weeks = views.period_rows(days, views.WEEK, school_days, scope.schools_in_scope(inputs["schools"], DAY))
    nat = row(weeks, "National")
    assert nat["period_start"] == dt.date(2026, 11, 16) and nat["period_end"] == dt.date(2026, 11, 22)
    assert nat["possible_sessions"] == 28
    assert nat["enrolments"] == pytest.approx(7.5)  # mean of 7 and 8
    assert nat["num_schools"] == pytest.approx(2.0)  # mean of 4 and 0
    assert nat["school_submitted_count"] == 2  # distinct schools over the week
    assert nat["overall_absence_perc"] == pytest.approx(1200 / 28)


def test_persistent_absence_from_period_totals() -> None:
    totals = pl.DataFrame(
        {
            "urn": ["1", "1", "1", "1", "2"],
            "upn": ["a", "b", "c", "d", "e"],
            "possible_sessions": [100, 100, 20, 0, 50],
            "overall_absence": [10, 9, 10, 0, 25],
            "education_phase": ["Primary"] * 5,
            "region_code": ["R"] * 5,
            "region_name": ["Reg"] * 5,
            "old_la_code": ["830"] * 5,
            "new_la_code": ["E"] * 5,
            "la_name": ["L"] * 5,
            "fsm_status": ["Total"] * 5,
            "sen_status": ["Total"] * 5,
            "year_group": ["Total"] * 5,
            "period_start": [dt.date(2026, 9, 1)] * 5,
        }
    )
    rows = views.pa_rows(totals)
    nat = rows.filter((pl.col("geographic_level") == "National") & (pl.col("education_phase") == "Total")).row(
        0, named=True
    )
    # enrolments with a possible session: a, b, c, e (d had none); >=10%: a (exactly 10%), c, e; >=50%: c, e
    assert (nat["pa_enrolments"], nat["enrolments_pa_10_exact"], nat["enrolments_pa_50_exact"]) == (4, 3, 2)
