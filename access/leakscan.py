"""A scan of the zones that leave the pupil level: nothing there may identify a child or a lone school.

For every Delta table in ``la_aggregates`` and ``published`` and every CSV/Parquet file in ``published``:

* no pupil column (``upn``, ``pupil_key``, a name, anything named like a date of birth);
* no UPN-shaped text in any string cell, and no school identifier written into text (``"urn": ...``);
* no cell that the primary disclosure rules of the statistics would suppress left unsuppressed:
  a Local authority row built from one school (DfE: counts and rates become ``c`` when
  ``geographic_level == "Local authority" & num_schools == 1``; EES data guidance "Pupil attendance in
  schools, Week 51 2024"), or a row with fewer pupils than the minimum pupil count of
  ``official_stats.disclosure`` (when that package is installed). Secondary suppression is the
  statistics package's own test; it cannot be re-derived from one file.

Findings carry counts and column names, never a cell's value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from access.policy import PUPIL_ROW_COLUMNS

log = logging.getLogger(__name__)

#: UPN-shaped text (schemas.upn.UPN_PATTERN, unanchored; Rust regex has no look-around).
UPN_IN_TEXT = r"(^|[^A-Z0-9])[A-HJ-NP-RT-Z][0-9]{11}[0-9A-HJ-NP-RT-Z]($|[^A-Z0-9])"
#: A school identifier written into text (JSON such as {"urn": "100000", ...}).
URN_IN_TEXT = r'(?i)"(school_)?urn"\s*:'
#: EES symbols that stand in for a suppressed or unavailable value (DfE open data standards).
SYMBOLS = frozenset({"c", "x", "z", "low", "k", "u"})
SCHOOL_COUNT_COLUMNS = ("num_schools", "school_submitted_count", "school_all_count", "total_num_schools")
PUPIL_COUNT_COLUMNS = ("enrolments", "pa_enrolments")
#: Columns that describe a row rather than measure it (EES time, geography and filter columns).
NON_INDICATOR_COLUMNS = frozenset(
    {
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
        "education_phase",
        "time_frame",
        "period_start",
        "period_end",
        "term",
        "academic_year",
        "attendance_date",
        "date",
        "reference_date",
        "fsm_status",
        "sen_status",
        "year_group",
        "characteristic",
        "breakdown",
        "breakdown_topic",
        "suppression",
        "suppression_reason",
        "computed_at",
        "aggregated_at",
        "published_at",
        "run_id",
        "source_version",
    }
)
_NUMBER = r"^-?[0-9]+(\.[0-9]+)?$"


@dataclass(frozen=True)
class Finding:
    location: str  # zone/table or zone/path
    check: str  # pupil-column, date-of-birth-column, upn-text, disclosure
    detail: str  # columns and counts, never values


def _is_dob(name: str) -> bool:
    lowered = name.lower()
    return lowered in ("dob", "date_of_birth", "birth_date") or "birth" in lowered


def _numeric(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_numeric():
        return column.cast(pl.Float64)
    return column.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def scan_frame(
    location: str, frame: pl.DataFrame, *, single_school_max: int = 1, min_pupil_count: int | None = None
) -> list[Finding]:
    """Findings for one table or file (pure)."""
    findings: list[Finding] = []
    pupil_columns = sorted(c for c in frame.columns if c.lower() in PUPIL_ROW_COLUMNS and not _is_dob(c))
    if pupil_columns:
        findings.append(Finding(location, "pupil-column", f"pupil column(s): {', '.join(pupil_columns)}"))
    dob_columns = sorted(c for c in frame.columns if _is_dob(c))
    if dob_columns:
        findings.append(Finding(location, "date-of-birth-column", f"column(s): {', '.join(dob_columns)}"))
    text_columns = [c for c, t in frame.schema.items() if t == pl.String]
    if text_columns and frame.height:
        hits = frame.select(
            pl.col(c).str.contains(UPN_IN_TEXT).fill_null(False).sum() for c in text_columns
        ).row(0)
        for column, count in zip(text_columns, hits, strict=True):
            if count:
                findings.append(
                    Finding(location, "upn-text", f"{count} cell(s) of {column} hold UPN-shaped text")
                )
    if text_columns and frame.height:
        named = frame.select(
            pl.col(c).str.contains(URN_IN_TEXT).fill_null(False).sum() for c in text_columns
        ).row(0)
        for column, count in zip(text_columns, named, strict=True):
            if count:
                findings.append(
                    Finding(location, "school-in-text", f"{count} cell(s) of {column} name a school (urn)")
                )
    findings.extend(_disclosure(location, frame, single_school_max, min_pupil_count))
    return findings


def _disclosure(
    location: str, frame: pl.DataFrame, single_school_max: int, min_pupil_count: int | None
) -> list[Finding]:
    if frame.height == 0:
        return []
    schema = frame.schema
    rules: list[tuple[str, pl.Expr]] = []
    count_column = next((c for c in SCHOOL_COUNT_COLUMNS if c in schema), None)
    if "geographic_level" in schema and count_column == "num_schools":
        level = pl.col("geographic_level").cast(pl.String).str.to_lowercase().str.replace_all("_", " ")
        schools = _numeric(pl.col(count_column), schema[count_column])
        rules.append(("single school", (level == "local authority") & (schools <= single_school_max)))
    if min_pupil_count is not None:
        for column in PUPIL_COUNT_COLUMNS:
            if column in schema:
                pupils = _numeric(pl.col(column), schema[column])
                rules.append((f"fewer than {min_pupil_count} pupils ({column})", pupils < min_pupil_count))
    if not rules:
        return []
    protected = set(NON_INDICATOR_COLUMNS) | set(SCHOOL_COUNT_COLUMNS)
    indicators = [c for c, t in schema.items() if c not in protected and (t.is_numeric() or t == pl.String)]
    indicators = [c for c in indicators if schema[c].is_numeric() or _looks_like_indicator(frame, c)]
    findings = []
    for rule_name, condition in rules:
        flagged = frame.filter(condition.fill_null(False))
        if flagged.height == 0:
            continue
        open_cells = []
        for column in indicators:
            value = pl.col(column)
            if schema[column].is_numeric():
                unsuppressed = value.is_not_null() & ~value.cast(pl.Float64).is_nan()
            else:
                text = value.cast(pl.String).str.strip_chars().str.to_lowercase()
                unsuppressed = value.is_not_null() & (text != "") & ~text.is_in(list(SYMBOLS))
            count = flagged.select(unsuppressed.sum()).item()
            if count:
                open_cells.append(f"{column} ({count})")
        if open_cells:
            if len(open_cells) > 6:
                open_cells = [*open_cells[:6], f"and {len(open_cells) - 6} more column(s)"]
            findings.append(
                Finding(
                    location,
                    "disclosure",
                    f"{flagged.height} row(s) meet the rule '{rule_name}' but show values in "
                    + ", ".join(open_cells),
                )
            )
    return findings


def _looks_like_indicator(frame: pl.DataFrame, column: str) -> bool:
    """A text column of numbers and EES symbols only (how indicators look in a published CSV)."""
    text = frame.get_column(column).cast(pl.String).str.strip_chars().drop_nulls()
    text = text.filter(text != "")
    if text.len() == 0:
        return False
    lowered = text.str.to_lowercase()
    return bool((text.str.contains(_NUMBER) | lowered.is_in(list(SYMBOLS))).all()) and bool(
        text.str.contains(_NUMBER).any()
    )


def _statistics_rules() -> tuple[int, int | None]:
    try:
        from official_stats.disclosure import DisclosureRules

        rules = DisclosureRules.from_config()
        return int(rules.single_school_max), int(rules.min_pupil_count)
    except Exception:  # the statistics package is absent or not configured: single-school rule only
        return 1, None


def scan_outputs(lake_uri: str, storage_options: Mapping[str, str] | None = None) -> list[Finding]:
    """Scan every table and file in the ``la_aggregates`` and ``published`` zones of the lake."""
    from access.gateway import discover
    from storage.lake import storage_options as lake_storage_options
    from storage.tables import Zone

    opts = dict(storage_options if storage_options is not None else lake_storage_options(lake_uri=lake_uri))
    single_school_max, min_pupil_count = _statistics_rules()
    infos, sources = discover(lake_uri, opts)
    findings: list[Finding] = []
    for name in sorted(infos):
        info, source = infos[name], sources[name]
        if info.zone not in (Zone.LA_AND_ABOVE, Zone.PUBLISHED):
            continue
        location = source.uri[len(lake_uri.rstrip("/")) + 1 :]
        if source.kind == "delta":
            from deltalake import DeltaTable

            frame = pl.scan_delta(DeltaTable(source.uri, storage_options=opts)).collect()
        elif source.kind == "csv":
            frame = pl.read_csv(source.uri, infer_schema=False)
        else:
            frame = pl.read_parquet(source.uri)
        findings.extend(
            scan_frame(location, frame, single_school_max=single_school_max, min_pupil_count=min_pupil_count)
        )
    return findings
