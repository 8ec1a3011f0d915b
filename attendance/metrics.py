"""The one registry of Prometheus metrics. Every process imports its metrics from here.

Conventions: counters end in ``_total``, durations are ``_seconds``, sizes ``_bytes``. Labels are bounded:
at most an LA code (about 150 values), a reason code (the rule registry), a stage or a table name.
Never a URN, never a pupil field.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_E2E_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

# --- stream ------------------------------------------------------------------------------------------
MESSAGES_CONSUMED = Counter(
    "attendance_messages_consumed_total", "Extract messages (chunks) consumed from Kafka.", registry=REGISTRY)
PUPIL_RECORDS_CONSUMED = Counter(
    "attendance_pupil_records_consumed_total", "Pupil records decoded from consumed messages.", registry=REGISTRY)
PUPIL_RECORDS_ACCEPTED = Counter(
    "attendance_pupil_records_accepted_total", "Pupil records that passed validation and were stored.",
    registry=REGISTRY)
MARKS_ACCEPTED = Counter(
    "attendance_session_marks_accepted_total", "Session marks that passed validation and were stored.",
    registry=REGISTRY)
REJECTIONS = Counter(
    "attendance_rejections_total", "Things quarantined, by rule reason code and severity.",
    ["reason_code", "severity"], registry=REGISTRY)
EXTRA_FIELDS_DROPPED = Counter(
    "attendance_fields_outside_contract_dropped_total",
    "Fields outside the feed contract (names, comments, ...) dropped before storage.", registry=REGISTRY)
OPTOUT_PUPILS_DROPPED = Counter(
    "attendance_optout_pupils_dropped_total", "Pupil records dropped because their school opted out.",
    registry=REGISTRY)
OPTOUT_EXTRACTS_DROPPED = Counter(
    "attendance_optout_extracts_dropped_total", "Extracts dropped because their school opted out.",
    registry=REGISTRY)
EXTRACTS_COMPLETED = Counter(
    "attendance_extracts_total", "Extracts resolved, by status (complete, incomplete, rejected, dropped_opt_out).",
    ["status"], registry=REGISTRY)
DEADLETTERED = Counter(
    "attendance_deadletter_messages_total", "Messages that could not be read and went to the dead-letter topic.",
    registry=REGISTRY)
CONSUMER_LAG = Gauge(
    "attendance_consumer_lag_messages", "End offset minus next offset to process, per partition.",
    ["partition"], registry=REGISTRY)
BATCH_MESSAGES = Histogram(
    "attendance_batch_messages", "Messages per processed batch.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500), registry=REGISTRY)
BATCH_PROCESSING_SECONDS = Histogram(
    "attendance_batch_processing_seconds", "Time to decode, validate and commit one batch.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY)
BATCH_STAGE_SECONDS = Histogram(
    "attendance_batch_stage_seconds",
    "Time one batch spent in each stage of the worker: gather (waiting for its records), barrier (opt-out "
    "catch-up), process (decode, validate, judge), wait (for the batch before to commit), write (its Delta "
    "commits).",
    ["stage"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
END_TO_END_SECONDS = Histogram(
    "attendance_end_to_end_latency_seconds", "From an extract's generated_at to its rows committed in Delta.",
    buckets=_E2E_BUCKETS, registry=REGISTRY)
PENDING_EXTRACTS = Gauge(
    "attendance_pending_extracts", "Extracts waiting for missing chunks.", registry=REGISTRY)
WORKER_ASSIGNED_PARTITIONS = Gauge(
    "attendance_worker_assigned_partitions", "Partitions of the extracts topic assigned to this worker.",
    registry=REGISTRY)

# --- Delta sink --------------------------------------------------------------------------------------
DELTA_COMMIT_SECONDS = Histogram(
    "attendance_delta_commit_seconds", "Duration of one Delta commit (write or merge), by table.",
    ["table"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
DELTA_COMMIT_RETRIES = Counter(
    "attendance_delta_commit_retries_total", "Delta commits retried after a conflict, by table.",
    ["table"], registry=REGISTRY)
DELTA_COMMIT_CONFLICTS = Counter(
    "attendance_delta_commit_conflicts_total", "Delta commit conflicts seen, by table.", ["table"],
    registry=REGISTRY)
DELTA_ROWS_WRITTEN = Counter(
    "attendance_delta_rows_written_total", "Rows written (inserted or updated) by table.", ["table"],
    registry=REGISTRY)

FOLD_SECONDS = Histogram(
    "attendance_fold_seconds", "Duration of one fold of staged rows into attendance_sessions and pupils.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY)
FOLDED_ROWS = Counter(
    "attendance_folded_rows_total", "Staged rows folded into their table (newest wins), by staging table.",
    ["table"], registry=REGISTRY)
STAGED_ROWS = Gauge(
    "attendance_staged_rows", "Rows this process staged since its last fold, by staging table.", ["table"],
    registry=REGISTRY)
LAST_FOLD_TIMESTAMP = Gauge(
    "attendance_last_fold_timestamp_seconds", "Unix time of this process's last completed fold.",
    registry=REGISTRY)

# --- schools and statistics -------------------------------------------------------------------------
SCHOOLS_SUBMITTED_TODAY = Gauge(
    "attendance_schools_submitted", "Schools with a complete extract for today, by LA.", ["la_code"],
    registry=REGISTRY)
SCHOOLS_EXPECTED_TODAY = Gauge(
    "attendance_schools_expected", "Open in-scope schools in the register, by LA.", ["la_code"],
    registry=REGISTRY)
LAST_AGGREGATION_TIMESTAMP = Gauge(
    "attendance_last_successful_aggregation_timestamp_seconds", "Unix time of the last successful aggregation.",
    registry=REGISTRY)
LAST_PUBLICATION_TIMESTAMP = Gauge(
    "attendance_last_successful_publication_timestamp_seconds", "Unix time of the last successful publication.",
    registry=REGISTRY)
RELEASE_STATUS = Gauge(
    "attendance_release_status",
    "Release state of the next release: 0 not prepared, 1 under embargo, 2 published, 3 late, 4 incomplete.",
    registry=REGISTRY)
OPTOUT_PURGES_PENDING = Gauge(
    "attendance_optout_purges_pending", "Opt-out purges requested but not yet verified destroyed.",
    registry=REGISTRY)
DQ_EXCEPTIONS = Counter(
    "attendance_dq_exceptions_total", "Data-quality exceptions raised, by check.", ["check"], registry=REGISTRY)

# --- added by ops ------------------------------------------------------------------------------------
# Appended by the operations work (attendance/http.py, dq/, deploy/). Nothing above is renamed.


def _uk_utc_offset_seconds() -> float:
    """Europe/London's current offset from UTC (0 in GMT, 3600 in BST), read at scrape time.

    PromQL's hour() and day_of_week() work in UTC only; alert rules add this offset to compare against UK
    clock times (deploy/prometheus/alerts.yml, recording rule ``attendance:uk_local_time_seconds``).
    """
    import datetime as _dt
    from zoneinfo import ZoneInfo

    offset = _dt.datetime.now(ZoneInfo("Europe/London")).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


PROCESS_HEARTBEAT_TIMESTAMP = Gauge(
    "attendance_process_heartbeat_timestamp_seconds",
    "Unix time of the process loop's last heartbeat (attendance.http.Readiness.heartbeat).",
    registry=REGISTRY)
UK_UTC_OFFSET = Gauge(
    "attendance_uk_utc_offset_seconds", "Europe/London offset from UTC now: 0 (GMT) or 3600 (BST).",
    registry=REGISTRY)
UK_UTC_OFFSET.set_function(_uk_utc_offset_seconds)
RELEASE_SCHEDULED_TIMESTAMP = Gauge(
    "attendance_release_scheduled_timestamp_seconds",
    "Unix time the next (or today's) release is due to be published (09:30 UK); 0 when none is scheduled.",
    registry=REGISTRY)
DQ_EXCEPTIONS_LAST_REPORT = Gauge(
    "attendance_dq_exceptions_last_report", "Data-quality exceptions in the latest report, by check.",
    ["check"], registry=REGISTRY)
DQ_LAST_REPORT_TIMESTAMP = Gauge(
    "attendance_dq_last_report_timestamp_seconds", "Unix time the latest data-quality report finished.",
    registry=REGISTRY)
