"""The one settings object: every knob, read from ``ATTENDANCE_*`` environment variables.

Defaults run on a laptop: a local broker started by ``attendance kafka start`` and a Delta lake in ``./lake``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATTENDANCE_", frozen=True, extra="ignore")

    # --- Kafka ---------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Comma-separated bootstrap servers. Unset: use the local broker that "
        "`attendance kafka start` recorded in the state directory.",
    )
    state_dir: Path = Field(
        default=Path(".attendance"),
        description="Where the local broker keeps its data, config, log and address file.",
    )
    kafka_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "attendance" / "kafka",
        description="Where the broker's jars from Maven Central are cached (outside the repository).",
    )
    kafka_version: str = Field(default="4.1.1", description="Apache Kafka version provisioned from Maven.")
    kafka_heap: str = Field(default="512m", description="-Xmx for the local broker JVM.")
    kafka_start_timeout_s: float = Field(default=90.0, description="How long `kafka start` waits for readiness.")

    topic_extracts: str = "attendance.extracts.v1"
    topic_optouts: str = "attendance.optouts.v1"
    topic_deadletter: str = "attendance.deadletter.v1"
    extracts_partitions: int = Field(default=8, ge=1)
    extracts_retention_days: int = Field(default=14, ge=1, description="Long enough to replay a week and more.")
    deadletter_retention_days: int = Field(default=30, ge=1)
    max_message_bytes: int = Field(
        default=1_000_000,
        description="Largest message the producer sends (uncompressed); extracts are chunked below it. "
        "Kept under the broker's default message.max.bytes (1,048,588).",
    )
    delivery_timeout_s: float = Field(default=30.0, description="Producer: give up on a message after this.")
    connect_timeout_s: float = Field(default=8.0, description="How long to wait for an unreachable broker.")

    consumer_group: str = "attendance-worker"
    batch_max_messages: int = Field(
        default=256, ge=1, description="Worker: most messages (chunks) judged and committed as one batch.")
    batch_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, description="Worker: most message bytes in one batch (bounds memory).")
    decode_threads: int = Field(
        default=2, ge=1, description="Worker: threads that parse a batch's JSON side by side (the compiled "
        "reader and Arrow's release the GIL); about the cores a worker may use.")
    worker_max_consecutive_failures: int = Field(
        default=5, ge=1, description="Worker: stop (exit 1) after this many failed batches in a row.")
    batch_max_latency_s: float = Field(
        default=1.0, gt=0, description="Worker: longest wait to fill a batch before committing what it has.")
    fold_idle_s: float = Field(
        default=5.0, gt=0, description="Continuous worker: fold staged amendments, pupil records and "
        "extract states after this long without a batch (caught up).")
    fold_interval_s: float = Field(
        default=900.0, gt=0, description="Continuous worker: fold at least this often while staged rows wait "
        "(readers resolve staged rows meanwhile; this bounds how much they resolve).")
    fold_max_staged_rows: int = Field(
        default=10_000_000, ge=1, description="Worker: fold once it has staged this many rows (a safety valve: a "
        "fold reads staged pupil records one URN range at a time, so a national day folds at once).")

    # --- Delta lake -----------------------------------------------------------------------------
    lake_uri: str = Field(default="./lake", description="Root of the Delta lake (a path or s3:// URI).")

    # --- Validation ----------------------------------------------------------------------------
    extract_max_age_days: int = Field(default=30, ge=1, description="Older extract_date is rejected.")
    amendment_window_school_days: int = Field(
        default=7, ge=0, description="Marks may be amended for this many school days before extract_date."
    )
    incomplete_extract_timeout_s: float = Field(
        default=3600.0, description="An extract still missing chunks after this is reported incomplete."
    )

    # --- Observability -------------------------------------------------------------------------
    metrics_port: int = Field(default=9108, description="Port of /metrics, /healthz, /readyz; 0 disables.")
    metrics_textfile: Path | None = Field(
        default=None, description="Run-once commands write their metrics here (node-exporter textfile).")
    pushgateway_url: str | None = Field(default=None, description="Run-once commands push their metrics here.")
    log_level: str = "INFO"
    operator: str = Field(default_factory=lambda: os.environ.get("USER", "unknown"),
                          description="Who runs commands that record an actor (opt-outs, purges).")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
