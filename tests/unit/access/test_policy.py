"""policy(role, scope) as a table of cases, scope validation, purposes, and the invariants no policy edit can
override."""

from __future__ import annotations

import copy
import tomllib

import pyarrow as pa
import pytest

from access.policy import (
    POLICY_FILE,
    AccessRefused,
    PolicyError,
    TableInfo,
    check_purpose,
    contract_catalogue,
    load_policy,
    parse_policy,
    policy,
)
from storage.tables import Zone

SCHOOL_DAILY = TableInfo(
    "school_daily",
    Zone.SCHOOL,
    pa.schema([("urn", pa.string()), ("date", pa.date32()), ("possible_sessions", pa.int64())]),
    False,
)
LA_DAILY = TableInfo(
    "la_daily",
    Zone.LA_AND_ABOVE,
    pa.schema(
        [("geographic_level", pa.string()), ("num_schools", pa.int64()), ("possible_sessions", pa.int64())]
    ),
    False,
)
RELEASE_FILE = TableInfo(
    "attendance_daily", Zone.PUBLISHED, pa.schema([("geographic_level", pa.string())]), False
)


def catalogue(*extra: TableInfo) -> dict[str, TableInfo]:
    import access.pseudonymise  # noqa: F401  (declares the pseudonymised tables)

    tables = contract_catalogue()
    for info in (SCHOOL_DAILY, LA_DAILY, RELEASE_FILE, *extra):
        tables[info.name] = info
    return tables


LEVELS = "(lower(replace(geographic_level, '_', ' ')) IN ('national', 'regional', 'local authority'))"
TRUST = "urn IN (SELECT urn FROM schools WHERE trust_code = '16782')"
LA = "urn IN (SELECT urn FROM schools WHERE old_la_code = '373')"
NOT_GRANTED = "not granted"

CASES = [
    # role, scope, table, expected row filter (None = all rows, NOT_GRANTED = absent from the grant)
    ("school", "100000", "attendance_sessions", "urn = '100000'"),
    ("school", "100000", "pupils", "urn = '100000'"),
    ("school", "100000", "quarantine", "urn = '100000'"),
    ("school", "100000", "school_daily", "urn = '100000'"),
    ("school", "100000", "la_daily", f"{LEVELS} AND (num_schools > 1)"),
    ("school", "100000", "schools", None),
    ("school", "100000", "optout_audit", NOT_GRANTED),
    ("school", "100000", "pupils_pseudo", NOT_GRANTED),
    ("trust", "16782", "attendance_sessions", TRUST),
    ("trust", "16782", "school_daily", TRUST),
    ("local_authority", "373", "pupils", LA),
    ("local_authority", "373", "school_daily", LA),
    ("local_authority", "373", "pupil_sessions_pseudo", NOT_GRANTED),
    ("dfe_analyst", None, "pupil_sessions_pseudo", None),
    ("dfe_analyst", None, "pupils_pseudo", None),
    ("dfe_analyst", None, "school_daily", None),
    (
        "dfe_analyst",
        None,
        "la_daily",
        "lower(replace(geographic_level, '_', ' ')) IN ('national', 'regional', 'local authority')",
    ),
    ("dfe_analyst", None, "attendance_sessions", NOT_GRANTED),
    ("dfe_analyst", None, "pupils", NOT_GRANTED),
    ("local_alliance", "373", "school_daily", LA),
    ("local_alliance", "373", "attendance_sessions", NOT_GRANTED),
    ("local_alliance", "373", "pupils_pseudo", NOT_GRANTED),
    ("national_alliance", None, "la_daily", f"{LEVELS} AND (num_schools > 1)"),
    ("national_alliance", None, "school_daily", NOT_GRANTED),
    ("national_alliance", None, "schools", NOT_GRANTED),
    ("inspection", None, "la_daily", f"{LEVELS} AND (num_schools > 1)"),
    ("inspection", None, "attendance_daily", None),
    ("inspection", None, "school_daily", NOT_GRANTED),
    ("inspection", None, "pupils", NOT_GRANTED),
    ("inspection", None, "pupil_sessions_pseudo", NOT_GRANTED),
    ("inspection", None, "schools", NOT_GRANTED),
    ("public", None, "attendance_daily", None),
    ("public", None, "la_daily", NOT_GRANTED),
    ("data_protection_officer", None, "pupils", NOT_GRANTED),
]


@pytest.mark.parametrize("role, scope, table, expected", CASES)
def test_policy_table_of_cases(role: str, scope: str | None, table: str, expected: str | None) -> None:
    grant = policy(role, scope, catalogue())
    if expected == NOT_GRANTED:
        assert table not in grant.tables
    else:
        assert grant.tables[table].row_filter == expected


@pytest.mark.parametrize(
    "role, grain",
    [
        ("school", "pupil"),
        ("trust", "pupil"),
        ("local_authority", "pupil"),
        ("dfe_analyst", "pupil"),
        ("local_alliance", "school"),
        ("national_alliance", "local_authority"),
        ("inspection", "local_authority"),
        ("public", "published"),
        ("data_protection_officer", "pupil"),
    ],
)
def test_every_role_of_the_principles_exists_with_its_minimum_grain(role: str, grain: str) -> None:
    assert (
        policy(
            role,
            {"school": "100000", "trust": "16782", "local_authority": "373", "local_alliance": "373"}.get(
                role
            ),
            catalogue(),
        ).minimum_grain
        == grain
    )


def test_schools_see_identifiable_pupils_but_never_the_raw_quarantined_message() -> None:
    grant = policy("school", "100000", catalogue())
    assert "upn" in grant.tables["pupils"].columns and "date_of_birth" in grant.tables["pupils"].columns
    assert "raw_message" not in grant.tables["quarantine"].columns


