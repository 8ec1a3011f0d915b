"""Views: National, Regional and Local authority figures by education phase, daily and over periods.

Every view row has the same dimensions (:data:`VIEW_DIMENSIONS`):

- time: ``time_frame`` (Day, Week, Term, Year to date), ``period_start``, ``period_end``, ``term``
  (Term rows), ``academic_year`` (``202526``);
- geography: ``geographic_level`` (National, Regional, Local authority) with the region and LA columns
  (empty where not applicable);
- ``education_phase``: Primary, Secondary, Special or Total;
- characteristics: ``fsm_status``, ``sen_status``, ``year_group``, each "Total" except on breakdown rows.
  Breakdown rows (one characteristic at a time) exist at National and Regional level only.

Counts are additive, so a Week, Term or Year-to-date row is the sum of its days; ``enrolments`` and
``num_schools`` over a period are the mean of the daily values, as DfE does [S: ADD prerun_utils.R
``num_schools = mean(num_schools), enrolments = mean(enrolments)``]. ``school_submitted_count`` is the
number of distinct schools with counted data in the period, ``school_all_count`` the in-scope open schools
in the register on the day (Day rows) or on the last day of data (periods): coverage, published beside
every row of the geography and phase.
Persistent absence comes from per-enrolment totals (:func:`pa_rows`) for Term and Year-to-date rows only.

School-level rows (:func:`school_day_rows`) are for the restricted SCHOOL zone only, never published.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl

from official_stats import periods
from official_stats.measures import (
    COUNT_COLUMNS,
    PA_COUNT_COLUMNS,
    PA_RATE_COLUMNS,
    RATE_COLUMNS,
    pa_count_exprs,
    persistent_absence_flags,
    session_count_exprs,
    sum_counts_exprs,
    with_pa_rates,
    with_rates,
)
from official_stats.scope import CHARACTERISTIC_COLUMNS, GEOGRAPHY_COLUMNS
from schemas.reference import ENGLAND_CODE, ENGLAND_NAME

NATIONAL, REGIONAL, LOCAL_AUTHORITY = "National", "Regional", "Local authority"
TOTAL = "Total"
DAY, WEEK, TERM, YEAR_TO_DATE = "Day", "Week", "Term", "Year to date"

#: Geography columns each level groups by.
LEVEL_COLUMNS: dict[str, tuple[str, ...]] = {
    NATIONAL: (),
    REGIONAL: ("region_code", "region_name"),
    LOCAL_AUTHORITY: GEOGRAPHY_COLUMNS,
}
#: Breakdowns (None = all pupils) and the levels they are produced at.
BREAKDOWNS: tuple[str | None, ...] = (None, *CHARACTERISTIC_COLUMNS)
BREAKDOWN_LEVELS = (NATIONAL, REGIONAL)

TIME_DIMENSIONS: tuple[str, ...] = ("time_frame", "period_start", "period_end", "academic_year", "term")
PLACE_DIMENSIONS: tuple[str, ...] = ("geographic_level", "country_code", "country_name", *GEOGRAPHY_COLUMNS)
GROUP_DIMENSIONS: tuple[str, ...] = ("education_phase", *CHARACTERISTIC_COLUMNS)
VIEW_DIMENSIONS: tuple[str, ...] = TIME_DIMENSIONS + PLACE_DIMENSIONS + GROUP_DIMENSIONS
#: Dimensions without time: one "series".
SERIES_DIMENSIONS: tuple[str, ...] = ("geographic_level", *GEOGRAPHY_COLUMNS, *GROUP_DIMENSIONS)

PUPIL_COUNT_COLUMNS = ("enrolments", "num_schools")
COVERAGE_COLUMNS = ("school_submitted_count", "school_all_count")

PUPIL_ATTRIBUTES: tuple[str, ...] = (
    "academic_year_start",
    "term",
    "education_phase",
    *GEOGRAPHY_COLUMNS,
    *CHARACTERISTIC_COLUMNS,
)


# --- pupil days, cells, school days -------------------------------------------------------------------


def pupil_day_rows(counted: pl.DataFrame) -> pl.DataFrame:
    """One row per pupil (enrolment: ``urn``, ``upn``) and date with every count, from counted marks."""
    keys = ["date", "urn", "upn", *PUPIL_ATTRIBUTES]
    return counted.lazy().group_by(keys).agg(session_count_exprs()).collect()


def cell_rows(pupil_days: pl.DataFrame) -> pl.DataFrame:
    """Pupil days summed per date, school and characteristics: the building block of every view.

    ``enrolments``: pupils with at least one possible session that day (pupils expected to attend).
    """
    keys = ["date", "urn", *PUPIL_ATTRIBUTES]
    return (
        pupil_days.lazy()
        .group_by(keys)
        .agg(
            *sum_counts_exprs(),
            (pl.col("possible_sessions") > 0).sum().cast(pl.Int64).alias("enrolments"),
        )
        .collect()
    )


def school_day_rows(cells: pl.DataFrame) -> pl.DataFrame:
    """School-level daily figures (restricted SCHOOL zone)."""
    keys = ["date", "urn", "academic_year_start", "education_phase", *GEOGRAPHY_COLUMNS]
    rows = cells.group_by(keys).agg(*sum_counts_exprs(), pl.col("enrolments").sum().cast(pl.Int64))
    return with_rates(rows).sort("date", "urn")


# --- levels, phases and breakdowns --------------------------------------------------------------------


def aggregate_levels(
    frame: pl.DataFrame, aggregations: Sequence[pl.Expr], keys: Sequence[str], breakdowns: bool = True
) -> pl.DataFrame:
    """Aggregate ``frame`` at National, Regional and LA level, by phase and Total, with breakdowns.

    ``keys`` are extra group keys kept as they are (e.g. ``date``). The result has every column of
    :data:`PLACE_DIMENSIONS` and :data:`GROUP_DIMENSIONS` (empty strings where not applicable).
    """
    parts: list[pl.DataFrame] = []
    lazy = frame.lazy()
    for level, geo in LEVEL_COLUMNS.items():
        for by_phase in (True, False):
            for breakdown in BREAKDOWNS:
                if breakdown is not None and (not breakdowns or level not in BREAKDOWN_LEVELS):
                    continue
                group = [*keys, *geo]
                if by_phase:
                    group.append("education_phase")
                if breakdown is not None:
                    group.append(breakdown)
                part = lazy.group_by(group).agg(aggregations)
                fills = {
                    "geographic_level": pl.lit(level),
                    "country_code": pl.lit(ENGLAND_CODE),
                    "country_name": pl.lit(ENGLAND_NAME),
                }
                fills.update({c: pl.lit("") for c in GEOGRAPHY_COLUMNS if c not in geo})
                if not by_phase:
                    fills["education_phase"] = pl.lit(TOTAL)
                fills.update({c: pl.lit(TOTAL) for c in CHARACTERISTIC_COLUMNS if c != breakdown})
                parts.append(part.with_columns(**fills).collect())
    columns = [*keys, *PLACE_DIMENSIONS, *GROUP_DIMENSIONS]
    ordered = [p.select(columns + [c for c in p.columns if c not in columns]) for p in parts]
    return pl.concat(ordered, how="vertical_relaxed")


def _cast_place(frame: pl.DataFrame) -> pl.DataFrame:
    names = [c for c in PLACE_DIMENSIONS + GROUP_DIMENSIONS if c in frame.columns]
    return frame.with_columns([pl.col(c).cast(pl.String).fill_null("") for c in names])


def school_coverage_rows(school_days: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Distinct schools (``school_submitted_count``) per level and phase (breakdown Total) and ``keys``."""
    rows = aggregate_levels(
        _cast_place(school_days),
        [pl.col("urn").n_unique().cast(pl.Int64).alias("school_submitted_count")],
        keys,
        breakdowns=False,
    )
    return rows.drop(*CHARACTERISTIC_COLUMNS)


