"""What the statistics count: scope and the point-of-use rules, as pure functions over Polars frames.

Scope [S: EES methodology "Pupil attendance in schools"; domain README §2]:

- compulsory school age pupils: aged 5 to 15 at 31 August before the academic year (the school census
  definition, "pupils aged between 5 and 15 years as at 31/08");
- in state-funded primary, secondary and special schools: the register's ``attendance_phase`` is
  Primary, Secondary or Special;
- 15-year-olds' sessions in the second half of the summer term are removed (study leave; from the Monday
  after the spring bank holiday week, :func:`official_stats.periods.second_half_summer_start`) [I: DfE's
  methodology text is truncated; the date is the usual half-term, documented in docs/statistics.md].
- only sessions that count: a pupil with no possible session on a day (only D, Q, X, Y*, Z, # marks) adds
  to reason counts but not to enrolments (:mod:`official_stats.views`).

Point-of-use rules (docs/statistics.md "What is counted"):

- only marks whose carrying extract is ``complete`` are counted (a mark amended later by a complete extract
  is counted: the sessions table keeps the latest version of each mark with the extract that carried it);
  marks of an extract that is not complete yet are *pending* and re-checked on later runs;
- a school that opted out is excluded from the London date of its opt-out's ``effective_at``; if the
  opt-outs list holds later events for the same school, an ``opted_in`` event re-includes it from its date.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from official_stats import periods

IN_SCOPE_PHASES: tuple[str, ...] = ("Primary", "Secondary", "Special")
MIN_AGE, MAX_AGE = 5, 15

FSM_LABELS = {True: "FSM eligible", False: "Not known to be eligible for FSM"}
SEN_LABELS = {"N": "No identified SEN", "K": "SEN support", "E": "EHC plan"}
UNKNOWN = "Unknown"

GEOGRAPHY_COLUMNS: tuple[str, ...] = (
    "region_code",
    "region_name",
    "old_la_code",
    "new_la_code",
    "la_name",
)
#: Pupil characteristics used for the optional breakdowns (label columns).
CHARACTERISTIC_COLUMNS: tuple[str, ...] = ("fsm_status", "sen_status", "year_group")


@dataclass
class ScopeResult:
    """Marks that count, with pupil and school attributes, plus what was held back and why (counts only)."""

    counted: pl.DataFrame
    pending_extracts: pl.DataFrame  # extract_id, urn, date: marks waiting for their extract to complete
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> number of marks (never pupil data)


def age_at_start_of_year_expr(date_of_birth: pl.Expr, academic_year_start: pl.Expr) -> pl.Expr:
    """Age in whole years on 31 August of ``academic_year_start`` (before the academic year begins)."""
    return (academic_year_start - date_of_birth.dt.year() - (date_of_birth.dt.month() >= 9).cast(pl.Int32)).cast(
        pl.Int32
    )


def fsm_status_expr(fsm_eligible: pl.Expr) -> pl.Expr:
    return (
        pl.when(fsm_eligible.is_null())
        .then(pl.lit(UNKNOWN))
        .when(fsm_eligible)
        .then(pl.lit(FSM_LABELS[True]))
        .otherwise(pl.lit(FSM_LABELS[False]))
    )


def sen_status_expr(sen_provision: pl.Expr) -> pl.Expr:
    return sen_provision.replace_strict(SEN_LABELS, default=UNKNOWN, return_dtype=pl.String)


def year_group_expr(nc_year_group: pl.Expr) -> pl.Expr:
    mapping = {"R": "Reception", "X": "Not following the national curriculum"}
    mapping.update({str(n): f"Year {n}" for n in range(1, 15)})
    return nc_year_group.replace_strict(mapping, default="Other", return_dtype=pl.String)


def opted_out_mask(keys: pl.DataFrame, optouts: pl.DataFrame | None, timezone: str = "Europe/London") -> pl.Series:
    """For each row of ``keys`` (``urn``, ``date``): True when the school is opted out on that date.

    ``optouts``: ``urn``, ``status`` (``opted_out``/``opted_in``), ``effective_at`` (timestamp; UTC when
    naive). The state on a date is that of the latest event whose effective London date is on or before it.
    """
    if optouts is None or optouts.height == 0 or keys.height == 0:
        return pl.Series("opted_out", [False] * keys.height, dtype=pl.Boolean)
    effective = pl.col("effective_at")
    dtype = optouts.schema["effective_at"]
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        effective = effective.dt.replace_time_zone("UTC")
    events = (
        optouts.select(
            pl.col("urn").cast(pl.String),
            pl.col("status").cast(pl.String),
            pl.col("effective_at"),
            effective.dt.convert_time_zone(timezone).dt.date().alias("effective_date"),
        )
        .sort("urn", "effective_at")
        .group_by("urn", "effective_date", maintain_order=True)
        .last()
        .sort("effective_date")
    )
    pairs = keys.select(pl.col("urn").cast(pl.String), pl.col("date")).with_row_index("_row")
    joined = (
        pairs.sort("date")
        .join_asof(
            events.select("urn", "effective_date", "status"),
            left_on="date",
            right_on="effective_date",
            by="urn",
            strategy="backward",
            check_sortedness=False,  # both sides sorted by date above
        )
        .sort("_row")
    )
    return (joined["status"] == "opted_out").fill_null(False).alias("opted_out")


def split_by_extract_status(marks: pl.DataFrame, extracts: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(marks whose extract is complete, pending ``extract_id, urn, date`` of marks whose extract is not)."""
    complete = extracts.filter(pl.col("status") == "complete").select("extract_id").unique()
    is_complete = marks["extract_id"].is_in(complete["extract_id"].implode())
    counted = marks.filter(is_complete)
    pending = marks.filter(~is_complete).select("extract_id", "urn", "date").unique()
    return counted, pending


