"""Disclosure control: which published cells are confidential, and the EES symbols.

Rules (configurable, :class:`DisclosureRules`; written up for statisticians in docs/statistics.md):

1. **Single school** (DfE's practice for this series): a Local authority row built from
   ``single_school_max`` (default 1) school or fewer is suppressed: all its counts and rates become ``c``
   [S: EES data guidance "Pupil attendance in schools, Week 51 2024" (suppression only where an LA has one
   school); dfe-analytical-services/attendance-data-dashboard code: counts and rates -> "c" when
   ``geographic_level == "Local authority" & num_schools == 1``]. The number of schools of a period is the
   distinct schools with data in it (``school_submitted_count``); a row whose published ``num_schools``
   (the daily mean, rounded to ``count_dp``) is ``single_school_max`` or fewer is suppressed too, so that no
   published LA row says "1 school" beside its figures.
2. **Minimum pupil count**: any row (any level, characteristic breakdowns included) whose pupil count is
   below ``min_pupil_count`` (default 10) is suppressed: ``enrolments`` (a day's pupils, or the mean over a
   period) or, on Term / Year-to-date rows, the persistent-absence denominator ``pa_enrolments``.
3. **Secondary suppression** so that no suppressed row can be recovered by subtraction. Published counts
   add up along these relations (a *group*: one total row and its component rows):

   - phase: Total = Primary + Secondary + Special (same place, time and characteristics);
   - geography: Region = sum of its LAs; National = sum of the regions (same phase, time, characteristics);
   - characteristics: all pupils = sum over the FSM (or SEN, or year group) categories (National, Regional);
   - time: a Week = sum of its days; a Term = sum of its days; the Year to date = sum of its terms.

   A group with exactly one suppressed row leaks it (total minus the published others). The rule, applied
   until no group has exactly one suppressed row: suppress the unsuppressed component with the fewest
   pupils (ties: first in row order); if there is none, suppress the total. Suppressed rows only ever grow,
   so this terminates. It is the standard "no singleton suppression per relation" protection; it does not
   solve every system of equations across relations (see docs/statistics.md, "Limits").

Symbols [S: DfE open data standards, analysts-guide statistics-production/ud.qmd; eesyscreener
check_general_null.R / check_ind_invalid_entry.R]: ``c`` confidential, ``z`` not applicable (a rate with no
possible sessions, persistent absence of a daily row), ``x`` not available, ``low`` a positive value that
rounds to zero at the published precision.

School counts (``num_schools``, ``school_submitted_count``, ``school_all_count``) are not suppressed: which
schools are open and submitting is public (the register and the coverage figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from official_stats.views import (
    DAY,
    LOCAL_AUTHORITY,
    NATIONAL,
    REGIONAL,
    TERM,
    TOTAL,
    WEEK,
    YEAR_TO_DATE,
)

CONFIDENTIAL, NOT_APPLICABLE, NOT_AVAILABLE, LOW = "c", "z", "x", "low"
SYMBOLS: frozenset[str] = frozenset({CONFIDENTIAL, NOT_APPLICABLE, NOT_AVAILABLE, LOW})

SINGLE_SCHOOL, FEW_PUPILS, SECONDARY = "single_school", "few_pupils", "secondary"

_TIME = ["time_frame", "period_start", "period_end", "term", "academic_year"]
_PLACE = ["geographic_level", "region_code", "old_la_code", "new_la_code"]
_CHARS = ["fsm_status", "sen_status", "year_group"]


@dataclass(frozen=True)
class DisclosureRules:
    single_school_max: int = 1
    min_pupil_count: int = 10
    rate_dp: int = 2
    count_dp: int = 0

    @classmethod
    def from_config(cls) -> DisclosureRules:
        from official_stats.config import get_stats_config

        config = get_stats_config()
        return cls(config.single_school_max, config.min_pupil_count, config.rate_dp, config.count_dp)


def primary_suppression(rows: pl.DataFrame, rules: DisclosureRules) -> pl.Series:
    """The reason a row is suppressed on its own (``single_school``, ``few_pupils``) or null."""
    schools = pl.col("school_submitted_count") <= rules.single_school_max
    if "num_schools" in rows.columns:
        # DfE tests the published num_schools (the mean over a period's days): a week of two schools that
        # never submitted on the same day shows "1" and is suppressed as a one-school row
        # [S: attendance-data-dashboard: counts and rates -> "c" when num_schools == 1 at LA level].
        schools = schools | (pl.col("num_schools").round(rules.count_dp) <= rules.single_school_max).fill_null(False)
    single = (pl.col("geographic_level") == LOCAL_AUTHORITY) & schools
    few = pl.col("enrolments").fill_null(0) < rules.min_pupil_count
    if "pa_enrolments" in rows.columns:
        few = few | (pl.col("pa_enrolments").is_not_null() & (pl.col("pa_enrolments") < rules.min_pupil_count))
    reason = (
        pl.when(single)
        .then(pl.lit(SINGLE_SCHOOL))
        .when(few)
        .then(pl.lit(FEW_PUPILS))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return rows.select(reason.alias("suppression_reason")).to_series()


def _key(columns: list[str]) -> pl.Expr:
    return pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in columns], separator="|")


def additive_groups(rows: pl.DataFrame) -> pl.DataFrame:
    """Every additive relation among ``rows`` as ``group, row_id, is_total`` (rows carry ``row_id``)."""
    parts: list[pl.DataFrame] = []

    def emit(name: str, frame: pl.DataFrame, key_columns: list[str], is_total: pl.Expr) -> None:
        if frame.height:
            parts.append(
                frame.select(
                    (pl.lit(name + "#") + _key(key_columns)).alias("group"),
                    pl.col("row_id"),
                    is_total.alias("is_total"),
                )
            )

    phase_keys = _TIME + _PLACE + _CHARS
    emit("phase", rows, phase_keys, pl.col("education_phase") == TOTAL)

    region_rows = rows.filter(pl.col("geographic_level").is_in([REGIONAL, LOCAL_AUTHORITY]))
    emit(
        "region",
        region_rows,
        _TIME + ["region_code", "education_phase"] + _CHARS,
        pl.col("geographic_level") == REGIONAL,
    )
    national_rows = rows.filter(pl.col("geographic_level").is_in([NATIONAL, REGIONAL]))
    emit(
        "national",
        national_rows,
        _TIME + ["education_phase"] + _CHARS,
        pl.col("geographic_level") == NATIONAL,
    )

    for characteristic in _CHARS:
        others = [c for c in _CHARS if c != characteristic]
        subset = rows.filter(pl.all_horizontal([pl.col(c) == TOTAL for c in others]))
        emit(
            characteristic,
            subset,
            _TIME + _PLACE + ["education_phase"] + others,
            pl.col(characteristic) == TOTAL,
        )

    series = _PLACE + ["education_phase"] + _CHARS
    days = rows.filter(pl.col("time_frame") == DAY)
    for frame_name in (WEEK, TERM):
        totals = rows.filter(pl.col("time_frame") == frame_name).select(
            "row_id", *series, pl.col("period_start").alias("_p0"), pl.col("period_end").alias("_p1")
        )
        if totals.height == 0 or days.height == 0:
            continue
        members = (
            days.select("row_id", *series, "period_start")
            .join(totals.drop("row_id"), on=series, how="inner", nulls_equal=True)
            .filter((pl.col("period_start") >= pl.col("_p0")) & (pl.col("period_start") <= pl.col("_p1")))
        )
        group_key = _key(series + ["_p0"])
        comps = members.select(
            (pl.lit(frame_name + "#") + group_key).alias("group"), "row_id", pl.lit(False).alias("is_total")
        )
        tots = totals.select(
            (pl.lit(frame_name + "#") + group_key).alias("group"), "row_id", pl.lit(True).alias("is_total")
        )
        parts.append(pl.concat([tots, comps]))

    ytd = rows.filter(pl.col("time_frame") == YEAR_TO_DATE)
    terms = rows.filter(pl.col("time_frame") == TERM)
    if ytd.height and terms.height:
        key = _key(series + ["academic_year"])
        parts.append(
            pl.concat(
                [
                    ytd.select((pl.lit("ytd#") + key).alias("group"), "row_id", pl.lit(True).alias("is_total")),
                    terms.select((pl.lit("ytd#") + key).alias("group"), "row_id", pl.lit(False).alias("is_total")),
                ]
            )
        )
    if not parts:
        return pl.DataFrame(schema={"group": pl.String, "row_id": pl.UInt32, "is_total": pl.Boolean})
    groups = pl.concat(parts, how="vertical_relaxed")
    # keep only real relations: one total and at least one component
    shape = groups.group_by("group").agg(pl.col("is_total").sum().alias("_t"), pl.len().alias("_n"))
    keep = shape.filter((pl.col("_t") == 1) & (pl.col("_n") >= 2)).select("group")
    return groups.join(keep, on="group", how="semi")


def secondary_suppression(
    rows: pl.DataFrame, suppressed: pl.Series, groups: pl.DataFrame, max_rounds: int = 10_000
) -> pl.Series:
    """Extend ``suppressed`` (bool per row, by ``row_id``) until no group has exactly one suppressed row."""
    state = suppressed.cast(pl.Boolean).alias("suppressed")
    size = rows.select("row_id", pl.col("enrolments").fill_null(0).alias("_size"))
    members = groups.join(size, on="row_id", how="left")
    member_ids = members["row_id"].cast(pl.Int64)
    for _ in range(max_rounds):
        flagged = members.with_columns(state.gather(member_ids).alias("_s"))
        counts = flagged.group_by("group").agg(pl.col("_s").sum().alias("_k"))
        violating = counts.filter(pl.col("_k") == 1).select("group")
        if violating.height == 0:
            break
        candidates = flagged.join(violating, on="group", how="semi").filter(~pl.col("_s"))
        components = (
            candidates.filter(~pl.col("is_total"))
            .sort("_size", "row_id")
            .group_by("group", maintain_order=True)
            .first()
        )
        totals = candidates.filter(pl.col("is_total")).join(components.select("group"), on="group", how="anti")
        new_rows = pl.concat([components["row_id"], totals["row_id"]]).unique()
        if new_rows.len() == 0:
            break
        state = state.scatter(new_rows.cast(pl.Int64), True)
    return state


def apply_disclosure(rows: pl.DataFrame, rules: DisclosureRules) -> pl.DataFrame:
    """``rows`` with ``suppressed`` (bool) and ``suppression_reason`` (single_school, few_pupils, secondary).

    All rows that are published together (every time frame, level, phase and breakdown of a release) must be
    passed together, so that relations across files are protected too.
    """
    rows = rows.with_row_index("row_id")
    reason = primary_suppression(rows, rules)
    primary = reason.is_not_null()
    final = secondary_suppression(rows, primary, additive_groups(rows))
    reason = (
        pl.DataFrame({"r": reason, "s": final})
        .select(
            pl.when(pl.col("r").is_not_null())
            .then(pl.col("r"))
            .when(pl.col("s"))
            .then(pl.lit(SECONDARY))
            .otherwise(None)
            .alias("suppression_reason")
        )
        .to_series()
    )
    return rows.with_columns(final.alias("suppressed"), reason).drop("row_id")


def recoverable_rows(rows: pl.DataFrame, suppressed: pl.Series) -> list[int]:
    """Row positions that some additive relation would reveal (exactly one suppressed row in a group).

    A checker for tests and for release verification: empty when disclosure control holds.
    """
    groups = additive_groups(rows.with_row_index("row_id"))
    flagged = groups.with_columns(suppressed.cast(pl.Boolean).gather(groups["row_id"].cast(pl.Int64)).alias("_s"))
    counts = flagged.group_by("group").agg(pl.col("_s").sum().alias("_k"))
    leaking = flagged.join(counts.filter(pl.col("_k") == 1), on="group").filter(pl.col("_s"))
    return sorted(set(leaking["row_id"].to_list()))