def register_coverage_rows(register: pl.DataFrame) -> pl.DataFrame:
    """In-scope open schools per level and phase (``school_all_count``), from the register."""
    frame = register.select(
        pl.col("urn"),
        pl.col("attendance_phase").alias("education_phase"),
        *[pl.col(c) for c in GEOGRAPHY_COLUMNS],
    )
    rows = aggregate_levels(
        _cast_place(frame),
        [pl.col("urn").n_unique().cast(pl.Int64).alias("school_all_count")],
        [],
        breakdowns=False,
    )
    return rows.drop(*CHARACTERISTIC_COLUMNS)


def _academic_year_code(start: pl.Expr) -> pl.Expr:
    return start.cast(pl.String) + ((start + 1) % 100).cast(pl.String).str.zfill(2)


_COVERAGE_KEYS = ["geographic_level", *GEOGRAPHY_COLUMNS, "education_phase"]


def _with_coverage(
    rows: pl.DataFrame, submitted: pl.DataFrame, register: pl.DataFrame, time_keys: Sequence[str]
) -> pl.DataFrame:
    sub = submitted.select([*time_keys, *_COVERAGE_KEYS, "school_submitted_count"])
    reg = register.select([*_COVERAGE_KEYS, "school_all_count"])
    out = rows.join(sub, on=[*time_keys, *_COVERAGE_KEYS], how="left", nulls_equal=True)
    out = out.join(reg, on=_COVERAGE_KEYS, how="left", nulls_equal=True)
    return out.with_columns(pl.col("school_submitted_count").fill_null(0), pl.col("school_all_count").fill_null(0))


