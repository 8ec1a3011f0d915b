"""Build a release's EES files from the aggregate tables: choose the data, apply disclosure control, screen.

The release covers the academic year of its last day of data: the latest aggregated register day before
the release date. Every file holds the year so far (DfE recalculates history each release as registers are
amended). If the aggregate tables already hold days after that last day (aggregated on the release
morning), the Week, Term and Year-to-date session figures are recomputed from the Day rows up to it, and
persistent absence (which needs the per-pupil totals as of that day) is published as ``x`` (unavailable).

A release is built from the exact figures (``stats_attendance_views_unsuppressed``, school zone: the
publisher is a privileged process) with the same disclosure control (:func:`official_stats.ees.disclose`)
that ``attendance aggregate`` stores in the LA-and-above zone (``stats_attendance_views``): when the release's
last day is the latest aggregated day (the normal case), the release suppresses exactly the rows that table
suppresses, so the zone and the files never show complementary cells of one suppressed figure.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from attendance.errors import UserFacingError
from official_stats import contracts, ees, periods, scope, screener, views
from official_stats.disclosure import DisclosureRules
from official_stats.incremental import Lake
from storage.tables import table

log = logging.getLogger(__name__)


@dataclass
class BuiltRelease:
    release_date: dt.date
    data_end: dt.date
    academic_year: str
    files: list[ees.EesFile]
    pa_available: bool
    suppressed_rows: int
    secondary_suppressed_rows: int


def latest_day(lake: Lake, before: dt.date) -> dt.date | None:
    """The latest register day with Day view rows strictly before ``before``."""
    delta = lake.open(contracts.VIEWS_UNSUPPRESSED)
    if delta is None:
        return None
    actions = pa.table(delta.get_add_actions(flatten=True))
    days = [
        dt.date.fromisoformat(str(s)) if not isinstance(s, dt.date) else s
        for f, s in zip(
            actions.column("partition.time_frame").to_pylist(),
            actions.column("partition.period_start").to_pylist(),
            strict=True,
        )
        if f == views.DAY
    ]
    eligible = [d for d in days if d < before]
    return max(eligible) if eligible else None


def build_release(
    lake_uri: str,
    release_date: dt.date,
    rules: DisclosureRules | None = None,
    storage_options: dict[str, str] | None = None,
    include_release_date: bool = False,
) -> BuiltRelease:
    """The release's files: data up to the latest aggregated day before ``release_date`` (on or before it
    with ``include_release_date``, for an ad hoc publication)."""
    rules = rules or DisclosureRules.from_config()
    lake = Lake(lake_uri, storage_options)
    data_end = latest_day(lake, release_date + dt.timedelta(days=1) if include_release_date else release_date)
    if data_end is None:
        raise UserFacingError(f"no aggregated attendance before {release_date}: run `attendance aggregate` first")
    year_start = periods.academic_year_start(data_end)
    year = periods.academic_year_code(year_start)
    rows = lake.read(contracts.VIEWS_UNSUPPRESSED, filter=ds.field("academic_year") == year)
    days = rows.filter(pl.col("time_frame") == views.DAY)
    pa_available = days["period_start"].max() <= data_end
    if not pa_available:
        log.warning(
            "aggregates hold days after %s: recomputing periods to it; persistent absence unavailable",
            data_end,
        )
        days = days.filter(pl.col("period_start") <= data_end)
        first = periods.academic_year_bounds(year_start)[0]
        school_days = lake.read(
            contracts.SCHOOL_DAILY,
            ["date", "urn", "education_phase", *scope.GEOGRAPHY_COLUMNS],
            (ds.field("date") >= pa.scalar(first, pa.date32()))
            & (ds.field("date") <= pa.scalar(data_end, pa.date32())),
        )
        schools = lake.read(table("schools"))
        register = scope.schools_in_scope(schools, data_end)
        rows = pl.concat([days, views.all_period_rows(days, school_days, register)], how="vertical_relaxed")
    rows = ees.release_rows(rows, data_end)
    disclosed = ees.disclose(rows, rules)
    files = ees.build_files(disclosed, rules, pa_available=pa_available)
    reasons = disclosed["suppression_reason"]
    return BuiltRelease(
        release_date,
        data_end,
        year,
        files,
        pa_available,
        int(disclosed["suppressed"].sum()),
        int((reasons == "secondary").sum()),
    )


def screen_built(files: list[ees.EesFile]) -> dict[str, screener.ScreenResult]:
    return {
        f.name: screener.screen_frames(_as_text(f.data), _as_text(f.meta), f"{f.name}.csv", f"{f.name}.meta.csv")
        for f in files
    }


def _as_text(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns([pl.col(c).cast(pl.String).fill_null("") for c in frame.columns])


def write_release(built: BuiltRelease, directory: Path, screen: bool = True) -> list[Path]:
    """Write the files; with ``screen``, refuse (UserFacingError) when a file fails the EES screener."""
    if screen:
        failures = {name: result.failures for name, result in screen_built(built.files).items() if not result.passed}
        if failures:
            detail = "; ".join(
                f"{name}: {', '.join(f.check + ' (' + f.message + ')' for f in fs)}" for name, fs in failures.items()
            )
            raise UserFacingError(f"EES screener failed, nothing written: {detail}")
    return ees.write_files(built.files, directory)