def _second_half_summer_starts(academic_years: pl.Series) -> dict[int, object]:
    return {int(y): periods.second_half_summer_start(int(y)) for y in academic_years.unique().drop_nulls()}


def apply_scope(
    marks: pl.DataFrame,
    *,
    extracts: pl.DataFrame,
    pupils: pl.DataFrame,
    schools: pl.DataFrame,
    optouts: pl.DataFrame | None = None,
    timezone: str = "Europe/London",
) -> ScopeResult:
    """The marks that count, each with its pupil's age and characteristics and its school's geography.

    ``marks``: ``urn, upn, date, session, code, extract_id``; ``extracts``: ``extract_id, status``;
    ``pupils``: ``urn, upn, date_of_birth, nc_year_group, fsm_eligible, sen_provision``;
    ``schools``: ``urn, attendance_phase`` and the geography columns.
    Returned ``counted`` columns: the mark columns + ``academic_year_start, term, age, education_phase``,
    geography, ``fsm_status, sen_status, year_group``.
    """
    excluded: dict[str, int] = {}
    total = marks.height
    counted, pending = split_by_extract_status(marks, extracts)
    excluded["extract_not_complete"] = total - counted.height

    before = counted.height
    counted = counted.filter(~opted_out_mask(counted.select("urn", "date"), optouts, timezone))
    excluded["school_opted_out"] = before - counted.height

    school_cols = ["urn", "attendance_phase", *GEOGRAPHY_COLUMNS]
    before = counted.height
    counted = counted.join(schools.select(school_cols).unique("urn"), on="urn", how="inner")
    excluded["school_not_in_register"] = before - counted.height
    before = counted.height
    counted = counted.filter(pl.col("attendance_phase").is_in(list(IN_SCOPE_PHASES)))
    excluded["school_phase_out_of_scope"] = before - counted.height

    pupil_cols = ["urn", "upn", "date_of_birth", "nc_year_group", "fsm_eligible", "sen_provision"]
    before = counted.height
    counted = counted.join(
        pupils.select(pupil_cols).unique(["urn", "upn"], keep="last"), on=["urn", "upn"], how="inner"
    )
    excluded["pupil_not_known"] = before - counted.height

    counted = counted.with_columns(
        periods.academic_year_start_expr(pl.col("date")).alias("academic_year_start"),
        periods.term_expr(pl.col("date")).alias("term"),
    ).with_columns(
        age_at_start_of_year_expr(pl.col("date_of_birth"), pl.col("academic_year_start")).alias("age"),
    )
    before = counted.height
    counted = counted.filter(pl.col("age").is_between(MIN_AGE, MAX_AGE))
    excluded["not_compulsory_school_age"] = before - counted.height

    starts = _second_half_summer_starts(counted["academic_year_start"])
    before = counted.height
    if starts:
        second_half = pl.col("academic_year_start").replace_strict(starts, return_dtype=pl.Date)
        counted = counted.filter(~((pl.col("age") == MAX_AGE) & (pl.col("date") >= second_half)))
    excluded["age_15_second_half_summer"] = before - counted.height

    counted = counted.with_columns(
        pl.col("attendance_phase").alias("education_phase"),
        fsm_status_expr(pl.col("fsm_eligible")).alias("fsm_status"),
        sen_status_expr(pl.col("sen_provision")).alias("sen_status"),
        year_group_expr(pl.col("nc_year_group")).alias("year_group"),
    ).drop("attendance_phase", "date_of_birth")
    return ScopeResult(counted=counted, pending_extracts=pending, excluded=excluded)


def schools_in_scope(schools: pl.DataFrame, on: object) -> pl.DataFrame:
    """Register schools in scope (phase) and open on date ``on``: the coverage denominator.

    Open: ``open_date`` empty or on/before the date, and ``close_date`` empty or after it; when both dates
    are empty the register ``status`` must not be "Closed".
    """
    date = pl.lit(on, dtype=pl.Date)
    opened = pl.col("open_date").is_null() | (pl.col("open_date") <= date)
    not_closed = pl.col("close_date").is_null() | (pl.col("close_date") > date)
    status_ok = ~(pl.col("close_date").is_null() & pl.col("status").fill_null("").str.starts_with("Closed"))
    return schools.filter(pl.col("attendance_phase").is_in(list(IN_SCOPE_PHASES)) & opened & not_closed & status_ok)