# --- daily views ---------------------------------------------------------------------------------------


def day_rows(cells: pl.DataFrame, register_in_scope: pl.DataFrame) -> pl.DataFrame:
    """Daily view rows for every level, phase and breakdown; ``cells`` may hold several dates."""
    cells = _cast_place(cells)
    aggregations = [
        *sum_counts_exprs(),
        pl.col("enrolments").sum().cast(pl.Float64),
        pl.col("urn").n_unique().cast(pl.Float64).alias("num_schools"),
    ]
    rows = aggregate_levels(cells, aggregations, ["date", "academic_year_start", "term"])
    submitted = school_coverage_rows(cells.select("date", "urn", "education_phase", *GEOGRAPHY_COLUMNS), ["date"])
    rows = _with_coverage(rows, submitted, register_coverage_rows(register_in_scope), ["date"])
    rows = rows.with_columns(
        pl.lit(DAY).alias("time_frame"),
        pl.col("date").alias("period_start"),
        pl.col("date").alias("period_end"),
        _academic_year_code(pl.col("academic_year_start")).alias("academic_year"),
    )
    return finish(rows)


def finish(rows: pl.DataFrame) -> pl.DataFrame:
    """Columns in the view order, with rates; PA columns null where absent."""
    for column in PA_COUNT_COLUMNS:
        if column not in rows.columns:
            rows = rows.with_columns(pl.lit(None, dtype=pl.Int64).alias(column))
    if "term" not in rows.columns:
        rows = rows.with_columns(pl.lit(None, dtype=pl.String).alias("term"))
    rows = with_pa_rates(with_rates(rows))
    value_columns = [*COUNT_COLUMNS, *PUPIL_COUNT_COLUMNS, *COVERAGE_COLUMNS, *PA_COUNT_COLUMNS]
    rate_columns = [*RATE_COLUMNS, *(name for name, _ in PA_RATE_COLUMNS)]
    rows = rows.with_columns(
        pl.col("period_start").cast(pl.Date),
        pl.col("period_end").cast(pl.Date),
        *[pl.col(c).cast(pl.Int64) for c in [*COUNT_COLUMNS, *COVERAGE_COLUMNS, *PA_COUNT_COLUMNS]],
        *[pl.col(c).cast(pl.Float64) for c in PUPIL_COUNT_COLUMNS],
    )
    return rows.select([*VIEW_DIMENSIONS, *value_columns, *rate_columns])


# --- periods -------------------------------------------------------------------------------------------


def with_period(frame: pl.DataFrame, time_frame: str, date_column: str = "period_start") -> pl.DataFrame:
    """Assign each daily row (date in ``date_column``) to its Week, Term or Year-to-date period."""
    date = pl.col(date_column)
    if time_frame == WEEK:
        start = date - pl.duration(days=date.dt.weekday() - 1)
        return frame.with_columns(
            start.alias("_start"),
            (start + pl.duration(days=6)).alias("_end"),
            pl.lit(None, dtype=pl.String).alias("_term"),
        )
    year = periods.academic_year_start_expr(date)
    if time_frame == TERM:
        month = date.dt.month()
        start = (
            pl.when(month >= 9)
            .then(pl.date(year, 9, 1))
            .when(month <= 4)
            .then(pl.date(year + 1, 1, 1))
            .otherwise(pl.date(year + 1, 5, 1))
        )
        end = (
            pl.when(month >= 9)
            .then(pl.date(year, 12, 31))
            .when(month <= 4)
            .then(pl.date(year + 1, 4, 30))
            .otherwise(pl.date(year + 1, 8, 31))
        )
        return frame.with_columns(start.alias("_start"), end.alias("_end"), periods.term_expr(date).alias("_term"))
    if time_frame == YEAR_TO_DATE:
        return frame.with_columns(
            pl.date(year, 9, 1).alias("_start"),
            pl.lit(None, dtype=pl.Date).alias("_end"),
            pl.lit(None, dtype=pl.String).alias("_term"),
        )
    raise ValueError(f"unknown time frame {time_frame!r}")


