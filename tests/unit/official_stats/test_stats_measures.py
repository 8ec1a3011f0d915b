"""DfE's session arithmetic, rates and persistent absence, against hand-computed cases."""

from __future__ import annotations

import polars as pl
import pytest

from official_stats import measures


def counts(codes: list[str]) -> dict:
    marks = pl.DataFrame({"pupil": ["p"] * len(codes), "code": codes})
    return measures.session_counts(marks, ["pupil"]).row(0, named=True)


def test_every_category_follows_dfe_arithmetic() -> None:
    # / \ L (present), B K (AEA), I M C1 (authorised), G U N (unauthorised), D Y1 Z # X (not possible)
    c = counts(["/", "\\", "L", "B", "K", "I", "M", "C1", "G", "U", "N", "D", "Y1", "Z", "#", "X"])
    assert c["present_sessions"] == 3
    assert c["approved_educational_activity"] == 2
    assert c["overall_attendance"] == 5
    assert c["authorised_absence"] == 3
    assert c["unauthorised_absence"] == 3
    assert c["overall_absence"] == 6
    assert c["possible_sessions"] == 11
    assert c["late_sessions"] == 2  # L and U


def test_reason_columns_use_dfe_names() -> None:
    c = counts(["/", "\\", "I", "I", "D", "#", "Q", "Y4"])
    assert c["reason_present_am"] == 1 and c["reason_present_pm"] == 1
    assert c["reason_i_authorised_illness"] == 2
    assert c["reason_d_dual_registration"] == 1
    assert c["reason_not_attending_planned_closed"] == 1
    assert c["reason_q_la_arrangements"] == 1
    assert c["reason_y4_closed_session_cancelled"] == 1
    assert c["possible_sessions"] == 4


def test_legacy_codes_count_where_dfe_counts_them() -> None:
    c = counts(["H", "J", "F"])  # H authorised holiday, J interview (AEA), F legacy family holiday
    assert (c["authorised_absence"], c["approved_educational_activity"], c["possible_sessions"]) == (2, 1, 3)
    assert (c["reason_h_authorised_holiday"], c["reason_j_aea_interview"]) == (1, 1)


def test_rates_are_sessions_over_possible_times_100() -> None:
    frame = measures.with_rates(pl.DataFrame([counts(["/", "\\", "I", "G", "M", "D"])]))
    r = frame.row(0, named=True)
    # possible = 5 (D excluded): attendance 2/5, absence 3/5, authorised 2/5 (I, M), unauthorised 1/5 (G)
    assert r["attendance_perc"] == pytest.approx(40.0)
    assert r["overall_absence_perc"] == pytest.approx(60.0)
    assert r["authorised_absence_perc"] == pytest.approx(40.0)
    assert r["unauthorised_absence_perc"] == pytest.approx(20.0)
    assert r["illness_perc"] == pytest.approx(20.0)
    assert r["appointments_perc"] == pytest.approx(20.0)
    assert r["unauth_hol_perc"] == pytest.approx(20.0)


def test_rates_are_null_without_possible_sessions() -> None:
    r = measures.with_rates(pl.DataFrame([counts(["D", "D"])])).row(0, named=True)
    assert r["possible_sessions"] == 0
    assert r["attendance_perc"] is None and r["overall_absence_perc"] is None


def test_reason_rate_names_are_dfes() -> None:
    names = {name for name, _ in measures.REASON_RATES}
    assert {
        "illness_perc",
        "appointments_perc",
        "unauth_hol_perc",
        "unauth_oth_perc",
        "unauth_late_registers_closed_perc",
        "unauth_not_yet_perc",
        "auth_religious_perc",
        "auth_study_perc",
        "auth_mob_perc",
        "auth_excluded_perc",
        "auth_performance_perc",
        "auth_interview_perc",
        "auth_part_time_perc",
        "auth_other_perc",
    } <= names


@pytest.mark.parametrize(
    ("possible", "absence", "pa10", "pa50"),
    [
        (380, 38, True, False),  # exactly 10%: persistent absence
        (380, 37, False, False),  # 9.7%
        (10, 5, True, True),  # exactly 50%: severe
        (10, 4, True, False),
        (0, 0, False, False),  # no possible sessions: not an enrolment of the period
    ],
)
def test_persistent_and_severe_absence_thresholds(possible: int, absence: int, pa10: bool, pa50: bool) -> None:
    flags = measures.persistent_absence_flags(
        pl.DataFrame({"possible_sessions": [possible], "overall_absence": [absence]})
    ).row(0, named=True)
    assert (flags["is_pa_10"], flags["is_pa_50"], flags["is_enrolment"]) == (pa10, pa50, possible > 0)


def test_pa_rate_is_persistently_absent_over_enrolments() -> None:
    totals = measures.persistent_absence_flags(
        pl.DataFrame({"possible_sessions": [100, 100, 100, 100, 0], "overall_absence": [0, 10, 60, 5, 0]})
    )
    agg = measures.with_pa_rates(totals.select(measures.pa_count_exprs())).row(0, named=True)
    assert (agg["pa_enrolments"], agg["enrolments_pa_10_exact"], agg["enrolments_pa_50_exact"]) == (4, 2, 1)
    assert agg["pa_perc"] == pytest.approx(50.0)
    assert agg["severe_absence_perc"] == pytest.approx(25.0)
