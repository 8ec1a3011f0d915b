"""Audit rows: UPN-shaped text redacted, summaries counted, and the audit table only ever appended to."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pyarrow as pa

from access import audit
from access.audit import AuditEvent, audit_rows, redact, summarise

AT = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)


def test_redact_replaces_upn_shaped_text_only() -> None:
    sql = "SELECT * FROM pupils WHERE upn IN ('B801200005001', 'a123456789012') AND urn = '100000'"
    assert redact(sql) == "SELECT * FROM pupils WHERE upn IN ('<UPN>', '<UPN>') AND urn = '100000'"
    assert redact("X1234567890123") == "X1234567890123"  # 14 characters: not a UPN
    assert redact(None) is None


def test_audit_rows_hold_no_upn_in_any_field() -> None:
    upn = "B801200005001"
    rows = audit_rows(
        [
            AuditEvent(
                action="query",
                user=f"dpo {upn}",
                role="school",
                scope=upn,
                purpose=f"about {upn}",
                outcome="refused",
                sql=f"SELECT '{upn}'",
                message=f"bad {upn}",
                occurred_at=AT,
            )
        ]
    )
    assert upn not in str(rows.to_pylist())
    assert rows.column("allowed").to_pylist() == [False]
    assert rows.column("audit_date").to_pylist() == [dt.date(2026, 11, 20)]


def test_summary_counts_requests_and_rows_by_role_user_and_outcome() -> None:
    events = [
        AuditEvent("query", "ann", "school", "100000", None, "allowed", rows_returned=5, occurred_at=AT),
        AuditEvent("query", "ann", "school", "100000", None, "allowed", rows_returned=7, occurred_at=AT),
        AuditEvent(
            "query",
            "ann",
            "school",
            "100000",
            None,
            "refused",
            refusal_rule="zone-not-granted",
            occurred_at=AT,
        ),
        AuditEvent(
            "open",
            "bob",
            "inspection",
            None,
            None,
            "refused",
            refusal_rule="purpose-required",
            occurred_at=AT,
        ),
        AuditEvent(
            "query",
            "bob",
            "inspection",
            None,
            "x",
            "refused",
            refusal_rule="table-not-granted",
            occurred_at=AT + dt.timedelta(hours=1),
        ),
    ]
    summary = {
        (r["role"], r["user"], r["outcome"]): (r["requests"], r["rows_returned"], r["refusal_rules"])
        for r in summarise(audit_rows(events)).iter_rows(named=True)
    }
    assert summary == {
        ("school", "ann", "allowed"): (2, 12, ""),
        ("school", "ann", "refused"): (1, 0, "zone-not-granted"),
        ("inspection", "bob", "refused"): (2, 0, "purpose-required, table-not-granted"),
    }


def test_summary_of_an_empty_audit_is_empty() -> None:
    assert summarise(audit.ACCESS_AUDIT.schema.empty_table()).height == 0


def test_audit_code_only_appends() -> None:
    """No code in the access package overwrites, merges into, deletes from or vacuums the audit table."""
    package = Path(audit.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
                name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                if name == "write_deltalake" and "ACCESS_AUDIT" in ast.unparse(node):
                    modes = [kw.value for kw in node.keywords if kw.arg == "mode"]
                    assert [ast.literal_eval(m) for m in modes] == ["append"], path
                if (
                    name in ("delete", "merge", "vacuum", "restore", "update")
                    and "audit" in ast.unparse(node).lower()
                ):
                    raise AssertionError(f"{path.name}: {ast.unparse(node)}")


def test_schema_of_audit_rows_is_the_contract() -> None:
    assert audit_rows([]).schema == audit.ACCESS_AUDIT.schema
    assert isinstance(audit.ACCESS_AUDIT.schema.field("table_versions").type, pa.ListType)
