"""Time frames of the statistics: academic year, terms, ISO weeks, and the second half of the summer term.

Definitions (docs/statistics.md "Time frames"):

- Academic year: 1 September to 31 August; published as ``YYYYZZ`` (``202526``), time_identifier
  "Academic year" [S: domain README §2, DfE YTD file ``time_period`` 202526].
- Terms are fixed date ranges, so that they do not depend on each school's term dates (which the feed does
  not carry): Autumn 1 Sep - 31 Dec, Spring 1 Jan - 30 Apr, Summer 1 May - 31 Aug. Easter falls in late
  March or April, so "Spring" ends at the end of April rather than at each school's Easter break. A school
  day in August (rare) counts in the Summer term of the academic year that is ending.
- Weeks are ISO weeks (Monday to Sunday), published as ``time_period`` = ISO year and ``time_identifier``
  "Week NN" [S: DG51 "2024 Week 37"]. EES accepts "Week 1" to "Week 52" only [S: eesyscreener
  data-raw/acceptable_values.R]; ISO week 53 (28 Dec - 3 Jan in 2026) always falls in the Christmas holiday
  and is not published as a week (:func:`publishable_week`).
- Second half of the summer term: from the Monday after the spring bank holiday week (the bank holiday is the
  last Monday in May; half term is normally that week) [I: school term calendars; DfE's methodology says
  15-year-olds' sessions in the second half of the summer term are removed but its text is truncated].
"""

from __future__ import annotations

import calendar
import datetime as dt
from enum import StrEnum

import polars as pl


class Term(StrEnum):
    AUTUMN = "Autumn term"
    SPRING = "Spring term"
    SUMMER = "Summer term"


TERMS: tuple[Term, ...] = (Term.AUTUMN, Term.SPRING, Term.SUMMER)
WEEKDAY_NAMES: tuple[str, ...] = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)


def academic_year_start(day: dt.date) -> int:
    """Calendar year in which the academic year containing ``day`` began (1 September)."""
    return day.year if day.month >= 9 else day.year - 1


def academic_year_code(start_year: int) -> str:
    """``2025`` -> ``"202526"`` (EES six-digit academic year)."""
    return f"{start_year}{(start_year + 1) % 100:02d}"


def academic_year_bounds(start_year: int) -> tuple[dt.date, dt.date]:
    return dt.date(start_year, 9, 1), dt.date(start_year + 1, 8, 31)


def term_of(day: dt.date) -> Term:
    if day.month >= 9:
        return Term.AUTUMN
    if day.month <= 4:
        return Term.SPRING
    return Term.SUMMER


def term_bounds(start_year: int, term: Term | str) -> tuple[dt.date, dt.date]:
    term = Term(term)
    if term is Term.AUTUMN:
        return dt.date(start_year, 9, 1), dt.date(start_year, 12, 31)
    if term is Term.SPRING:
        return dt.date(start_year + 1, 1, 1), dt.date(start_year + 1, 4, 30)
    return dt.date(start_year + 1, 5, 1), dt.date(start_year + 1, 8, 31)


def week_bounds(day: dt.date) -> tuple[dt.date, dt.date]:
    """Monday and Sunday of the ISO week containing ``day``."""
    monday = day - dt.timedelta(days=day.weekday())
    return monday, monday + dt.timedelta(days=6)


def iso_week_label(day: dt.date) -> tuple[str, str]:
    """(time_period, time_identifier) of the ISO week containing ``day``: ``("2026", "Week 47")``."""
    iso_year, week, _ = day.isocalendar()
    return str(iso_year), f"Week {week}"


def publishable_week(day: dt.date) -> bool:
    """EES has no "Week 53": days in ISO week 53 are not published in daily or weekly files."""
    return day.isocalendar()[1] <= 52


def spring_bank_holiday(year: int) -> dt.date:
    """Last Monday in May."""
    last = dt.date(year, 5, calendar.monthrange(year, 5)[1])
    return last - dt.timedelta(days=last.weekday())


def second_half_summer_start(start_year: int) -> dt.date:
    """First day of the second half of the summer term of academic year ``start_year``/``+1``."""
    return spring_bank_holiday(start_year + 1) + dt.timedelta(days=7)


# --- column-wise versions (Polars expressions over a Date column) -----------------------------------------


def academic_year_start_expr(date: pl.Expr) -> pl.Expr:
    return pl.when(date.dt.month() >= 9).then(date.dt.year()).otherwise(date.dt.year() - 1).cast(pl.Int32)


def academic_year_code_expr(date: pl.Expr) -> pl.Expr:
    start = academic_year_start_expr(date)
    return start.cast(pl.String) + ((start + 1) % 100).cast(pl.String).str.zfill(2)


def term_expr(date: pl.Expr) -> pl.Expr:
    month = date.dt.month()
    return (
        pl.when(month >= 9)
        .then(pl.lit(Term.AUTUMN.value))
        .when(month <= 4)
        .then(pl.lit(Term.SPRING.value))
        .otherwise(pl.lit(Term.SUMMER.value))
    )


def school_days_ending(end: dt.date, count: int) -> list[dt.date]:
    """The ``count`` weekdays up to and including ``end`` (the most recent weekday if ``end`` is not one),
    oldest first."""
    days: list[dt.date] = []
    day = end
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day -= dt.timedelta(days=1)
    return sorted(days)
