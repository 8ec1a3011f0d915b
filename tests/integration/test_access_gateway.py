"""The read gateway over real Delta tables (no Kafka): scopes, SQL tricks, audit, subject access,
pseudonymised zone and the scan of the zones that leave the pupil level.

The lake is built here: a register of four schools in three LAs and one trust, sessions and pupils for them,
a quarantine row, school-level and LA-level aggregates (including rows the policy must hide), a published
file, and the pseudonymised zone. A second lake is aggregated and released by the statistics package.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
from hashlib import sha256
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from access import audit
from access.gateway import open_view
from access.leakscan import scan_outputs
from access.policy import AccessRefused
from access.pseudonymise import PUPIL_SESSIONS_PSEUDO, PUPILS_PSEUDO, pseudonymise
from access.subject_access import subject_access
from schemas.reference import local_authorities
from schemas.upn import make_upn
from storage.tables import (
    ATTENDANCE_SESSIONS,
    EXTRACTS,
    PUPILS,
    QUARANTINE,
    SCHOOLS,
    SESSION_SCHOOL_DAYS,
    STAGED_SESSIONS,
    TableContract,
    Zone,
    register,
)

KEY = "test-key-0123456789abcdef0123456789abcdef"
DAY1, DAY2 = dt.date(2026, 11, 16), dt.date(2026, 11, 17)
T0 = dt.datetime(2026, 11, 17, 18, 0, tzinfo=dt.UTC)

#: urn -> (old LA code, trust code)
SCHOOL_FACTS = {
    "100001": ("373", "16782"),
    "100002": ("373", None),
    "100003": ("201", "16782"),
    "100004": ("330", None),
}


def upn_of(urn: str, pupil: int) -> str:
    la, _ = SCHOOL_FACTS[urn]
    return make_upn(int(la), int(urn[-4:]), 26, pupil)


def _write_register(lake: str) -> None:
    las = local_authorities()
    rows = []
    for urn, (la_code, trust) in SCHOOL_FACTS.items():
        la = las[la_code]
        rows.append(
            {
                "urn": urn,
                "laestab": la_code + urn[-4:],
                "school_name": f"School {urn}",
                "old_la_code": la_code,
                "new_la_code": la.new_la_code,
                "la_name": la.la_name,
                "region_code": la.region_code,
                "region_name": la.region_name,
                "status": "Open",
                "attendance_phase": "Primary",
                "trust_code": trust,
                "trust_name": f"Trust {trust}" if trust else None,
            }
        )
    write_deltalake(SCHOOLS.path(lake), pa.Table.from_pylist(rows, schema=SCHOOLS.schema), mode="overwrite")


def _write_pupil_tables(lake: str, pupils_per_school: int = 2) -> None:
    sessions, pupils, extracts = [], [], []
    for urn in SCHOOL_FACTS:
        for day in (DAY1, DAY2):
            extracts.append(
                {
                    "extract_id": f"x-{urn}",
                    "urn": urn,
                    "extract_date": day,
                    "generated_at": T0,
                    "status": "complete",
                }
            )
        for pupil in range(1, pupils_per_school + 1):
            upn = upn_of(urn, pupil)
            pupils.append(
                {
                    "urn": urn,
                    "upn": upn,
                    "date_of_birth": dt.date(2016, 9 if pupil == 1 else 3, 1),
                    "sex": "F",
                    "nc_year_group": "5",
                    "generated_at": T0,
                    "current_since": T0,
                }
            )
            for day in (DAY1, DAY2):
                for session in ("AM", "PM"):
                    sessions.append(
                        {
                            "urn": urn,
                            "upn": upn,
                            "date": day,
                            "session": session,
                            "code": "/",
                            "is_possible": True,
                            "is_present": True,
                            "extract_id": f"x-{urn}",
                            "generated_at": T0,
                            "ingested_at": T0,
                        }
                    )
    write_deltalake(
        ATTENDANCE_SESSIONS.path(lake),
        pa.Table.from_pylist(sessions, schema=ATTENDANCE_SESSIONS.schema),
        mode="overwrite",
        partition_by=["date"],
    )
    write_deltalake(PUPILS.path(lake), pa.Table.from_pylist(pupils, schema=PUPILS.schema), mode="overwrite")
    write_deltalake(
        EXTRACTS.path(lake), pa.Table.from_pylist(extracts, schema=EXTRACTS.schema), mode="overwrite"
    )
    raw = json.dumps(
        {"urn": "100001", "pupils": [{"upn": upn_of("100001", 1)}, {"upn": upn_of("100001", 2)}]}
    )
    quarantine = [
        {
            "urn": "100001",
            "topic": "t",
            "partition": 0,
            "offset": 1,
            "reason_code": "BAD",
            "severity": "message",
            "detail": "bad chunk",
            "raw_message": raw.encode(),
            "quarantined_at": T0,
        },
        {
            "urn": "100002",
            "topic": "t",
            "partition": 0,
            "offset": 2,
            "reason_code": "BAD",
            "severity": "pupil",
            "detail": "bad pupil",
            "quarantined_at": T0,
        },
    ]
    write_deltalake(
        QUARANTINE.path(lake), pa.Table.from_pylist(quarantine, schema=QUARANTINE.schema), mode="overwrite"
    )


def _write_aggregates(lake: str) -> None:
    school_daily = pl.DataFrame(
        {
            "urn": list(SCHOOL_FACTS),
            "date": [DAY1] * 4,
            "possible_sessions": [4, 4, 4, 4],
            "overall_absence": [0, 1, 0, 2],
        }
    )
    write_deltalake(f"{lake}/{Zone.SCHOOL.value}/school_daily", school_daily.to_arrow(), mode="overwrite")
    la_daily = pl.DataFrame(
        {
            "geographic_level": ["National", "Regional", "Local authority", "Local authority", "School"],
            "region_code": [None, "E12000003", "E12000003", "E12000007", "E12000003"],
            "old_la_code": [None, None, "373", "201", "373"],
            "num_schools": [4, 2, 2, 1, 1],
            "possible_sessions": [16, 8, 8, 4, 4],
            "overall_absence": [3, 1, 1, 0, 0],
        }
    )
    write_deltalake(f"{lake}/{Zone.LA_AND_ABOVE.value}/la_daily", la_daily.to_arrow(), mode="overwrite")


def _write_published(lake: str) -> Path:
    directory = Path(lake) / Zone.PUBLISHED.value / "2026-week-47"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "attendance_daily.csv"
    path.write_text(
        "time_period,time_identifier,geographic_level,country_code,country_name,old_la_code,num_schools,"
        "possible_sessions,overall_absence_perc\n"
        "2026,Week 47,National,E92000001,England,,4,16,18.75\n"
        "2026,Week 47,Local authority,E92000001,England,373,2,8,12.50\n"
        "2026,Week 47,Local authority,E92000001,England,201,1,c,c\n",
        encoding="utf-8",
    )
    (directory / "attendance_daily.meta.csv").write_text("col_name,col_type\n", encoding="utf-8")
    return path


def build_lake(root: Path) -> str:
    lake = str(root / "lake")
    _write_register(lake)
    _write_pupil_tables(lake)
    _write_aggregates(lake)
    _write_published(lake)
    pseudonymise(lake, KEY, storage_options={})
    return lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_lake(tmp_path_factory.mktemp("access"))


@pytest.fixture()
def fresh_lake(tmp_path: Path) -> str:
    return build_lake(tmp_path)


def view(lake: str, role: str, scope: str | None = None, purpose: str | None = "national trends and support"):
    needs_purpose = role in ("dfe_analyst", "local_alliance", "national_alliance", "inspection")
    return open_view(
        role,
        scope,
        lake_uri=lake,
        purpose=purpose if needs_purpose else None,
        user="tester",
        storage_options={},
    )


def refused(v, sql: str) -> AccessRefused:
    with pytest.raises(AccessRefused) as info:
        v.sql(sql)
    return info.value


def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


# --- scopes: own school, trust, LA ---------------------------------------------------------------------


def test_school_sees_only_its_own_pupils_and_aggregates(lake: str) -> None:
    v = view(lake, "school", "100001")
    assert set(column(v.sql("SELECT DISTINCT urn FROM attendance_sessions"), "urn")) == {"100001"}
    assert set(column(v.sql("SELECT upn FROM pupils"), "upn")) == {upn_of("100001", 1), upn_of("100001", 2)}
    assert v.sql("SELECT * FROM attendance_sessions WHERE urn = '100002'").num_rows == 0
    assert column(v.sql("SELECT urn FROM school_daily"), "urn") == ["100001"]
    assert "raw_message" not in v.sql("SELECT * FROM quarantine").column_names


def test_a_school_reads_amendments_the_sink_committed_before_they_are_folded(fresh_lake: str) -> None:
    from storage.sink import DeltaSink, SinkBatch

    upn = upn_of("100001", 1)
    amended = {"urn": "100001", "upn": upn, "date": DAY1, "session": "AM", "code": "N", "is_possible": True,
               "extract_id": "x-amend", "generated_at": T0 + dt.timedelta(days=1)}
    # The fixture wrote the marks without the sink: record their school-day as the sink would have.
    write_deltalake(SESSION_SCHOOL_DAYS.path(fresh_lake), pa.table({"urn": ["100001"], "date": [DAY1]}),
                    partition_by=["date"])
    DeltaSink(fresh_lake).write_batch(SinkBatch(sessions=pa.Table.from_pylist([amended]),
                                                offsets={("attendance.extracts.v1", 0): 1}))
    assert DeltaTable(STAGED_SESSIONS.path(fresh_lake)).to_pyarrow_table().num_rows == 1  # staged, not folded
    v = view(fresh_lake, "school", "100001")
    rows = v.sql(f"SELECT code FROM attendance_sessions WHERE upn = '{upn}' AND session = 'AM' ORDER BY date")
    assert column(rows, "code") == ["N", "/"]
    read = {r["table"]: r["version"] for r in pl.from_arrow(audit.read(fresh_lake, storage_options={}))
            .row(0, named=True)["table_versions"]}
    assert set(read) == {"restricted/attendance_sessions", "restricted/staged_sessions"}


def test_school_cannot_reach_another_school_through_a_join_or_subquery(lake: str) -> None:
    v = view(lake, "school", "100001")
    rows = v.sql(
        "SELECT s.urn FROM attendance_sessions s JOIN pupils p ON s.upn = p.upn "
        "WHERE s.urn IN (SELECT urn FROM schools WHERE old_la_code = '373')"
    )
    assert set(column(rows, "urn")) == {"100001"}
    assert refused(v, "SELECT * FROM pupil_sessions_pseudo").rule == "zone-not-granted"
    assert refused(v, "SELECT * FROM optout_audit").rule == "table-not-granted"


def test_trust_sees_the_schools_whose_register_trust_code_is_its_own(lake: str) -> None:
    v = view(lake, "trust", "16782")
    assert set(column(v.sql("SELECT DISTINCT urn FROM attendance_sessions"), "urn")) == {"100001", "100003"}
    assert set(column(v.sql("SELECT urn FROM school_daily"), "urn")) == {"100001", "100003"}


def test_local_authority_sees_the_schools_in_its_area(lake: str) -> None:
    v = view(lake, "local_authority", "373")
    assert set(column(v.sql("SELECT DISTINCT urn FROM pupils"), "urn")) == {"100001", "100002"}
    other = view(lake, "local_authority", "330")
    assert set(column(other.sql("SELECT DISTINCT urn FROM pupils"), "urn")) == {"100004"}


def test_local_alliance_gets_school_level_rows_of_its_area_and_no_pupil_rows(lake: str) -> None:
    v = view(lake, "local_alliance", "373")
    assert set(column(v.sql("SELECT urn FROM school_daily"), "urn")) == {"100001", "100002"}
    assert refused(v, "SELECT * FROM attendance_sessions").rule == "zone-not-granted"
    assert refused(v, "SELECT * FROM pupils_pseudo").rule == "zone-not-granted"


# --- inspection and the national alliance: never a school-level row ------------------------------------


@pytest.mark.parametrize("role", ["inspection", "national_alliance"])
def test_la_and_above_roles_see_no_school_level_or_single_school_rows(lake: str, role: str) -> None:
    v = view(lake, role, purpose="termly review of local authority attendance")
    rows = v.sql("SELECT geographic_level, old_la_code, num_schools FROM la_daily")
    # National, Regional and LA 373 (2 schools); LA 201 (1 school) and the School row are not shown.
    assert sorted(column(rows, "geographic_level")) == ["Local authority", "National", "Regional"]
    assert min(column(rows, "num_schools")) > 1


@pytest.mark.parametrize(
    "sql, rule",
    [
        ("SELECT * FROM school_daily", "zone-not-granted"),
        ("SELECT * FROM pupils", "zone-not-granted"),
        ("SELECT * FROM schools", "zone-not-granted"),
        ("SELECT * FROM pupil_sessions_pseudo", "zone-not-granted"),
        ("SELECT l.* FROM la_daily l JOIN school_daily s ON l.old_la_code = '373'", "zone-not-granted"),
        (
            "SELECT * FROM la_daily WHERE num_schools IN (SELECT possible_sessions FROM school_daily)",
            "zone-not-granted",
        ),
        ("SELECT geographic_level FROM la_daily UNION ALL SELECT urn FROM pupils", "zone-not-granted"),
        ("WITH la_daily AS (SELECT * FROM school_daily) SELECT * FROM la_daily", "zone-not-granted"),
        (
            "WITH x AS (SELECT 1 AS a), y AS (SELECT * FROM attendance_sessions) SELECT * FROM x, y",
            "zone-not-granted",
        ),
        ('SELECT * FROM "school_daily"', "zone-not-granted"),
        ("SELECT * FROM public.school_daily", "zone-not-granted"),
        ("SELECT * FROM read_parquet('lake/restricted/pupils/*.parquet')", "file-read"),
        ("SELECT * FROM read_csv('/etc/passwd')", "file-read"),
        ("SELECT * FROM 'lake/restricted/pupils'", "file-read"),
        ("SELECT * FROM information_schema.tables", "catalogue"),
        ("SELECT * FROM generate_series(1, 3)", "table-function"),
        ("COPY la_daily TO '/tmp/x.csv'", "read-only"),
        ("CREATE EXTERNAL TABLE p STORED AS PARQUET LOCATION 'lake/restricted/pupils'", "read-only"),
        ("SELECT * FROM la_daily; DROP TABLE la_daily", "single-statement"),
        ("DELETE FROM la_daily", "read-only"),
        ("SELECT * INTO copy_of FROM la_daily", "read-only"),
    ],
)
@pytest.mark.parametrize("role", ["inspection", "national_alliance"])
def test_la_level_roles_are_refused_every_route_to_school_or_pupil_data(
    lake: str, role: str, sql: str, rule: str
) -> None:
    v = view(lake, role, purpose="inspection planning" if role == "inspection" else "national summary")
    error = refused(v, sql)
    assert error.rule == rule
    assert "refused (" in str(error)


EMPTY = "empty"


@pytest.mark.parametrize(
    "role, scope, sql, expected",
    [
        ("school", "100001", "SELECT * FROM school_daily WHERE urn = '100004'", EMPTY),
        ("school", "100001", "SELECT * FROM quarantine WHERE urn = '100002'", EMPTY),
        ("trust", "16782", "SELECT * FROM pupils WHERE urn = '100002'", EMPTY),
        ("trust", "16782", "SELECT * FROM access_audit", "zone-not-granted"),
        (
            "local_authority",
            "373",
            "SELECT * FROM attendance_sessions WHERE urn IN ('100003', '100004')",
            EMPTY,
        ),
        (
            "local_authority",
            "201",
            "SELECT * FROM pupils p WHERE p.urn NOT IN (SELECT urn FROM school_daily)",
            EMPTY,
        ),
        ("local_alliance", "373", "SELECT * FROM school_daily WHERE urn = '100004'", EMPTY),
        (
            "local_alliance",
            "373",
            "SELECT * FROM school_daily s JOIN pupils p ON s.urn = p.urn",
            "zone-not-granted",
        ),
        (
            "dfe_analyst",
            None,
            "SELECT * FROM pupils_pseudo p JOIN pupils q ON p.urn = q.urn",
            "zone-not-granted",
        ),
        ("dfe_analyst", None, "SELECT * FROM quarantine", "zone-not-granted"),
        ("national_alliance", None, "SELECT * FROM la_daily WHERE old_la_code = '201'", EMPTY),
        ("national_alliance", None, "SELECT * FROM (SELECT urn FROM school_daily) s", "zone-not-granted"),
        (
            "public",
            None,
            "SELECT * FROM attendance_daily UNION ALL SELECT * FROM la_daily",
            "zone-not-granted",
        ),
        ("public", None, "SELECT * FROM schools", "zone-not-granted"),
    ],
)
def test_no_role_reaches_beyond_its_scope(
    lake: str, role: str, scope: str | None, sql: str, expected: str
) -> None:
    v = view(lake, role, scope)
    if expected == EMPTY:
        assert v.sql(sql).num_rows == 0
    else:
        assert refused(v, sql).rule == expected


def test_a_cte_may_shadow_a_forbidden_name_with_granted_data(lake: str) -> None:
    v = view(lake, "inspection", purpose="inspection planning")
    rows = v.sql("WITH school_daily AS (SELECT * FROM la_daily) SELECT count(*) AS n FROM school_daily")
    assert column(rows, "n") == [3]


def test_refusal_names_the_rule_and_the_principle(lake: str) -> None:
    error = refused(view(lake, "inspection", purpose="inspection planning"), "SELECT * FROM school_daily")
    assert "school_aggregates/school_daily" in str(error)
    assert "not used for Ofsted" in str(error)
    assert "policy v1" in str(error)


def test_public_reads_published_files_only(lake: str) -> None:
    v = view(lake, "public")
    rows = v.sql(
        "SELECT old_la_code, overall_absence_perc FROM attendance_daily WHERE geographic_level = "
        "'Local authority' ORDER BY old_la_code"
    )
    assert column(rows, "overall_absence_perc") == ["c", "12.50"]
    assert refused(v, "SELECT * FROM la_daily").rule == "zone-not-granted"
    assert set(v.tables()) == {"attendance_daily"}


# --- DfE analysts: pseudonymised only ------------------------------------------------------------------


def test_dfe_analyst_reads_pseudonymised_rows_keyed_by_hmac(lake: str) -> None:
    v = view(lake, "dfe_analyst")
    assert refused(v, "SELECT * FROM pupils").rule == "zone-not-granted"
    rows = v.sql("SELECT * FROM pupils_pseudo WHERE urn = '100001' ORDER BY age_at_31_august")
    assert "upn" not in rows.column_names and "date_of_birth" not in rows.column_names
    # extract of 17 Nov 2026 -> academic year 2026/27 -> age on 31 Aug 2026:
    # born 1 Sep 2016 -> 9 (birthday after 31 August); born 1 Mar 2016 -> 10
    assert column(rows, "age_at_31_august") == [9, 10]
    assert set(column(rows, "academic_year")) == {"202627"}
    expected = {hmac.new(KEY.encode(), upn_of("100001", p).encode(), sha256).hexdigest() for p in (1, 2)}
    assert set(column(rows, "pupil_key")) == expected
    sessions = v.sql("SELECT count(*) AS n FROM pupil_sessions_pseudo")
    assert column(sessions, "n") == [4 * 2 * 2 * 2]


def test_purpose_is_required_and_screened(lake: str) -> None:
    with pytest.raises(AccessRefused) as missing:
        view(lake, "dfe_analyst", purpose=None)
    assert missing.value.rule == "purpose-required"
    with pytest.raises(AccessRefused) as prohibited:
        view(lake, "dfe_analyst", purpose="rank schools causing concern for academisation")
    assert prohibited.value.rule == "purpose-prohibited"


def test_data_protection_officer_cannot_query(lake: str) -> None:
    with pytest.raises(AccessRefused) as info:
        view(lake, "data_protection_officer")
    assert info.value.rule == "subject-access-only"


def test_tables_not_written_yet_are_refused_as_not_available(lake: str) -> None:
    v = view(lake, "national_alliance", purpose="weekly national summary")
    assert refused(v, "SELECT * FROM la_weekly").rule == "not-available-yet"
    contract = register(
        TableContract(
            "region_termly_test", Zone.LA_AND_ABOVE, pa.schema([("n", pa.int64())]), (), (), "test", False
        )
    )
    try:
        later = view(lake, "national_alliance", purpose="weekly national summary")
        error = refused(later, "SELECT * FROM region_termly_test")
        assert error.rule == "not-available-yet" and "not been written yet" in str(error)
    finally:
        from storage.tables import TABLES

        TABLES.pop(contract.name, None)


# --- audit ---------------------------------------------------------------------------------------------


def test_every_query_and_refusal_is_audited_append_only_without_upns(fresh_lake: str) -> None:
    lake = fresh_lake
    upn = upn_of("100001", 1)
    school = view(lake, "school", "100001")
    school.sql(f"SELECT * FROM pupils WHERE upn = '{upn}'")
    with pytest.raises(AccessRefused):
        school.sql("SELECT * FROM pupil_sessions_pseudo")
    with pytest.raises(AccessRefused):
        view(lake, "school", None)
    rows = pl.from_arrow(audit.read(lake, storage_options={}))
    assert rows.height == 3
    assert rows["outcome"].to_list() == ["allowed", "refused", "refused"]
    assert rows["refusal_rule"].to_list() == [None, "zone-not-granted", "scope-required"]
    assert rows["rows_returned"].to_list()[0] == 1
    assert rows["user"].unique().to_list() == ["tester"]
    first = rows.row(0, named=True)
    read = {v["table"]: v["version"] for v in first["table_versions"]}
    assert read == {"restricted/pupils": 0}  # own-school filter: no register read
    text = " ".join(str(v) for r in rows.iter_rows() for v in r)
    assert upn not in text and "<UPN>" in first["sql"]
    operations = {
        (h["operation"], h.get("operationParameters", {}).get("mode"))
        for h in DeltaTable(audit.ACCESS_AUDIT.path(lake)).history()
    }
    assert {op for op in operations if op[0] != "CREATE TABLE"} == {("WRITE", "Append")}


def test_audit_report_summarises_by_role_user_and_outcome(fresh_lake: str) -> None:
    v = view(fresh_lake, "public")
    v.sql("SELECT * FROM attendance_daily")
    v.sql("SELECT * FROM attendance_daily")
    with pytest.raises(AccessRefused):
        v.sql("SELECT * FROM pupils")
    summary = audit.summarise(audit.read(fresh_lake, storage_options={}))
    got = {
        (r["role"], r["user"], r["outcome"]): (r["requests"], r["rows_returned"])
        for r in summary.iter_rows(named=True)
    }
    assert got == {("public", "tester", "allowed"): (2, 6), ("public", "tester", "refused"): (1, 0)}


# --- subject access ------------------------------------------------------------------------------------


def test_subject_access_exports_everything_about_one_pupil(fresh_lake: str, tmp_path: Path) -> None:
    upn = upn_of("100001", 1)
    out = tmp_path / "sar"
    result = subject_access(
        upn, out, lake_uri=fresh_lake, key=KEY, user="dpo", reference="SAR-1", storage_options={}
    )
    assert result.rows_by_table["restricted/attendance_sessions"] == 4  # 2 days x 2 sessions
    assert result.rows_by_table["restricted/pupils"] == 1
    assert result.rows_by_table["restricted/quarantine"] == 1  # the message that carried the UPN
    assert result.rows_by_table["pseudonymised/pupil_sessions_pseudo"] == 4
    assert result.rows_by_table["pseudonymised/pupils_pseudo"] == 1
    sessions = pl.read_csv(out / "restricted__attendance_sessions.csv")
    assert set(sessions["upn"]) == {upn}
    assert "raw_message" not in pl.read_csv(out / "restricted__quarantine.csv").columns
    manifest = json.loads((out / "manifest.json").read_text())
    notes = {t["table"]: t.get("note") for t in manifest["tables"]}
    assert notes["la_aggregates/la_daily"] == "holds no pupil-level data"
    assert upn not in (out / "manifest.json").read_text()
    rows = pl.from_arrow(audit.read(fresh_lake, storage_options={}))
    sar = rows.filter(pl.col("action") == "subject_access").row(0, named=True)
    assert sar["subject_pupil_key"] == hmac.new(KEY.encode(), upn.encode(), sha256).hexdigest()
    assert sar["rows_returned"] == result.total_rows
    assert upn not in " ".join(str(v) for r in rows.iter_rows() for v in r)


def test_subject_access_refuses_an_invalid_upn_without_echoing_it(fresh_lake: str, tmp_path: Path) -> None:
    with pytest.raises(AccessRefused) as info:
        subject_access("A123", tmp_path / "x", lake_uri=fresh_lake, key=KEY, user="dpo", storage_options={})
    assert info.value.rule == "upn-invalid" and "A123" not in str(info.value)


# --- pseudonymised zone refresh ------------------------------------------------------------------------


def test_incremental_pseudonymise_follows_deletes_and_new_days(fresh_lake: str) -> None:
    lake = fresh_lake
    sessions = DeltaTable(ATTENDANCE_SESSIONS.path(lake))
    since = sessions.version()
    sessions.delete(f"urn = '100002' AND date = '{DAY1.isoformat()}'")  # an opt-out purge of one day
    sessions.delete(f"date = '{DAY2.isoformat()}'")  # retention: a whole day destroyed
    day3 = dt.date(2026, 11, 18)
    new = pa.Table.from_pylist(
        [
            {
                "urn": "100004",
                "upn": upn_of("100004", 1),
                "date": day3,
                "session": "AM",
                "code": "I",
                "generated_at": T0,
                "ingested_at": T0,
            }
        ],
        schema=ATTENDANCE_SESSIONS.schema,
    )
    write_deltalake(ATTENDANCE_SESSIONS.path(lake), new, mode="append", partition_by=["date"])
    result = pseudonymise(lake, KEY, since_version=since, storage_options={})
    assert result.dates_refreshed == 3  # DAY1 (purge), DAY2 (destroyed) and day3 (new)
    pseudo = pl.read_delta(PUPIL_SESSIONS_PSEUDO.path(lake))
    assert pseudo.filter((pl.col("urn") == "100002") & (pl.col("date") == DAY1)).height == 0
    assert pseudo.filter(pl.col("date") == DAY2).height == 0
    assert pseudo.filter(pl.col("date") == day3).height == 1
    # DAY1: 4 schools x 2 pupils x 2 sessions, less school 100002's 4 rows; plus the new row
    assert pseudo.height == 4 * 2 * 2 - 2 * 2 + 1
    again = pseudonymise(
        lake, KEY, since_version=DeltaTable(ATTENDANCE_SESSIONS.path(lake)).version(), storage_options={}
    )
    assert again.dates_refreshed == 0


def test_pseudonymised_delta_log_holds_no_pupil_key_statistics(lake: str) -> None:
    for contract in (PUPIL_SESSIONS_PSEUDO, PUPILS_PSEUDO):
        log_text = "".join(p.read_text() for p in Path(contract.path(lake), "_delta_log").glob("*.json"))
        key = hmac.new(KEY.encode(), upn_of("100001", 1).encode(), sha256).hexdigest()
        assert key not in log_text


# --- nothing leaves the pupil level --------------------------------------------------------------------

RELEASE_DAY = dt.date(2026, 11, 19)


@pytest.fixture(scope="module")
def stats_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A lake where the statistics package has aggregated the sessions and written a release."""
    incremental = pytest.importorskip("official_stats.incremental")
    publication = pytest.importorskip("official_stats.publication")
    lake = str(tmp_path_factory.mktemp("stats") / "lake")
    _write_register(lake)
    _write_pupil_tables(lake, pupils_per_school=12)  # LA 373: 24 pupils; LAs 201 and 330: one school each
    incremental.run_aggregation(lake, now=dt.datetime(2026, 11, 18, 12, tzinfo=dt.UTC), storage_options={})
    built = publication.build_release(lake, RELEASE_DAY, storage_options={})
    publication.write_release(
        built, Path(lake) / Zone.PUBLISHED.value / RELEASE_DAY.isoformat(), screen=False
    )
    return lake


