"""Scope (age, phase, the 15-year-olds' summer rule), point-of-use rules and time frames."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from official_stats import periods, scope


@pytest.mark.parametrize(
    ("dob", "age"),
    [
        (dt.date(2020, 8, 31), 6),  # sixth birthday on 31 August 2026: 6
        (dt.date(2020, 9, 1), 5),  # born a day later: still 5 on 31 August 2026
        (dt.date(2011, 1, 1), 15),
        (dt.date(2010, 8, 31), 16),
    ],
)
def test_age_is_taken_on_31_august_before_the_academic_year(dob: dt.date, age: int) -> None:
    frame = pl.DataFrame({"dob": [dob], "year": [2026]})
    got = frame.select(scope.age_at_start_of_year_expr(pl.col("dob"), pl.col("year"))).item()
    assert got == age


def test_academic_year_terms_and_weeks() -> None:
    assert periods.academic_year_start(dt.date(2026, 9, 1)) == 2026
    assert periods.academic_year_start(dt.date(2026, 8, 31)) == 2025
    assert periods.academic_year_code(2025) == "202526"
    assert periods.academic_year_code(2099) == "209900"
    assert periods.term_of(dt.date(2026, 12, 31)) is periods.Term.AUTUMN
    assert periods.term_of(dt.date(2027, 4, 30)) is periods.Term.SPRING
    assert periods.term_of(dt.date(2027, 5, 1)) is periods.Term.SUMMER
    assert periods.term_bounds(2026, "Spring term") == (dt.date(2027, 1, 1), dt.date(2027, 4, 30))
    assert periods.week_bounds(dt.date(2026, 11, 19)) == (dt.date(2026, 11, 16), dt.date(2026, 11, 22))
    assert periods.iso_week_label(dt.date(2026, 11, 19)) == ("2026", "Week 47")
    assert not periods.publishable_week(dt.date(2026, 12, 31))  # ISO week 53 of 2026


def test_second_half_of_summer_term_starts_after_the_spring_bank_holiday_week() -> None:
    assert periods.spring_bank_holiday(2027) == dt.date(2027, 5, 31)
    assert periods.second_half_summer_start(2026) == dt.date(2027, 6, 7)
    assert periods.spring_bank_holiday(2026) == dt.date(2026, 5, 25)


def _one_pupil(dob: dt.date, day: dt.date, phase: str = "Secondary") -> pl.DataFrame:
    marks = pl.DataFrame(
        {
            "urn": ["100001"] * 2,
            "upn": ["P"] * 2,
            "date": [day] * 2,
            "session": ["AM", "PM"],
            "code": ["/", "\\"],
            "extract_id": ["e"] * 2,
        }
    )
    result = scope.apply_scope(
        marks,
        extracts=pl.DataFrame({"extract_id": ["e"], "status": ["complete"]}),
        pupils=pl.DataFrame(
            {
                "urn": ["100001"],
                "upn": ["P"],
                "date_of_birth": [dob],
                "nc_year_group": ["11"],
                "fsm_eligible": [False],
                "sen_provision": ["N"],
            }
        ),
        schools=pl.DataFrame(
            {
                "urn": ["100001"],
                "attendance_phase": [phase],
                "region_code": ["E12000004"],
                "region_name": ["East Midlands"],
                "old_la_code": ["830"],
                "new_la_code": ["E10000007"],
                "la_name": ["Derbyshire"],
            }
        ),
    )
    return result.counted


def test_fifteen_year_olds_are_removed_in_the_second_half_of_the_summer_term_only() -> None:
    fifteen = dt.date(2011, 3, 1)  # 15 on 31 August 2026
    assert _one_pupil(fifteen, dt.date(2027, 6, 4)).height == 2  # before the second half
    assert _one_pupil(fifteen, dt.date(2027, 6, 7)).height == 0  # second half: removed
    fourteen = dt.date(2012, 3, 1)
    assert _one_pupil(fourteen, dt.date(2027, 6, 7)).height == 2


def test_only_primary_secondary_and_special_schools_are_in_scope() -> None:
    assert _one_pupil(dt.date(2015, 3, 1), dt.date(2026, 11, 17), "Special").height == 2
    assert _one_pupil(dt.date(2015, 3, 1), dt.date(2026, 11, 17), "Out of scope").height == 0


def test_opt_out_applies_from_its_london_date_and_an_opt_in_reincludes() -> None:
    keys = pl.DataFrame(
        {
            "urn": ["1", "1", "1", "1", "2"],
            "date": [
                dt.date(2026, 6, 30),
                dt.date(2026, 7, 1),
                dt.date(2026, 9, 7),
                dt.date(2026, 9, 8),
                dt.date(2026, 7, 1),
            ],
        }
    )
    optouts = pl.DataFrame(
        {
            "urn": ["1", "1"],
            "status": ["opted_out", "opted_in"],
            # 23:30 UTC on 30 June is 00:30 on 1 July in London (BST)
            "effective_at": [
                dt.datetime(2026, 6, 30, 23, 30, tzinfo=dt.UTC),
                dt.datetime(2026, 9, 8, 7, tzinfo=dt.UTC),
            ],
        }
    )
    assert scope.opted_out_mask(keys, optouts).to_list() == [False, True, True, False, False]


def test_no_optouts_list_excludes_nothing() -> None:
    keys = pl.DataFrame({"urn": ["1"], "date": [dt.date(2026, 9, 8)]})
    assert scope.opted_out_mask(keys, None).to_list() == [False]


def test_register_coverage_counts_open_in_scope_schools() -> None:
    schools = pl.DataFrame(
        {
            "urn": ["1", "2", "3", "4", "5"],
            "attendance_phase": ["Primary", "Secondary", "Special", "Out of scope", "Primary"],
            "status": ["Open", "Open", "Closed", "Open", "Open"],
            "open_date": [None, dt.date(2027, 1, 1), None, None, None],
            "close_date": [None, None, None, None, dt.date(2026, 10, 31)],
        },
        schema_overrides={"open_date": pl.Date, "close_date": pl.Date},
    )
    assert scope.schools_in_scope(schools, dt.date(2026, 11, 17))["urn"].to_list() == ["1"]
