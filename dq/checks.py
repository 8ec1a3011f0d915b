"""Data-quality checks: pure functions over small school-level tables, each returning its exceptions.

Every check returns a Polars frame with the columns of ``EXCEPTION_COLUMNS``: the report ``date``, the
``check``, the school's ``urn`` (null for LA-level checks), its ``la_code`` (old 3-digit code), the
``register_code`` concerned (if any), an ``observed`` and an ``expected`` value, and a ``detail`` sentence.
No check receives or emits a pupil identifier: the inputs are counts per school (see ``DqInputs``).

Thresholds live in ``Thresholds`` (documented defaults); ``run_checks`` runs them all for one date.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Any

import polars as pl
import pyarrow as pa

from schemas.codes import REGISTER_CODES, Category

# --- the checks and their thresholds -------------------------------------------------------------------

MISSING_EXTRACT = "missing_extract"
ROLL_CHANGE = "roll_change"
ATTENDANCE_RATE_OUTLIER = "attendance_rate_outlier"
UNIFORM_MARKS = "uniform_marks"
MARKS_ON_CLOSED_SESSION = "marks_on_closed_session"
MARKS_ON_NON_SCHOOL_DAY = "marks_on_non_school_day"
MARKS_AFTER_LEAVING = "marks_after_leaving"
REASON_CODE_SPIKE = "reason_code_spike"

#: Every check, in report order, with what it means (docs/operations.md repeats these for operators).
CHECKS: dict[str, str] = {
    MISSING_EXTRACT: "An open, in-scope school sent no complete extract for the date.",
    ROLL_CHANGE: "The school's roll moved more than the threshold against the median of its recent days.",
    ATTENDANCE_RATE_OUTLIER: "The school's attendance rate is far from its own recent mean.",
    UNIFORM_MARKS: "Every mark in one of the school's extracts is the same code.",
    MARKS_ON_CLOSED_SESSION: "Attendance marks in a session otherwise recorded as closed (# or Y4).",
    MARKS_ON_NON_SCHOOL_DAY: "Attendance marks dated on a weekend or an England and Wales bank holiday.",
    MARKS_AFTER_LEAVING: "Marks for pupils whose leaving date has passed.",
    REASON_CODE_SPIKE: "A register code's share of an LA's marks jumped against the LA's recent days.",
}


@dataclass(frozen=True)
class Thresholds:
    """Every knob of the checks. Defaults are starting points to tune against a term of real exceptions."""

    #: roll_change: |roll - median| / median above this fraction (0.10 = 10%) is an exception.
    roll_change_fraction: float = 0.10
    #: roll_change: the median is over the school's previous this-many school days (days it sent data).
    roll_history_days: int = 5
    #: roll_change: fewer previous days than this and the school is not judged.
    roll_min_history_days: int = 3
    #: attendance_rate_outlier: history window, the school's previous this-many school days.
    rate_history_days: int = 10
    rate_min_history_days: int = 5
    #: attendance_rate_outlier: more than this many standard deviations from the school's mean ...
    rate_max_z: float = 3.0
    #: ... or more than this many percentage points from it, is an exception.
    rate_max_pp: float = 15.0
    #: attendance_rate_outlier: floor on the standard deviation (pp), so a very steady school is not
    #: flagged for a one-point wobble.
    rate_min_std_pp: float = 2.0
    #: uniform_marks: only extracts with at least this many marks (on the date) are judged.
    uniform_min_marks: int = 20
    #: marks_on_closed_session: a session is "closed" when at least this share of its marks is # or Y4.
    closure_share: float = 0.9
    #: reason_code_spike: history window, the LA's previous this-many school days.
    spike_history_days: int = 10
    spike_min_history_days: int = 5
    #: reason_code_spike: z-score of today's share against the history above this is a spike.
    spike_max_z: float = 3.0
    #: reason_code_spike: floor on the standard deviation of a code's share (0.005 = 0.5 pp).
    spike_min_std: float = 0.005
    #: reason_code_spike: LAs with fewer marks than this on the date are not judged.
    spike_min_marks: int = 200
    #: How far back the report reads marks and extracts (calendar days): enough for 10 school days
    #: across a half-term week.
    history_calendar_days: int = 28

    @classmethod
    def with_overrides(cls, overrides: dict[str, str]) -> Thresholds:
        """Defaults with some fields replaced from strings (``{"roll_change_fraction": "0.2"}``)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, text in overrides.items():
            if name not in known:
                raise ValueError(f"unknown threshold {name!r}; known: {', '.join(sorted(known))}")
            kind = int if isinstance(getattr(cls(), name), int) else float
            try:
                values[name] = kind(text)
            except ValueError:
                raise ValueError(f"threshold {name} must be a {kind.__name__}, got {text!r}") from None
        return cls(**values)