def test_published_files_hold_no_upn_dob_school_or_unsuppressed_cell(stats_lake: str) -> None:
    findings = scan_outputs(stats_lake, storage_options={})
    assert any(f.location.startswith("published/") for f in findings) is False
    assert len(list(Path(stats_lake, Zone.PUBLISHED.value).rglob("*.csv"))) > 0  # the scan had files to read


def test_la_aggregates_hold_no_upn_dob_or_school_identifier(stats_lake: str) -> None:
    findings = scan_outputs(stats_lake, storage_options={})
    assert [f for f in findings if f.location.startswith("la_aggregates/") and f.check != "disclosure"] == []


def test_la_aggregates_hold_no_cell_the_disclosure_rules_would_suppress(stats_lake: str) -> None:
    findings = scan_outputs(stats_lake, storage_options={})
    assert [f for f in findings if f.location.startswith("la_aggregates/")] == []
    # the scan had the statistics' table to read, and what it holds for the one-school LAs is no figure
    stored = pl.read_delta(str(Path(stats_lake, Zone.LA_AND_ABOVE.value, "stats_attendance_views")))
    lone = stored.filter(pl.col("old_la_code").is_in(["201", "330"]))
    assert lone.height > 0 and lone["suppressed"].all()
    assert lone["possible_sessions"].null_count() == lone.height
    assert lone["overall_absence_perc"].null_count() == lone.height