def period_rows(
    days: pl.DataFrame,
    time_frame: str,
    school_days: pl.DataFrame,
    register_in_scope: pl.DataFrame,
    pa: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Week, Term or Year-to-date rows from Day view rows (``days``) of the same academic year(s).

    ``school_days``: ``date, urn, education_phase`` + geography of schools with counted data, for the distinct
    school counts; ``pa``: rows from :func:`pa_rows` keyed by ``period_start`` (Term / Year to date).
    A Year-to-date period ends on the last day with data.
    """
    days = days.filter(pl.col("time_frame") == DAY)
    if days.height == 0:
        return finish(days.clear())
    assigned = with_period(days, time_frame)
    rows = assigned.group_by(["_start", "_end", "_term", "academic_year", *SERIES_DIMENSIONS]).agg(
        *sum_counts_exprs(),
        pl.col("enrolments").mean().alias("enrolments"),
        pl.col("num_schools").mean().alias("num_schools"),
        pl.col("period_end").max().alias("_last_day"),
    )
    if time_frame == YEAR_TO_DATE:
        last = rows.group_by("academic_year").agg(pl.col("_last_day").max().alias("_ytd_end"))
        rows = rows.join(last, on="academic_year").with_columns(pl.col("_ytd_end").alias("_end")).drop("_ytd_end")
    rows = rows.rename({"_start": "period_start", "_end": "period_end", "_term": "term"}).drop("_last_day")
    rows = rows.with_columns(
        pl.lit(time_frame).alias("time_frame"),
        pl.lit(ENGLAND_CODE).alias("country_code"),
        pl.lit(ENGLAND_NAME).alias("country_name"),
    )

    school_days = _cast_place(school_days.with_columns(pl.col("date").alias("period_start")))
    assigned_schools = with_period(school_days, time_frame).rename({"_start": "p_start"})
    submitted = school_coverage_rows(
        assigned_schools.select("p_start", "urn", "education_phase", *GEOGRAPHY_COLUMNS), ["p_start"]
    ).rename({"p_start": "period_start"})
    rows = _with_coverage(rows, submitted, register_coverage_rows(register_in_scope), ["period_start"])
    if pa is not None and pa.height:
        pa_keys = ["period_start", *SERIES_DIMENSIONS]
        rows = rows.join(pa.select([*pa_keys, *PA_COUNT_COLUMNS]), on=pa_keys, how="left", nulls_equal=True)
    return finish(rows)


def pa_rows(pupil_totals: pl.DataFrame, keys: Sequence[str] = ("period_start",)) -> pl.DataFrame:
    """Persistent and severe absence per level, phase and breakdown, from per-enrolment period totals.

    ``pupil_totals``: one row per enrolment (``urn``, ``upn``) and period (``keys``) with
    ``possible_sessions``, ``overall_absence``, ``education_phase``, geography and characteristics.
    """
    flagged = _cast_place(persistent_absence_flags(pupil_totals))
    rows = aggregate_levels(flagged, pa_count_exprs(), list(keys))
    return rows.drop("country_code", "country_name")


def all_period_rows(
    days: pl.DataFrame,
    school_days: pl.DataFrame,
    register_in_scope: pl.DataFrame,
    pa_term: pl.DataFrame | None = None,
    pa_ytd: pl.DataFrame | None = None,
    time_frames: Sequence[str] = (WEEK, TERM, YEAR_TO_DATE),
) -> pl.DataFrame:
    parts = []
    for frame in time_frames:
        pa = pa_term if frame == TERM else pa_ytd if frame == YEAR_TO_DATE else None
        parts.append(period_rows(days, frame, school_days, register_in_scope, pa))
    return pl.concat(parts, how="vertical_relaxed")


def week_start(day: dt.date) -> dt.date:
    return periods.week_bounds(day)[0]