# --- calendar ---------------------------------------------------------------------------------------------

#: England and Wales bank holidays, 2024-2027. Source: https://www.gov.uk/bank-holidays (also served as
#: https://www.gov.uk/bank-holidays.json, division "england-and-wales"). Substitute days are the dates
#: observed: Boxing Day 2026 (a Saturday) is observed on Monday 28 December; Christmas and Boxing Day 2027
#: (Saturday, Sunday) on 27 and 28 December. Extend yearly.
BANK_HOLIDAYS_ENGLAND_AND_WALES: dict[dt.date, str] = {
    dt.date(2024, 1, 1): "New Year's Day",
    dt.date(2024, 3, 29): "Good Friday",
    dt.date(2024, 4, 1): "Easter Monday",
    dt.date(2024, 5, 6): "Early May bank holiday",
    dt.date(2024, 5, 27): "Spring bank holiday",
    dt.date(2024, 8, 26): "Summer bank holiday",
    dt.date(2024, 12, 25): "Christmas Day",
    dt.date(2024, 12, 26): "Boxing Day",
    dt.date(2025, 1, 1): "New Year's Day",
    dt.date(2025, 4, 18): "Good Friday",
    dt.date(2025, 4, 21): "Easter Monday",
    dt.date(2025, 5, 5): "Early May bank holiday",
    dt.date(2025, 5, 26): "Spring bank holiday",
    dt.date(2025, 8, 25): "Summer bank holiday",
    dt.date(2025, 12, 25): "Christmas Day",
    dt.date(2025, 12, 26): "Boxing Day",
    dt.date(2026, 1, 1): "New Year's Day",
    dt.date(2026, 4, 3): "Good Friday",
    dt.date(2026, 4, 6): "Easter Monday",
    dt.date(2026, 5, 4): "Early May bank holiday",
    dt.date(2026, 5, 25): "Spring bank holiday",
    dt.date(2026, 8, 31): "Summer bank holiday",
    dt.date(2026, 12, 25): "Christmas Day",
    dt.date(2026, 12, 28): "Boxing Day (substitute day)",
    dt.date(2027, 1, 1): "New Year's Day",
    dt.date(2027, 3, 26): "Good Friday",
    dt.date(2027, 3, 29): "Easter Monday",
    dt.date(2027, 5, 3): "Early May bank holiday",
    dt.date(2027, 5, 31): "Spring bank holiday",
    dt.date(2027, 8, 30): "Summer bank holiday",
    dt.date(2027, 12, 27): "Christmas Day (substitute day)",
    dt.date(2027, 12, 28): "Boxing Day (substitute day)",
}
BANK_HOLIDAY_YEARS = frozenset(d.year for d in BANK_HOLIDAYS_ENGLAND_AND_WALES)


def is_collection_day(day: dt.date) -> bool:
    """A weekday that is not an England and Wales bank holiday. School holidays (which differ by LA and
    school) are not known here: on those days schools send nothing and ``missing_extract`` says so."""
    return day.weekday() < 5 and day not in BANK_HOLIDAYS_ENGLAND_AND_WALES


def non_school_days_since_previous_collection_day(day: dt.date) -> list[dt.date]:
    """The weekend days and bank holidays after the last collection day before ``day``, up to ``day``:
    the days whose marks the report for ``day`` checks (Saturday and Sunday in Monday's report)."""
    days: list[dt.date] = []
    current = day
    for _ in range(14):  # never more than a long weekend plus Christmas
        if not is_collection_day(current):
            days.append(current)
        elif current != day:
            break
        current -= dt.timedelta(days=1)
    return sorted(days)