def test_la_aggregates_zone_holds_only_disclosure_controlled_tables(stats_lake: str) -> None:
    zone = Path(stats_lake, Zone.LA_AND_ABOVE.value)
    assert sorted(p.name for p in zone.iterdir()) == ["stats_attendance_views"]
    assert "suppressed" in pl.read_delta(str(zone / "stats_attendance_views")).columns
    # the exact figures are kept with the school-level data, the run bookkeeping in the restricted zone
    assert Path(stats_lake, Zone.SCHOOL.value, "stats_attendance_views_unsuppressed", "_delta_log").is_dir()
    assert Path(stats_lake, Zone.RESTRICTED.value, "stats_aggregation_runs", "_delta_log").is_dir()


@pytest.mark.parametrize("role", ["inspection", "national_alliance"])
def test_gateway_serves_no_single_school_la_or_the_region_that_would_reveal_it(
    stats_lake: str, role: str
) -> None:
    rows = pl.from_arrow(
        view(stats_lake, role, purpose="termly LA summary").sql(
            "SELECT geographic_level, region_code, old_la_code, school_submitted_count, enrolments "
            "FROM stats_attendance_views"
        )
    )
    assert rows.height > 0
    # LAs 201 (City of London) and 330 (Birmingham) have one school each here: never shown ...
    assert set(rows.filter(pl.col("geographic_level") == "Local authority")["old_la_code"]) == {"373"}
    # ... nor their regions, which hold only that one LA (region minus nothing = the school)
    assert set(rows.filter(pl.col("geographic_level") == "Regional")["region_code"]) <= {"E12000003"}
    assert rows["school_submitted_count"].min() > 1 and rows["enrolments"].min() >= 10


