"""The measures, exactly as DfE computes them for "Pupil attendance in schools".

DfE arithmetic [S: dfe-analytical-services/attendance-data-dashboard R/prerun_utils.R@8f4979c, verified on
its data/EES_ytd_data.csv; domain README §1 "DfE arithmetic"]::

    present_sessions              = / + \\ + L
    approved_educational_activity = B + J + P + V + W + K
    overall_attendance            = present_sessions + approved_educational_activity
    authorised_absence            = I + M + R + S + T + H + E + C + C1 + J1 + C2   (+ legacy F, see codes.py)
    unauthorised_absence          = G + U + O + N
    overall_absence               = authorised_absence + unauthorised_absence
    possible_sessions             = overall_attendance + overall_absence   (D, Q, X, Y*, Z, # excluded)
    late_sessions                 = L + U
    every rate                    = sessions / possible_sessions x 100

Each code's category, DfE count column (``reason_*``) and rate column (``illness_perc``...) come from
:mod:`schemas.codes`, the one register-code table.

Persistent absence: an enrolment missing 10% or more of its possible sessions in the period; severe absence:
50% or more. ``pa_perc = enrolments_pa_10_exact / pa_enrolments x 100`` [S: ADD R/dashboard_panels.R
``pa_perc = pa_flag / ytd_enrolments * 100``; EES census files ``enrolments_pa_10_exact``,
``enrolments_pa_50_exact``]. Year-to-date and term only [S: ADD dashboard_panels.R]. The comparison is done
in integers (``absence * 10 >= possible``) so that exactly 10% is persistent absence without float error.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from schemas.codes import REGISTER_CODES, Category, codes_in_category

PRESENT_CODES = sorted(codes_in_category(Category.PRESENT))
AEA_CODES = sorted(codes_in_category(Category.AEA))
AUTHORISED_CODES = sorted(codes_in_category(Category.AUTHORISED))
UNAUTHORISED_CODES = sorted(codes_in_category(Category.UNAUTHORISED))
LATE_CODES_SORTED = sorted(c.code for c in REGISTER_CODES if c.late)

#: The category session counts, in DfE's column order.
SESSION_COUNT_COLUMNS: tuple[str, ...] = (
    "present_sessions",
    "overall_attendance",
    "approved_educational_activity",
    "overall_absence",
    "authorised_absence",
    "unauthorised_absence",
    "late_sessions",
    "possible_sessions",
)

#: (register code, DfE reason column) for every code DfE publishes a count for.
REASON_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (c.code, c.dfe_column) for c in REGISTER_CODES if c.dfe_column is not None
)
REASON_COLUMN_NAMES: tuple[str, ...] = tuple(name for _, name in REASON_COLUMNS)

#: Every additive session count (category counts then reason counts).
COUNT_COLUMNS: tuple[str, ...] = SESSION_COUNT_COLUMNS + REASON_COLUMN_NAMES

#: Headline rates: (rate column, numerator column) [S: ADD prerun_utils.R].
HEADLINE_RATES: tuple[tuple[str, str], ...] = (
    ("attendance_perc", "overall_attendance"),
    ("overall_absence_perc", "overall_absence"),
    ("authorised_absence_perc", "authorised_absence"),
    ("unauthorised_absence_perc", "unauthorised_absence"),
)
#: Reason rates: (DfE rate column, numerator reason column), from schemas.codes.
REASON_RATES: tuple[tuple[str, str], ...] = tuple(
    (c.dfe_rate_column, c.dfe_column)
    for c in REGISTER_CODES
    if c.dfe_rate_column is not None and c.dfe_column is not None
)
RATE_COLUMNS: tuple[str, ...] = tuple(name for name, _ in HEADLINE_RATES + REASON_RATES)

PA_COUNT_COLUMNS: tuple[str, ...] = ("pa_enrolments", "enrolments_pa_10_exact", "enrolments_pa_50_exact")
PA_RATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pa_perc", "enrolments_pa_10_exact"),
    ("severe_absence_perc", "enrolments_pa_50_exact"),
)


def _count(codes: Sequence[str]) -> pl.Expr:
    return pl.col("code").is_in(list(codes)).sum().cast(pl.Int64)


def session_count_exprs() -> list[pl.Expr]:
    """Aggregations over rows with a ``code`` column (one row per session mark) -> every count column."""
    present = _count(PRESENT_CODES)
    aea = _count(AEA_CODES)
    authorised = _count(AUTHORISED_CODES)
    unauthorised = _count(UNAUTHORISED_CODES)
    exprs = [
        present.alias("present_sessions"),
        (present + aea).alias("overall_attendance"),
        aea.alias("approved_educational_activity"),
        (authorised + unauthorised).alias("overall_absence"),
        authorised.alias("authorised_absence"),
        unauthorised.alias("unauthorised_absence"),
        _count(LATE_CODES_SORTED).alias("late_sessions"),
        (present + aea + authorised + unauthorised).alias("possible_sessions"),
    ]
    exprs += [_count([code]).alias(column) for code, column in REASON_COLUMNS]
    return exprs


def session_counts(marks: pl.DataFrame | pl.LazyFrame, by: Sequence[str]) -> pl.DataFrame:
    """Count every measure per group of ``by`` from session-mark rows (each with a register ``code``)."""
    lazy = marks.lazy() if isinstance(marks, pl.DataFrame) else marks
    return lazy.group_by(list(by)).agg(session_count_exprs()).collect()


def sum_counts_exprs(columns: Sequence[str] = COUNT_COLUMNS) -> list[pl.Expr]:
    return [pl.col(c).sum().cast(pl.Int64).alias(c) for c in columns]


def rate(numerator: str, denominator: str) -> pl.Expr:
    """``numerator / denominator x 100``; null (not applicable) where the denominator is 0."""
    return (
        pl.when(pl.col(denominator) > 0)
        .then(pl.col(numerator).cast(pl.Float64) / pl.col(denominator).cast(pl.Float64) * 100.0)
        .otherwise(None)
    )


def with_rates(frame: pl.DataFrame) -> pl.DataFrame:
    """Add DfE's headline and reason rates (over ``possible_sessions``)."""
    return frame.with_columns(
        [rate(num, "possible_sessions").alias(name) for name, num in HEADLINE_RATES + REASON_RATES]
    )