# --- inputs -------------------------------------------------------------------------------------------------

#: Phases in scope of the statistics (schools.attendance_phase); everything else is out of scope.
IN_SCOPE_PHASES = ("Primary", "Secondary", "Special")
#: Codes meaning the whole school (or session) was closed: planned closure and "school closed" Y4.
CLOSURE_CODES = ("#", "Y4")
NO_MARK = "-"
#: Codes that are not absence reasons: presence marks and "no mark"; a spike in these is not a reason spike.
NOT_REASONS = ("/", "\\", NO_MARK)

_CODE_FLAGS = pl.DataFrame({
    "code": [c.code for c in REGISTER_CODES],
    "is_possible": [c.possible for c in REGISTER_CODES],
    "is_attended": [c.category in (Category.PRESENT, Category.AEA) for c in REGISTER_CODES],
})

EXCEPTION_COLUMNS: dict[str, pl.DataType] = {
    "date": pl.Date(), "check": pl.String(), "urn": pl.String(), "la_code": pl.String(),
    "register_code": pl.String(), "observed": pl.Float64(), "expected": pl.Float64(), "detail": pl.String(),
}

Frame = pa.Table | pl.DataFrame


@dataclass(frozen=True)
class DqInputs:
    """What the checks read, all school-level (``dq.report`` builds these from the lake).

    - ``schools``: the register (storage table ``schools``): urn, old_la_code, status, attendance_phase,
      open_date, close_date.
    - ``extracts``: extract_id, urn, extract_date, generated_at, status, pupil_count (table ``extracts``)
      for the history window.
    - ``mark_counts``: urn, date, session, code, marks: the number of stored marks per school, date,
      session and code, over the history window.
    - ``extract_mark_counts``: urn, extract_id, code, marks: marks dated on the report date per extract.
    - ``leaver_marks``: urn, date, code, leaving_date: one row per mark on the report date of a pupil
      with a leaving date (no pupil identifier).
    """

    schools: Frame
    extracts: Frame
    mark_counts: Frame
    extract_mark_counts: Frame
    leaver_marks: Frame


_REQUIRED: dict[str, tuple[str, ...]] = {
    "schools": ("urn", "old_la_code", "status", "attendance_phase", "open_date", "close_date"),
    "extracts": ("urn", "extract_date", "generated_at", "status", "pupil_count"),
    "mark_counts": ("urn", "date", "session", "code", "marks"),
    "extract_mark_counts": ("urn", "extract_id", "code", "marks"),
    "leaver_marks": ("urn", "date", "code", "leaving_date"),
}