def test_dfe_analyst_pseudonymised_tables_carry_no_upn_or_date_of_birth() -> None:
    grant = policy("dfe_analyst", None, catalogue())
    for name in ("pupil_sessions_pseudo", "pupils_pseudo"):
        assert not {"upn", "date_of_birth"} & set(grant.tables[name].columns)
        assert "pupil_key" in grant.tables[name].columns


def test_data_protection_officer_has_subject_access_and_no_query_tables() -> None:
    grant = policy("data_protection_officer", None, catalogue())
    assert grant.subject_access and dict(grant.tables) == {}


@pytest.mark.parametrize(
    "role, scope, rule",
    [
        ("school", None, "scope-required"),
        ("school", "12345", "scope-invalid"),
        ("school", "1000001", "scope-invalid"),
        ("school", "10000A", "scope-invalid"),
        ("trust", "TR1234", "scope-invalid"),
        ("local_authority", "37", "scope-invalid"),
        ("local_authority", "999", "scope-invalid"),  # three digits, but no live LA has that code
        ("local_alliance", None, "scope-required"),
        ("inspection", "100000", "scope-unexpected"),
        ("ofsted", None, "role-unknown"),
    ],
)
def test_scope_is_required_and_checked(role: str, scope: str | None, rule: str) -> None:
    with pytest.raises(AccessRefused) as info:
        policy(role, scope, catalogue())
    assert info.value.rule == rule


@pytest.mark.parametrize(
    "role, purpose, rule",
    [
        ("dfe_analyst", None, "purpose-required"),
        ("inspection", "", "purpose-required"),
        ("dfe_analyst", "Ofsted pre-inspection briefing", "purpose-prohibited"),
        ("dfe_analyst", "list schools causing concern", "purpose-prohibited"),
        ("local_alliance", "academisation case for school X", "purpose-prohibited"),
    ],
)
def test_purpose_required_and_prohibited_uses_refused(role: str, purpose: str | None, rule: str) -> None:
    with pytest.raises(AccessRefused) as info:
        check_purpose(role, purpose)
    assert info.value.rule == rule


@pytest.mark.parametrize(
    "role, purpose",
    [
        ("dfe_analyst", "regional trends in persistent absence"),
        ("inspection", "Ofsted inspection planning, LA level"),  # the inspection role sees LA level only
        ("school", None),
    ],
)
def test_allowed_purposes_pass(role: str, purpose: str | None) -> None:
    assert check_purpose(role, purpose) == purpose


# --- invariants -------------------------------------------------------------------------------------------


def test_a_school_level_table_in_the_la_zone_is_withheld_from_inspection() -> None:
    school_rows = TableInfo(
        "la_school_mix",
        Zone.LA_AND_ABOVE,
        pa.schema([("geographic_level", pa.string()), ("school_urn", pa.string())]),
        False,
    )
    grant = policy("inspection", None, catalogue(school_rows))
    assert "la_school_mix" not in grant.tables
    assert "school_urn" in grant.withheld["la_school_mix"]


def test_a_pseudonymised_table_with_a_upn_is_withheld_from_dfe_analysts() -> None:
    leaky = TableInfo(
        "leaky_pseudo", Zone.PSEUDONYMISED, pa.schema([("urn", pa.string()), ("upn", pa.string())]), True
    )
    grant = policy("dfe_analyst", None, catalogue(leaky))
    assert "leaky_pseudo" not in grant.tables and "upn" in grant.withheld["leaky_pseudo"]


def test_a_published_file_with_pupil_columns_is_withheld_from_the_public() -> None:
    leaky = TableInfo("leaky_file", Zone.PUBLISHED, pa.schema([("upn", pa.string())]), True)
    assert "leaky_file" in policy("public", None, catalogue(leaky)).withheld


def test_a_school_table_without_a_school_column_is_withheld_not_shown_unfiltered() -> None:
    no_urn = TableInfo("school_mystery", Zone.SCHOOL, pa.schema([("n", pa.int64())]), False)
    grant = policy("school", "100000", catalogue(no_urn))
    assert "school_mystery" not in grant.tables and "no urn or school_urn" in grant.withheld["school_mystery"]
    # an unscoped role still reads it in full
    assert policy("dfe_analyst", None, catalogue(no_urn)).tables["school_mystery"].row_filter is None


def _raw_policy() -> dict:
    with open(POLICY_FILE, "rb") as handle:
        return tomllib.load(handle)


@pytest.mark.parametrize(
    "role, zone, message",
    [
        ("inspection", "school_aggregates", "beyond|may not be granted"),
        ("national_alliance", "restricted", "may not be granted"),
        ("public", "la_aggregates", "may not be granted"),
        ("dfe_analyst", "restricted", "identifiable_pupils"),
        ("local_alliance", "pseudonymised", "may not be granted"),
        ("school", "audit", "may not be granted"),
    ],
)
def test_a_policy_edit_that_breaks_an_invariant_is_rejected_on_load(
    role: str, zone: str, message: str
) -> None:
    raw = copy.deepcopy(_raw_policy())
    raw["roles"][role]["grants"].append({"rule": f"{role}.bad", "zone": zone, "tables": ["*"], "rows": "all"})
    with pytest.raises(PolicyError, match=message):
        parse_policy(raw)


def test_a_scoped_row_rule_on_an_unscoped_role_is_rejected() -> None:
    raw = copy.deepcopy(_raw_policy())
    raw["roles"]["inspection"]["grants"][0]["rows"] = "la_schools"
    with pytest.raises(PolicyError, match="needs a scope"):
        parse_policy(raw)


def test_the_policy_file_is_versioned() -> None:
    assert isinstance(load_policy().version, int) and load_policy().version >= 1