def with_pa_rates(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``pa_perc`` and ``severe_absence_perc`` over ``pa_enrolments``."""
    return frame.with_columns([rate(num, "pa_enrolments").alias(name) for name, num in PA_RATE_COLUMNS])


def persistent_absence_flags(totals: pl.DataFrame) -> pl.DataFrame:
    """Per-enrolment flags from period totals (``possible_sessions``, ``overall_absence``).

    ``is_enrolment``: had at least one possible session in the period (the PA denominator);
    ``is_pa_10``: missed 10% or more; ``is_pa_50``: missed 50% or more (severe absence).
    """
    possible = pl.col("possible_sessions").cast(pl.Int64)
    absence = pl.col("overall_absence").cast(pl.Int64)
    return totals.with_columns(
        (possible > 0).alias("is_enrolment"),
        ((possible > 0) & (absence * 10 >= possible)).alias("is_pa_10"),
        ((possible > 0) & (absence * 2 >= possible)).alias("is_pa_50"),
    )


def pa_count_exprs() -> list[pl.Expr]:
    """Aggregations over rows flagged by :func:`persistent_absence_flags`."""
    return [
        pl.col("is_enrolment").sum().cast(pl.Int64).alias("pa_enrolments"),
        pl.col("is_pa_10").sum().cast(pl.Int64).alias("enrolments_pa_10_exact"),
        pl.col("is_pa_50").sum().cast(pl.Int64).alias("enrolments_pa_50_exact"),
    ]