def _frame(data: Frame, name: str) -> pl.DataFrame:
    frame = data if isinstance(data, pl.DataFrame) else pl.from_arrow(data)
    assert isinstance(frame, pl.DataFrame)
    missing = [c for c in _REQUIRED[name] if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {', '.join(missing)}")
    return frame


def _exceptions(frame: pl.DataFrame, day: dt.date, check: str) -> pl.DataFrame:
    """Shape a check's result into EXCEPTION_COLUMNS (missing optional columns become nulls)."""
    exprs = []
    for name, dtype in EXCEPTION_COLUMNS.items():
        if name == "date":
            exprs.append(pl.lit(day, dtype=pl.Date()).alias("date"))
        elif name == "check":
            exprs.append(pl.lit(check, dtype=pl.String()).alias("check"))
        elif name in frame.columns:
            exprs.append(pl.col(name).cast(dtype))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    return frame.select(exprs)


def _pct(expr: pl.Expr, decimals: int = 1) -> pl.Expr:
    return expr.round(decimals).cast(pl.String)


def _previous_days(frame: pl.DataFrame, by: str, date_col: str, day: dt.date, keep: int) -> pl.DataFrame:
    """Rows dated before ``day``, only each ``by`` group's ``keep`` most recent dates."""
    earlier = frame.filter(pl.col(date_col) < day)
    rank = pl.col(date_col).rank("dense", descending=True).over(by)
    return earlier.filter(rank <= keep)


# --- the checks ------------------------------------------------------------------------------------------

def expected_schools(schools: Frame, day: dt.date) -> pl.DataFrame:
    """Schools expected to submit on ``day``: open (GIAS status Open, or Open but proposed to close), in an
    in-scope phase, opened on or before the day and not closed by it. Columns urn, la_code."""
    register = _frame(schools, "schools")
    open_now = (
        pl.col("status").str.starts_with("Open")
        & pl.col("attendance_phase").is_in(IN_SCOPE_PHASES)
        & (pl.col("open_date").is_null() | (pl.col("open_date") <= day))
        & (pl.col("close_date").is_null() | (pl.col("close_date") > day))
    )
    return register.filter(open_now).select("urn", pl.col("old_la_code").alias("la_code")).unique("urn")


def missing_extracts(schools: Frame, extracts: Frame, day: dt.date) -> pl.DataFrame:
    """Expected schools with no extract of status ``complete`` for ``day``."""
    received = _frame(extracts, "extracts").filter(pl.col("extract_date") == day)
    complete = received.filter(pl.col("status") == "complete").select("urn").unique()
    statuses = received.group_by("urn").agg(
        pl.col("status").unique().sort().str.join(", ").alias("statuses"), pl.len().alias("received"))
    missing = (
        expected_schools(schools, day)
        .join(complete, on="urn", how="anti")
        .join(statuses, on="urn", how="left")
        .with_columns(pl.col("received").fill_null(0))
    )
    detail = pl.when(pl.col("received") == 0).then(
        pl.format("no extract received for {}", pl.lit(day.isoformat()))
    ).otherwise(
        pl.format("no complete extract for {} ({} received: {})", pl.lit(day.isoformat()),
                  pl.col("received"), pl.col("statuses"))
    )
    return _exceptions(
        missing.with_columns(observed=pl.lit(0.0), expected=pl.lit(1.0), detail=detail), day, MISSING_EXTRACT)


def school_rolls(extracts: Frame) -> pl.DataFrame:
    """Each school's roll per day: pupil_count of its latest complete extract for that day."""
    return (
        _frame(extracts, "extracts")
        .filter((pl.col("status") == "complete") & pl.col("pupil_count").is_not_null())
        .sort("generated_at")
        .group_by("urn", "extract_date")
        .agg(pl.col("pupil_count").last().alias("roll"))
        .rename({"extract_date": "date"})
    )


def roll_changes(extracts: Frame, day: dt.date, thresholds: Thresholds = Thresholds()) -> pl.DataFrame:
    """Schools whose roll on ``day`` differs from the median of their previous school days by more than
    ``roll_change_fraction``."""
    rolls = school_rolls(extracts)
    history = (
        _previous_days(rolls, "urn", "date", day, thresholds.roll_history_days)
        .group_by("urn")
        .agg(pl.col("roll").median().alias("median"), pl.col("date").n_unique().alias("days"))
    )
    judged = (
        rolls.filter(pl.col("date") == day)
        .join(history, on="urn")
        .filter((pl.col("days") >= thresholds.roll_min_history_days) & (pl.col("median") > 0))
        .with_columns(change=(pl.col("roll") - pl.col("median")) / pl.col("median"))
        .filter(pl.col("change").abs() > thresholds.roll_change_fraction)
    )
    detail = pl.format(
        "roll {} against a median of {} over the previous {} school days ({}%)",
        pl.col("roll"), pl.col("median"), pl.col("days"), _pct(pl.col("change") * 100))
    return _exceptions(
        judged.with_columns(observed=pl.col("roll"), expected=pl.col("median"), detail=detail),
        day, ROLL_CHANGE)


def school_day_rates(mark_counts: Frame) -> pl.DataFrame:
    """Per school and date: possible sessions, sessions attended (present + approved educational activity)
    and the attendance rate in percent (DfE arithmetic, domain README section 1)."""
    return (
        _frame(mark_counts, "mark_counts")
        .join(_CODE_FLAGS, on="code", how="left")
        .group_by("urn", "date")
        .agg(
            (pl.col("marks") * pl.col("is_possible").fill_null(False)).sum().alias("possible_sessions"),
            (pl.col("marks") * pl.col("is_attended").fill_null(False)).sum().alias("attended_sessions"),
        )
        .filter(pl.col("possible_sessions") > 0)
        .with_columns(attendance_rate=pl.col("attended_sessions") / pl.col("possible_sessions") * 100)
    )


def attendance_rate_outliers(mark_counts: Frame, day: dt.date,
                             thresholds: Thresholds = Thresholds()) -> pl.DataFrame:
    """Schools whose attendance rate on ``day`` is more than ``rate_max_z`` standard deviations or more
    than ``rate_max_pp`` points from the mean of their previous ``rate_history_days`` school days."""
    rates = school_day_rates(mark_counts)
    history = (
        _previous_days(rates, "urn", "date", day, thresholds.rate_history_days)
        .group_by("urn")
        .agg(
            pl.col("attendance_rate").mean().alias("mean"),
            pl.col("attendance_rate").std().fill_null(0.0).alias("std"),
            pl.col("date").n_unique().alias("days"),
        )
    )
    deviation = pl.col("attendance_rate") - pl.col("mean")
    z = deviation / pl.max_horizontal(pl.col("std"), pl.lit(thresholds.rate_min_std_pp))
    judged = (
        rates.filter(pl.col("date") == day)
        .join(history, on="urn")
        .filter(pl.col("days") >= thresholds.rate_min_history_days)
        .with_columns(deviation=deviation, z=z)
        .filter((pl.col("deviation").abs() > thresholds.rate_max_pp)
                | (pl.col("z").abs() > thresholds.rate_max_z))
    )
    detail = pl.format(
        "attendance rate {}% against a mean of {}% over the previous {} school days ({} pp, z={})",
        _pct(pl.col("attendance_rate")), _pct(pl.col("mean")), pl.col("days"), _pct(pl.col("deviation")),
        _pct(pl.col("z")))
    return _exceptions(
        judged.with_columns(observed=pl.col("attendance_rate"), expected=pl.col("mean"), detail=detail),
        day, ATTENDANCE_RATE_OUTLIER)


def uniform_marks(extract_mark_counts: Frame, day: dt.date,
                  thresholds: Thresholds = Thresholds()) -> pl.DataFrame:
    """Schools with an extract (of at least ``uniform_min_marks`` marks on ``day``) where every mark is the
    same code. Whole-school closures (# or Y4) are left to ``marks_on_closed_session``."""
    per_extract = (
        _frame(extract_mark_counts, "extract_mark_counts")
        .filter(pl.col("marks") > 0)
        .group_by("urn", "extract_id")
        .agg(pl.col("marks").sum().alias("total"), pl.col("code").n_unique().alias("codes"),
             pl.col("code").first().alias("register_code"))
        .filter((pl.col("codes") == 1) & (pl.col("total") >= thresholds.uniform_min_marks)
                & ~pl.col("register_code").is_in(CLOSURE_CODES))
    )
    per_school = per_extract.group_by("urn", "register_code").agg(
        pl.len().alias("extracts"), pl.col("total").max().alias("observed"))
    detail = pl.format("every mark is '{}' in {} extract(s), up to {} marks each",
                       pl.col("register_code"), pl.col("extracts"), pl.col("observed"))
    return _exceptions(per_school.with_columns(detail=detail), day, UNIFORM_MARKS)


def marks_on_closed_sessions(mark_counts: Frame, day: dt.date,
                             thresholds: Thresholds = Thresholds()) -> pl.DataFrame:
    """Schools with attendance marks (possible sessions) on ``day`` in a session where at least
    ``closure_share`` of the marks say the school was closed (# planned closure, Y4 school closed)."""
    marks = _frame(mark_counts, "mark_counts").filter((pl.col("date") == day) & (pl.col("code") != NO_MARK))
    sessions = (
        marks.join(_CODE_FLAGS, on="code", how="left")
        .group_by("urn", "session")
        .agg(
            pl.col("marks").sum().alias("total"),
            pl.col("marks").filter(pl.col("code").is_in(CLOSURE_CODES)).sum().alias("closed"),
            pl.col("marks").filter(pl.col("is_possible").fill_null(False)).sum().alias("possible"),
        )
        .filter((pl.col("closed") >= thresholds.closure_share * pl.col("total")) & (pl.col("possible") > 0))
    )
    per_school = sessions.group_by("urn").agg(
        pl.col("possible").sum().alias("observed"),
        pl.col("session").sort().str.join(", ").alias("sessions"),
    )
    detail = pl.format("{} attendance marks in session(s) {} otherwise recorded as closed (# or Y4)",
                       pl.col("observed"), pl.col("sessions"))
    return _exceptions(per_school.with_columns(expected=pl.lit(0.0), detail=detail),
                       day, MARKS_ON_CLOSED_SESSION)


def marks_on_non_school_days(mark_counts: Frame, day: dt.date) -> pl.DataFrame:
    """Schools with attendance marks (possible sessions) dated on the weekend days or bank holidays checked
    by the report for ``day`` (see ``non_school_days_since_previous_collection_day``)."""
    closed_days = non_school_days_since_previous_collection_day(day)
    if not closed_days:
        return _exceptions(pl.DataFrame(), day, MARKS_ON_NON_SCHOOL_DAY).clear()
    marks = (
        _frame(mark_counts, "mark_counts")
        .filter(pl.col("date").is_in(closed_days))
        .join(_CODE_FLAGS, on="code", how="left")
        .filter(pl.col("is_possible").fill_null(False))
    )
    per_school = marks.group_by("urn").agg(
        pl.col("marks").sum().alias("observed"),
        pl.col("date").unique().sort().dt.strftime("%a %Y-%m-%d").str.join(", ").alias("dates"),
    )
    detail = pl.format("{} attendance marks dated {} (weekend or bank holiday)",
                       pl.col("observed"), pl.col("dates"))
    return _exceptions(per_school.with_columns(expected=pl.lit(0.0), detail=detail),
                       day, MARKS_ON_NON_SCHOOL_DAY)


def marks_after_leaving(leaver_marks: Frame, day: dt.date) -> pl.DataFrame:
    """Schools with marks on ``day`` (other than "-", no mark) for pupils whose leaving date is before it."""
    marks = _frame(leaver_marks, "leaver_marks").filter(
        (pl.col("date") == day) & pl.col("leaving_date").is_not_null()
        & (pl.col("date") > pl.col("leaving_date")) & (pl.col("code") != NO_MARK))
    per_school = marks.group_by("urn").agg(pl.len().alias("observed"))
    detail = pl.format("{} marks on {} for pupils whose leaving date had passed",
                       pl.col("observed"), pl.lit(day.isoformat()))
    return _exceptions(per_school.with_columns(expected=pl.lit(0.0), detail=detail), day, MARKS_AFTER_LEAVING)


def reason_code_spikes(mark_counts: Frame, schools: Frame, day: dt.date,
                       thresholds: Thresholds = Thresholds()) -> pl.DataFrame:
    """(LA, code) pairs where the code's share of the LA's marks on ``day`` is more than ``spike_max_z``
    standard deviations above its mean share over the LA's previous ``spike_history_days`` school days.
    Presence marks and "no mark" are not reasons and are not judged (they still count in the total).
    The detail names the three schools contributing most marks of the code."""
    la_of = _frame(schools, "schools").select("urn", pl.col("old_la_code").alias("la_code")).unique("urn")
    marks = _frame(mark_counts, "mark_counts").join(la_of, on="urn", how="inner")
    la_days = marks.group_by("la_code", "date").agg(pl.col("marks").sum().alias("la_marks"))
    la_codes = marks.filter(~pl.col("code").is_in(NOT_REASONS)).select("la_code", "code").unique()
    counts = marks.group_by("la_code", "date", "code").agg(pl.col("marks").sum().alias("code_marks"))
    shares = (
        la_days.join(la_codes, on="la_code")  # every (LA, day, code): a day without the code has share 0
        .join(counts, on=["la_code", "date", "code"], how="left")
        .with_columns(share=pl.col("code_marks").fill_null(0) / pl.col("la_marks"))
    )
    history = (
        _previous_days(shares, "la_code", "date", day, thresholds.spike_history_days)
        .group_by("la_code", "code")
        .agg(pl.col("share").mean().alias("mean"), pl.col("share").std().fill_null(0.0).alias("std"),
             pl.col("date").n_unique().alias("days"))
    )
    std = pl.max_horizontal(pl.col("std"), pl.lit(thresholds.spike_min_std))
    z = (pl.col("share") - pl.col("mean")) / std
    spikes = (
        shares.filter((pl.col("date") == day) & (pl.col("la_marks") >= thresholds.spike_min_marks))
        .join(history, on=["la_code", "code"])
        .filter(pl.col("days") >= thresholds.spike_min_history_days)
        .with_columns(z=z)
        .filter(pl.col("z") > thresholds.spike_max_z)
    )
    contributors = (
        marks.filter(pl.col("date") == day)
        .group_by("la_code", "code", "urn").agg(pl.col("marks").sum())
        .sort(["marks", "urn"], descending=[True, False])
        .group_by("la_code", "code", maintain_order=True)
        .agg(pl.format("{} ({})", pl.col("urn"), pl.col("marks")).head(3).str.join(", ").alias("top"))
    )
    spikes = spikes.join(contributors, on=["la_code", "code"], how="left")
    detail = pl.format(
        "code {}: {}% of the LA's marks against a mean of {}% over the previous {} school days (z={}); "
        "most from {}",
        pl.col("code"), _pct(pl.col("share") * 100, 2), _pct(pl.col("mean") * 100, 2), pl.col("days"),
        _pct(pl.col("z")), pl.col("top"))
    return _exceptions(
        spikes.with_columns(register_code=pl.col("code"), observed=pl.col("share") * 100,
                            expected=pl.col("mean") * 100, detail=detail),
        day, REASON_CODE_SPIKE)


# --- all together ---------------------------------------------------------------------------------------

def run_checks(inputs: DqInputs, day: dt.date, thresholds: Thresholds = Thresholds(),
               checks: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Every check (or those named) for ``day``; la_code filled in from the register. ``missing_extract``
    runs only on collection days (weekdays that are not bank holidays)."""
    wanted = tuple(CHECKS) if checks is None else checks
    unknown = [c for c in wanted if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    runners = {
        MISSING_EXTRACT: lambda: missing_extracts(inputs.schools, inputs.extracts, day),
        ROLL_CHANGE: lambda: roll_changes(inputs.extracts, day, thresholds),
        ATTENDANCE_RATE_OUTLIER: lambda: attendance_rate_outliers(inputs.mark_counts, day, thresholds),
        UNIFORM_MARKS: lambda: uniform_marks(inputs.extract_mark_counts, day, thresholds),
        MARKS_ON_CLOSED_SESSION: lambda: marks_on_closed_sessions(inputs.mark_counts, day, thresholds),
        MARKS_ON_NON_SCHOOL_DAY: lambda: marks_on_non_school_days(inputs.mark_counts, day),
        MARKS_AFTER_LEAVING: lambda: marks_after_leaving(inputs.leaver_marks, day),
        REASON_CODE_SPIKE: lambda: reason_code_spikes(inputs.mark_counts, inputs.schools, day, thresholds),
    }
    results = [runners[c]() for c in wanted if c != MISSING_EXTRACT or is_collection_day(day)]
    found = pl.concat(results, how="vertical") if results else _exceptions(pl.DataFrame(), day, "").clear()
    la_of = (_frame(inputs.schools, "schools")
             .select("urn", pl.col("old_la_code").alias("register_la")).unique("urn"))
    return (
        found.join(la_of, on="urn", how="left")
        .with_columns(pl.coalesce("la_code", "register_la").alias("la_code"))
        .drop("register_la")
        .sort(["check", "la_code", "urn", "register_code"], nulls_last=True)
    )


def count_by_check(exceptions: pl.DataFrame) -> dict[str, int]:
    """Exceptions per check, with 0 for every check that found none."""
    counts = dict.fromkeys(CHECKS, 0)
    for check, n in exceptions.group_by("check").len().iter_rows():
        counts[check] = int(n)
    return counts
