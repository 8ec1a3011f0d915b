"""The access commands through the real `attendance` CLI: query, refusals, audit report, policy, docs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from attendance.cli import main
from attendance.settings import get_settings

DOCS = Path(__file__).resolve().parents[3] / "docs" / "access.md"


@pytest.fixture()
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "lake"
    release = root / "published" / "2026-week-47"
    release.mkdir(parents=True)
    (release / "attendance_daily.csv").write_text(
        "time_period,geographic_level,old_la_code,overall_absence_perc\n"
        "2026,National,,6.50\n2026,Local authority,373,7.25\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("ATTENDANCE_LAKE_URI", str(root))
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args))


def test_query_prints_csv_for_a_granted_file(lake: Path) -> None:
    result = run(
        "query",
        "--role",
        "public",
        "--user",
        "ann",
        "--format",
        "csv",
        "SELECT old_la_code, overall_absence_perc FROM attendance_daily WHERE old_la_code = '373'",
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["old_la_code,overall_absence_perc", "373,7.25"]


def test_query_writes_parquet_to_a_file(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    result = run(
        "query",
        "--role",
        "public",
        "--format",
        "parquet",
        "--out",
        str(out),
        "SELECT * FROM attendance_daily",
    )
    assert result.exit_code == 0 and out.exists()


def test_refusal_is_one_line_and_exit_code_2(lake: Path) -> None:
    result = run("query", "--role", "public", "SELECT * FROM pupils")
    assert result.exit_code == 2
    assert "refused (zone-not-granted)" in result.output and "Traceback" not in result.output


def test_missing_scope_is_refused(lake: Path) -> None:
    result = run("query", "--role", "school", "SELECT 1")
    assert result.exit_code == 2 and "refused (scope-required)" in result.output


def test_list_tables_shows_the_rule_and_row_filter(lake: Path) -> None:
    result = run("query", "--role", "public", "--list-tables")
    assert result.exit_code == 0
    assert "published/attendance_daily  [public.published]  rows: all rows" in result.output


def test_audit_report_counts_what_was_asked(lake: Path) -> None:
    run("query", "--role", "public", "--user", "ann", "SELECT * FROM attendance_daily")
    run("query", "--role", "public", "--user", "ann", "SELECT * FROM pupils")
    result = run("audit", "report", "--format", "csv")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("role,user,outcome,requests,rows_returned,refusal_rules")
    assert any(line.startswith("public,ann,allowed,1,2,") for line in lines)
    assert any(line.startswith("public,ann,refused,1,0,zone-not-granted") for line in lines)


def test_policy_table_lists_every_role() -> None:
    result = run("access", "policy")
    assert result.exit_code == 0
    for role in (
        "school",
        "trust",
        "local_authority",
        "dfe_analyst",
        "local_alliance",
        "national_alliance",
        "inspection",
        "public",
        "data_protection_officer",
    ):
        assert f"\n{role}  scope:" in "\n" + result.output


def test_docs_hold_the_policy_as_generated() -> None:
    result = run("access", "policy", "--markdown")
    assert result.exit_code == 0
    assert result.output in DOCS.read_text(encoding="utf-8"), (
        "regenerate with `attendance access policy --markdown`"
    )


def test_pseudonymise_without_a_key_is_a_clear_error(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATTENDANCE_PSEUDONYMISATION_KEY", raising=False)
    result = run("access", "pseudonymise")
    assert result.exit_code == 2 and "ATTENDANCE_PSEUDONYMISATION_KEY is not set" in result.output
