"""EES-ready files: data CSVs and their ``.meta.csv``, following DfE's open data standards.

Standards [S: DfE analysts' guide statistics-production/ud.qmd; eesyscreener data-raw/req_values.R,
data-raw/geography_df.R, data-raw/acceptable_values.R]: UTF-8, snake_case headers, lower-case file names;
mandatory columns ``time_period, time_identifier, geographic_level, country_code, country_name`` then
``region_code, region_name`` and ``new_la_code, la_name, old_la_code`` (blank where not applicable);
``<name>.meta.csv`` with one row per filter and indicator (``col_name, col_type, label, indicator_grouping,
indicator_unit, indicator_dp, filter_hint, filter_grouping_column, filter_default``); filters have a "Total"
(or declared default) item and at least two items (single-item columns stay out of the meta file);
indicators carry numbers or the symbols c, z, x, low only.

Column names follow DfE's attendance files [S: dfe-analytical-services/attendance-data-dashboard
data/EES_ytd_data.csv; DG51]: ``education_phase``, ``num_schools``, ``enrolments``, session counts,
``reason_*`` counts, ``*_perc`` rates, ``pa_perc``. Coverage: ``school_submitted_count``,
``school_all_count`` [S: EES API data set "Pupil attendance in schools" indicators].

Files of one release (every file holds the academic year so far, recalculated each release):

=====================================  ===================================================  =============
file                                   rows                                                 time
=====================================  ===================================================  =============
attendance_daily_weekly                days and ISO weeks; National, Regional, LA; by phase Week NN
attendance_term                        terms so far                                         terms
attendance_ytd                         the academic year to date                            Academic year
attendance_characteristics_<same 3>    National and Regional by FSM, SEN and year group     as above
=====================================  ===================================================  =============

A daily or weekly file cannot share a file with a term or year file: EES forbids mixing "Week NN" with
term or academic year identifiers in one file [S: eesyscreener R/precheck_time_id_mix.R].
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from official_stats import disclosure
from official_stats.disclosure import CONFIDENTIAL, LOW, NOT_APPLICABLE, NOT_AVAILABLE, DisclosureRules
from official_stats.measures import (
    HEADLINE_RATES,
    PA_COUNT_COLUMNS,
    PA_RATE_COLUMNS,
    REASON_COLUMNS,
    REASON_RATES,
    SESSION_COUNT_COLUMNS,
)
from official_stats.periods import WEEKDAY_NAMES
from official_stats.views import DAY, LOCAL_AUTHORITY, TERM, TOTAL, WEEK, YEAR_TO_DATE
from schemas.codes import CODES_BY_MARK

MANDATORY_COLUMNS: tuple[str, ...] = (
    "time_period",
    "time_identifier",
    "geographic_level",
    "country_code",
    "country_name",
    "region_code",
    "region_name",
    "new_la_code",
    "la_name",
    "old_la_code",
)
#: Columns that describe a row (time, geography, filters), never a figure.
DESCRIPTIVE_COLUMNS: frozenset[str] = frozenset(MANDATORY_COLUMNS) | {
    "time_frame", "education_phase", "fsm_status", "sen_status", "year_group"}
#: Published indicators that disclosure control never suppresses: school counts (the register is public) and
#: dates.
UNSUPPRESSED_INDICATORS: frozenset[str] = frozenset({
    "num_schools", "school_submitted_count", "school_all_count", "attendance_date", "week_commencing",
    "reference_date"})
META_COLUMNS: tuple[str, ...] = (
    "col_name",
    "col_type",
    "label",
    "indicator_grouping",
    "indicator_unit",
    "indicator_dp",
    "filter_hint",
    "filter_grouping_column",
    "filter_default",
)
CHARACTERISTIC_FILTERS: tuple[str, ...] = ("fsm_status", "sen_status", "year_group")


@dataclass(frozen=True)
class Indicator:
    name: str
    label: str
    grouping: str
    unit: str = ""  # "" or "%"
    dp: int = 0
    kind: str = "count"  # count | mean | rate | school_count | date


@dataclass(frozen=True)
class Filter:
    name: str
    label: str
    hint: str
    default: str = TOTAL


_SESSION_LABELS = {
    "present_sessions": "Present sessions",
    "overall_attendance": "Overall attendance sessions (present and approved educational activity)",
    "approved_educational_activity": "Approved educational activity sessions",
    "overall_absence": "Overall absence sessions",
    "authorised_absence": "Authorised absence sessions",
    "unauthorised_absence": "Unauthorised absence sessions",
    "late_sessions": "Late sessions (L and U)",
    "possible_sessions": "Possible sessions",
}
_HEADLINE_RATE_LABELS = {
    "attendance_perc": "Attendance rate",
    "overall_absence_perc": "Overall absence rate",
    "authorised_absence_perc": "Authorised absence rate",
    "unauthorised_absence_perc": "Unauthorised absence rate",
}


def _code_of(column: str) -> str:
    return next(code for code, name in REASON_COLUMNS if name == column)


def indicators(rules: DisclosureRules, with_pa: bool, daily: bool) -> list[Indicator]:
    items: list[Indicator] = []
    if daily:
        items.append(Indicator("attendance_date", "Attendance date (day rows)", "Dates", kind="date"))
        items.append(Indicator("week_commencing", "Week commencing", "Dates", kind="date"))
    else:
        items.append(Indicator("reference_date", "Last day with data in the period", "Dates", kind="date"))
    items += [
        Indicator(
            "num_schools",
            "Number of schools (daily mean)",
            "Pupils and schools",
            dp=rules.count_dp,
            kind="school_count",
        ),
        Indicator(
            "enrolments",
            "Pupil enrolments (daily mean)",
            "Pupils and schools",
            dp=rules.count_dp,
            kind="mean",
        ),
        Indicator(
            "school_submitted_count",
            "Schools with data in the period",
            "Pupils and schools",
            kind="school_count",
        ),
        Indicator("school_all_count", "Schools in scope in the register", "Pupils and schools", kind="school_count"),
    ]
    items += [Indicator(c, _SESSION_LABELS[c], "Sessions") for c in SESSION_COUNT_COLUMNS]
    for code, column in REASON_COLUMNS:
        meaning = CODES_BY_MARK[code].meaning
        items.append(Indicator(column, f"Sessions: {meaning} (code {code})", "Sessions by reason"))
    items += [
        Indicator(name, _HEADLINE_RATE_LABELS[name], "Rates", "%", rules.rate_dp, "rate") for name, _ in HEADLINE_RATES
    ]
    for name, numerator in REASON_RATES:
        code = _code_of(numerator)
        items.append(
            Indicator(
                name,
                f"Rate: {CODES_BY_MARK[code].meaning} (code {code})",
                "Rates by reason",
                "%",
                rules.rate_dp,
                "rate",
            )
        )
    if with_pa:
        items += [
            Indicator("pa_enrolments", "Enrolments with possible sessions in the period", "Persistent absence"),
            Indicator("enrolments_pa_10_exact", "Persistently absent enrolments (10% or more)", "Persistent absence"),
            Indicator("enrolments_pa_50_exact", "Severely absent enrolments (50% or more)", "Persistent absence"),
            Indicator(
                PA_RATE_COLUMNS[0][0],
                "Persistent absence rate",
                "Persistent absence",
                "%",
                rules.rate_dp,
                "rate",
            ),
            Indicator(PA_RATE_COLUMNS[1][0], "Severe absence rate", "Persistent absence", "%", rules.rate_dp, "rate"),
        ]
    return items


PHASE_FILTER = Filter("education_phase", "Education phase", "State-funded primary, secondary and special schools")
TIME_FRAME_FILTER = Filter("time_frame", "Time frame", "A single day, or the whole week", default=WEEK)
FILTERS_BY_NAME = {
    "fsm_status": Filter("fsm_status", "Free school meals eligibility", "Pupils' FSM eligibility"),
    "sen_status": Filter("sen_status", "Special educational needs provision", "SEN support or EHC plan"),
    "year_group": Filter("year_group", "National curriculum year group", "Pupils' year group"),
}


@dataclass
class EesFile:
    name: str
    data: pl.DataFrame
    meta: pl.DataFrame


# --- rows of each file ---------------------------------------------------------------------------------


def _time_columns(rows: pl.DataFrame) -> pl.DataFrame:
    start = pl.col("period_start")
    iso_year = start.dt.iso_year().cast(pl.String)
    week = pl.lit("Week ") + start.dt.week().cast(pl.String)
    frame = pl.col("time_frame")
    period = pl.when(frame.is_in([DAY, WEEK])).then(iso_year).otherwise(pl.col("academic_year"))
    identifier = (
        pl.when(frame.is_in([DAY, WEEK]))
        .then(week)
        .when(frame == TERM)
        .then(pl.col("term"))
        .otherwise(pl.lit("Academic year"))
    )
    weekday = start.dt.weekday().replace_strict({i + 1: n for i, n in enumerate(WEEKDAY_NAMES)}, return_dtype=pl.String)
    return rows.with_columns(
        period.alias("time_period"),
        identifier.alias("time_identifier"),
        pl.when(frame == DAY).then(weekday).otherwise(pl.lit(WEEK)).alias("_time_frame_item"),
    )


def publishable_rows(views: pl.DataFrame) -> pl.DataFrame:
    """Rows that go into a release: EES has no "Week 53", so ISO week 53 days and weeks are left out."""
    in_week_53 = pl.col("time_frame").is_in([DAY, WEEK]) & (pl.col("period_start").dt.week() > 52)
    return views.filter(~in_week_53)


def _fmt_number(column: str, dp: int) -> pl.Expr:
    value = pl.col(column).cast(pl.Float64).round(dp)
    if dp == 0:
        return value.cast(pl.Int64).cast(pl.String)
    return value.cast(pl.String)


def _indicator_value(item: Indicator, suppressed: pl.Expr, pa_available: bool) -> pl.Expr:
    column = pl.col(item.name)
    if item.kind == "date":
        return pl.lit("")  # filled by the caller
    if item.kind == "school_count":
        return pl.when(column.is_null()).then(pl.lit(NOT_APPLICABLE)).otherwise(_fmt_number(item.name, item.dp))
    is_pa = item.name in PA_COUNT_COLUMNS or item.name in {n for n, _ in PA_RATE_COLUMNS}
    if is_pa and not pa_available:
        return pl.lit(NOT_AVAILABLE)
    formatted = _fmt_number(item.name, item.dp)
    if item.kind == "rate":
        rounded_zero = column.round(item.dp) == 0
        formatted = pl.when((column > 0) & rounded_zero).then(pl.lit(LOW)).otherwise(formatted)
    return (
        pl.when(suppressed)
        .then(pl.lit(CONFIDENTIAL))
        .when(column.is_null())
        .then(pl.lit(NOT_APPLICABLE))
        .otherwise(formatted)
    )


def _data_frame(rows: pl.DataFrame, items: list[Indicator], filters: list[str], pa_available: bool) -> pl.DataFrame:
    rows = _time_columns(rows)
    suppressed = pl.col("suppressed")
    values = []
    for item in items:
        if item.name == "attendance_date":
            values.append(
                pl.when(pl.col("time_frame") == DAY)
                .then(pl.col("period_start").cast(pl.String))
                .otherwise(pl.lit(NOT_APPLICABLE))
                .alias(item.name)
            )
        elif item.name == "week_commencing":
            values.append(
                (pl.col("period_start") - pl.duration(days=pl.col("period_start").dt.weekday() - 1))
                .cast(pl.String)
                .alias(item.name)
            )
        elif item.name == "reference_date":
            values.append(pl.col("period_end").cast(pl.String).alias(item.name))
        else:
            values.append(_indicator_value(item, suppressed, pa_available).alias(item.name))
    filter_columns = [
        pl.col("_time_frame_item").alias("time_frame") if f == "time_frame" else pl.col(f) for f in filters
    ]
    place = [pl.col(c).cast(pl.String).fill_null("") for c in MANDATORY_COLUMNS]
    return rows.select(*place, *filter_columns, *values)


def _meta_frame(data: pl.DataFrame, items: list[Indicator], filters: list[str]) -> pl.DataFrame:
    records: list[dict[str, str]] = []
    for name in filters:
        spec = (
            TIME_FRAME_FILTER
            if name == "time_frame"
            else PHASE_FILTER
            if name == "education_phase"
            else FILTERS_BY_NAME[name]
        )
        if data[name].n_unique() < 2:
            # single-item filter: left out of the meta file [S: ud.qmd; precheck_filter_not_singular]
            continue
        records.append(
            {
                "col_name": name,
                "col_type": "Filter",
                "label": spec.label,
                "indicator_grouping": "",
                "indicator_unit": "",
                "indicator_dp": "",
                "filter_hint": spec.hint,
                "filter_grouping_column": "",
                "filter_default": spec.default,
            }
        )
    for item in items:
        records.append(
            {
                "col_name": item.name,
                "col_type": "Indicator",
                "label": item.label,
                "indicator_grouping": item.grouping,
                "indicator_unit": item.unit,
                "indicator_dp": str(item.dp),
                "filter_hint": "",
                "filter_grouping_column": "",
                "filter_default": "",
            }
        )
    return pl.DataFrame(records, schema={c: pl.String for c in META_COLUMNS})


_SORT = [
    "_frame_order",
    "period_start",
    "_level_order",
    "region_code",
    "old_la_code",
    "_phase_order",
    "fsm_status",
    "sen_status",
    "year_group",
]


def _sorted(rows: pl.DataFrame) -> pl.DataFrame:
    return (
        rows.with_columns(
            pl.col("time_frame")
            .replace_strict({WEEK: 1, DAY: 0, TERM: 2, YEAR_TO_DATE: 3}, default=9, return_dtype=pl.Int8)
            .alias("_frame_order"),
            pl.col("geographic_level")
            .replace_strict({"National": 0, "Regional": 1, LOCAL_AUTHORITY: 2}, default=9, return_dtype=pl.Int8)
            .alias("_level_order"),
            pl.col("education_phase")
            .replace_strict({"Primary": 0, "Secondary": 1, "Special": 2, TOTAL: 3}, default=9, return_dtype=pl.Int8)
            .alias("_phase_order"),
        )
        .sort(_SORT)
        .drop("_frame_order", "_level_order", "_phase_order")
    )


def build_files(disclosed: pl.DataFrame, rules: DisclosureRules, pa_available: bool = True) -> list[EesFile]:
    """The release's EES files from disclosed view rows (output of :func:`disclose`)."""
    all_total = pl.all_horizontal([pl.col(c) == TOTAL for c in CHARACTERISTIC_FILTERS])
    specs = [
        ("attendance_daily_weekly", [DAY, WEEK], False),
        ("attendance_term", [TERM], False),
        ("attendance_ytd", [YEAR_TO_DATE], False),
        ("attendance_characteristics_daily_weekly", [DAY, WEEK], True),
        ("attendance_characteristics_term", [TERM], True),
        ("attendance_characteristics_ytd", [YEAR_TO_DATE], True),
    ]
    files: list[EesFile] = []
    for name, frames, characteristics in specs:
        rows = disclosed.filter(pl.col("time_frame").is_in(frames))
        rows = rows.filter(pl.col("geographic_level") != LOCAL_AUTHORITY) if characteristics else rows.filter(all_total)
        if rows.height == 0:
            continue
        daily = DAY in frames
        filters = (["time_frame"] if daily else []) + ["education_phase"]
        if characteristics:
            filters += list(CHARACTERISTIC_FILTERS)
        items = indicators(rules, with_pa=not daily, daily=daily)
        data = _data_frame(_sorted(rows), items, filters, pa_available)
        files.append(EesFile(name, data, _meta_frame(data, items, filters)))
    return files


