"""deploy/prometheus/alerts.yml: valid rule schema, only metrics the system exports, a runbook entry per
alert, and (when promtool is available: `make promtool`) promtool's own check and the rule unit tests in
alerts_test.yml."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from attendance.ops_commands import (
    exported_metric_names,
    metric_names_in_promql,
    promql_brackets_balanced,
    recorded_names,
    rule_file_exprs,
    unknown_metrics,
)

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
RUNBOOK = ROOT / "docs" / "operations.md"

DURATION = re.compile(r"^(?=\d)((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
ALERT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RECORD_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
GROUP_KEYS = {"name", "interval", "rules", "limit", "query_offset"}
ALERT_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
RECORD_KEYS = {"record", "expr", "labels"}
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def rules() -> dict:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))


def all_rules(document: dict) -> list[dict]:
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts(document: dict) -> list[dict]:
    return [rule for rule in all_rules(document) if "alert" in rule]


# --- the checker itself can fail ------------------------------------------------------------------------


def test_promql_lexer_finds_metric_names_and_ignores_labels_functions_and_durations():
    expr = (
        'sum by (le, table) (rate(foo_seconds_bucket{job="x", le="+Inf"}[5m])) '
        "/ on(instance) group_left(la_code) bar:ratio offset 1h > 3 and hour(vector(time())) >= 11 "
        "or absent(up{job='w'}) unless baz_total[1m:30s] * 1e3"
    )
    assert metric_names_in_promql(expr) == {"foo_seconds_bucket", "bar:ratio", "up", "baz_total"}


def test_checker_flags_unknown_metrics_and_unbalanced_brackets():
    problems = unknown_metrics(
        [
            ("r1", "rate(attendance_no_such_metric_total[5m])"),
            ("r2", "sum(rate(attendance_messages_consumed_total[5m])"),
        ]
    )
    assert any("attendance_no_such_metric_total" in p for p in problems)
    assert any("unbalanced" in p for p in problems)
    assert not promql_brackets_balanced("sum(x[5m)]")


def test_exported_names_carry_prometheus_suffixes():
    names = exported_metric_names()
    assert {
        "attendance_messages_consumed_total",
        "attendance_batch_processing_seconds_bucket",
        "attendance_batch_processing_seconds_count",
        "attendance_consumer_lag_messages",
    } <= names
    assert "attendance_messages_consumed" not in names


# --- schema -------------------------------------------------------------------------------------------------


def test_rule_file_has_only_groups_with_unique_names(rules):
    assert set(rules) == {"groups"}
    names = [g["name"] for g in rules["groups"]]
    assert len(names) == len(set(names))
    for group in rules["groups"]:
        assert set(group) <= GROUP_KEYS, group["name"]
        assert group["rules"], f"group {group['name']} has no rules"
        if "interval" in group:
            assert DURATION.match(str(group["interval"])), group["interval"]


def test_every_rule_is_an_alert_or_a_record_with_valid_fields(rules):
    for rule in all_rules(rules):
        assert ("alert" in rule) != ("record" in rule), rule
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), rule
        if "alert" in rule:
            assert set(rule) <= ALERT_KEYS, rule["alert"]
            assert ALERT_NAME.match(rule["alert"])
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    assert DURATION.match(str(rule[key])), f"{rule['alert']}: bad {key} {rule[key]!r}"
        else:
            assert set(rule) <= RECORD_KEYS, rule["record"]
            assert RECORD_NAME.match(rule["record"]) and ":" in rule["record"], rule["record"]
        for key in ("labels", "annotations"):
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in (rule.get(key) or {}).items()), (
                rule
            )


def test_alert_names_are_unique_and_each_has_severity_summary_and_runbook(rules):
    names = [a["alert"] for a in alerts(rules)]
    assert len(names) == len(set(names))
    for alert in alerts(rules):
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        annotations = alert["annotations"]
        assert annotations.get("summary") and annotations.get("description"), alert["alert"]
        assert annotations["runbook_url"] == f"docs/operations.md#{alert['alert'].lower()}"


def test_every_alert_has_a_runbook_section():
    headings = {
        line[4:].strip()
        for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
        if line.startswith("### ")
    }
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    missing = [a["alert"] for a in alerts(document) if a["alert"] not in headings]
    assert not missing, f"docs/operations.md lacks a '### <alert>' section for {missing}"


def test_every_expression_uses_only_exported_or_recorded_metrics_and_balanced_brackets(rules):
    assert unknown_metrics(rule_file_exprs(rules), recorded_names(rules)) == []


def test_the_alerts_the_operations_issue_asks_for_exist(rules):
    asked_for = {
        "AttendanceSchoolsMissing",  # no data from more than X% of expected schools by a set time
        "AttendanceRejectionRateHigh",  # rejection rate above a threshold
        "AttendanceConsumerLagHigh",  # consumer lag ...
        "AttendanceEndToEndLatencyHigh",  # ... or end-to-end latency above a threshold
        "AttendanceWorkerDown",  # a worker down (up == 0)
        "AttendanceWorkersAbsent",  # ... or absent
        "AttendanceReleaseNotPublished",  # release not published by 09:31 on a release day
        "AttendanceOptOutPurgeNotVerified",  # purge requested but not verified for N minutes
        "AttendanceDataQualityExceptions",  # DQ exceptions
    }
    assert asked_for <= {a["alert"] for a in alerts(rules)}


def test_schools_missing_alert_uses_uk_time_not_utc(rules):
    expr = next(a["expr"] for a in alerts(rules) if a["alert"] == "AttendanceSchoolsMissing")
    assert "hour(attendance:uk_local_time_seconds)" in expr
    record = next(
        r["expr"] for r in all_rules(rules) if r.get("record") == "attendance:uk_local_time_seconds"
    )
    assert "attendance_uk_utc_offset_seconds" in record


# --- promtool, when available -----------------------------------------------------------------------------


def find_promtool(root: Path = ROOT) -> str | None:
    """``.tools/promtool`` (fetched by ``make promtool``, a prerequisite of ``make test``), else PATH."""
    fetched = root / ".tools" / "promtool"
    if fetched.is_file() and os.access(fetched, os.X_OK):
        return str(fetched)
    return shutil.which("promtool")


def test_find_promtool_prefers_the_fetched_binary(tmp_path: Path):
    fetched = tmp_path / ".tools" / "promtool"
    fetched.parent.mkdir()
    fetched.write_text("#!/bin/sh\n")
    assert find_promtool(tmp_path) == shutil.which("promtool")  # not executable: not used
    fetched.chmod(0o755)
    assert find_promtool(tmp_path) == str(fetched)


PROMTOOL = find_promtool()
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found in .tools/ or on PATH (`make promtool` fetches it from Debian's prometheus "
    "package); the rules were checked by the Python schema tests above only",
)


@needs_promtool
def test_promtool_check_rules_accepts_the_file():
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