def test_dfe_analysts_see_the_views_before_disclosure_control(stats_lake: str) -> None:
    v = view(stats_lake, "dfe_analyst")
    exact = pl.from_arrow(
        v.sql(
            "SELECT DISTINCT old_la_code FROM stats_attendance_views_unsuppressed "
            "WHERE geographic_level = 'Local authority'"
        )
    )
    assert set(exact["old_la_code"]) == {"373", "201", "330"}
    # LA 373: 2 schools x 12 pupils x 2 sessions on 2 days, all present
    lone = v.sql(
        "SELECT possible_sessions FROM stats_attendance_views_unsuppressed WHERE time_frame = 'Week' "
        "AND geographic_level = 'Local authority' AND old_la_code = '373' AND education_phase = 'Total' "
        "AND fsm_status = 'Total' AND sen_status = 'Total' AND year_group = 'Total'"
    )
    assert column(lone, "possible_sessions") == [2 * 12 * 2 * 2]
    # the controlled table as stored: the one-school LAs are flagged, their figures are not there at all
    controlled = pl.from_arrow(
        v.sql(
            "SELECT old_la_code, suppressed, possible_sessions FROM stats_attendance_views "
            "WHERE geographic_level = 'Local authority'"
        )
    )
    lone = controlled.filter(pl.col("old_la_code") != "373")
    assert set(lone["old_la_code"]) == {"201", "330"} and lone["suppressed"].all()
    assert lone["possible_sessions"].null_count() == lone.height