def disclose(views: pl.DataFrame, rules: DisclosureRules) -> pl.DataFrame:
    """Publishable rows with ``suppressed`` and ``suppression_reason`` (one pass over every file's rows)."""
    return disclosure.apply_disclosure(publishable_rows(views), rules)


def controlled_rows(views: pl.DataFrame, rules: DisclosureRules) -> pl.DataFrame:
    """The rows a release of ``views`` would publish, as typed rows for the LA-and-above zone.

    :func:`disclose` decides what is suppressed; then every suppressible value of a suppressed row
    (counts, enrolments, persistent absence and rates: ``contracts.SUPPRESSIBLE_COLUMNS``) is replaced by
    null, so the exact figure is not stored at all. School counts and the dimensions stay. The EES symbol
    of a cell follows from the row (:func:`build_files` renders them): ``suppressed`` -> ``c``; otherwise
    null -> ``z``; a positive rate that rounds to zero at ``rate_dp`` -> ``low``.
    """
    from official_stats.contracts import SUPPRESSIBLE_COLUMNS

    disclosed = disclose(views, rules)
    hidden = pl.col("suppressed")
    return disclosed.with_columns(
        [
            pl.when(hidden).then(None).otherwise(pl.col(c)).alias(c)
            for c in SUPPRESSIBLE_COLUMNS
            if c in disclosed.columns
        ]
    )


def _blank_as_null(frame: pl.DataFrame) -> pl.DataFrame:
    """Empty strings written as empty fields (not ``""``)."""
    strings = [c for c, t in frame.schema.items() if t == pl.String]
    return frame.with_columns([pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in strings])


def write_files(files: list[EesFile], directory: Path) -> list[Path]:
    """Write each file as ``<name>.csv`` and ``<name>.meta.csv`` (UTF-8, no BOM, LF line ends)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for item in files:
        data_path, meta_path = directory / f"{item.name}.csv", directory / f"{item.name}.meta.csv"
        _blank_as_null(item.data).write_csv(data_path, null_value="")
        _blank_as_null(item.meta).write_csv(meta_path, null_value="")
        written += [data_path, meta_path]
    return written


def release_rows(views: pl.DataFrame, data_end: dt.date) -> pl.DataFrame:
    """View rows of the academic year of ``data_end`` whose period starts on or before it."""
    from official_stats.periods import academic_year_code, academic_year_start

    year = academic_year_code(academic_year_start(data_end))
    return views.filter((pl.col("academic_year") == year) & (pl.col("period_start") <= data_end))
