"""Knobs of the statistics package, read from ``ATTENDANCE_STATS_*`` environment variables.

Kept apart from :class:`attendance.settings.Settings` (shared, frozen) so that a statistician can change a
disclosure threshold without touching the platform's settings.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StatsConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATTENDANCE_STATS_", frozen=True, extra="ignore")

    # --- disclosure control (docs/statistics.md "Disclosure control") ------------------------------
    single_school_max: int = Field(
        default=1,
        ge=0,
        description="A Local authority row built from this many schools or fewer is suppressed (DfE: 1).",
    )
    min_pupil_count: int = Field(
        default=10,
        ge=0,
        description="A row whose pupil count (enrolments, or the PA denominator) is below this is suppressed.",
    )
    rate_dp: int = Field(default=2, ge=0, le=6, description="Decimal places of published rates.")
    count_dp: int = Field(default=0, ge=0, le=3, description="Decimal places of published means (enrolments).")

    # --- incremental aggregation ---------------------------------------------------------------------
    pending_extract_max_age_days: int = Field(
        default=60,
        ge=1,
        description="Rows excluded because their extract was not complete are re-checked for this long.",
    )

    # --- release -------------------------------------------------------------------------------------
    release_time: str = Field(default="09:30", description="Publication time, local (Europe/London).")
    timezone: str = "Europe/London"
    pre_release_hours: float = Field(default=24.0, gt=0, description="Pre-release access window before release.")
    prepare_lead_hours: float = Field(
        default=24.0, gt=0, description="Outputs are prepared under embargo this long before release."
    )
    late_grace_minutes: float = Field(
        default=5.0, ge=0, description="Published later than release time + this is reported late."
    )
    scheduler_tick_seconds: float = Field(default=30.0, gt=0, description="How often the scheduler wakes.")


@lru_cache(maxsize=1)
def get_stats_config() -> StatsConfig:
    return StatsConfig()