@pytest.mark.parametrize(
    "role, scope", [("local_authority", "373"), ("local_alliance", "373"), ("school", "100001"), ("trust", "16782")]
)
def test_the_views_before_disclosure_control_are_withheld_from_area_scoped_roles(
    stats_lake: str, role: str, scope: str
) -> None:
    v = view(stats_lake, role, scope, purpose="attendance support for the area")
    error = refused(v, "SELECT * FROM stats_attendance_views_unsuppressed")
    assert error.rule == "invariant" and "filters by school" in str(error)


@pytest.mark.parametrize("role", ["inspection", "national_alliance"])
def test_la_level_roles_cannot_read_the_views_before_disclosure_control(stats_lake: str, role: str) -> None:
    v = view(stats_lake, role, purpose="termly LA summary")
    error = refused(v, "SELECT * FROM stats_attendance_views_unsuppressed")
    assert error.rule == "zone-not-granted"


def test_bookkeeping_tables_are_not_served_to_la_level_roles(stats_lake: str) -> None:
    error = refused(
        view(stats_lake, "inspection", purpose="inspection planning"), "SELECT * FROM stats_aggregation_runs"
    )
    assert error.rule == "zone-not-granted"
    error = refused(view(stats_lake, "dfe_analyst"), "SELECT * FROM stats_aggregation_runs")
    assert error.rule == "zone-not-granted"


def test_subject_access_finds_the_statistics_per_pupil_tables_too(stats_lake: str, tmp_path: Path) -> None:
    result = subject_access(
        upn_of("100001", 3), tmp_path / "sar", lake_uri=stats_lake, key=KEY, user="dpo", storage_options={}
    )
    # the statistics' per-pupil day table holds one row per pupil and counted day: 2 days
    assert result.rows_by_table["restricted/stats_pupil_day"] == 2
    assert result.rows_by_table["restricted/attendance_sessions"] == 4


def test_the_scan_finds_a_planted_upn_and_an_unsuppressed_single_school_row(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    published = _write_published(lake)
    planted = f"2026,Week 47,Local authority,E92000001,England,330,1,4,{upn_of('100004', 1)}\n"
    published.write_text(published.read_text() + planted)
    findings = scan_outputs(lake, storage_options={})
    assert {f.check for f in findings} == {"upn-text", "disclosure"}
    assert all(upn_of("100004", 1) not in f.detail for f in findings)
