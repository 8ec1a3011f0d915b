"""Roles, scopes and grants: the access policy as data (``access/policy.toml``) and one pure function.

``policy(role, scope)`` turns a role and its scope into a :class:`Grant`: the tables the role may read,
each with the row filter (a SQL predicate) and the columns it may see, and the role's minimum grain.
The policy file says what each role is granted; this module adds invariants that no edit of the file can
override (checked when the file is loaded and again for every table):

* a role whose minimum grain is ``school`` or coarser never receives a pupil-level table or a pupil
  column (``upn``, ``pupil_key``, ``date_of_birth``...);
* a role whose minimum grain is ``local_authority`` or ``published`` never receives a table with a
  school-identifying column (``urn``, ``school_urn``, ``laestab``, ``school_name``...);
* a role that may not see identifiable pupils never receives a table with a ``upn`` or a date of birth;
* each grain may only be granted certain zones (``ZONES_BY_GRAIN``) and the audit zone is never granted;
* a row rule that needs a school column is only applied to a table that has one (otherwise the table is
  withheld, never shown unfiltered).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import pyarrow as pa

from attendance.errors import UserFacingError
from storage.tables import TABLES, TableContract, Zone

POLICY_FILE = Path(__file__).with_name("policy.toml")

GRAINS: tuple[str, ...] = ("pupil", "school", "local_authority", "published")

#: The zones each minimum grain may ever be granted (an invariant: the policy file cannot widen it).
ZONES_BY_GRAIN: Mapping[str, frozenset[Zone]] = MappingProxyType(
    {
        "pupil": frozenset(
            {
                Zone.REFERENCE,
                Zone.RESTRICTED,
                Zone.PSEUDONYMISED,
                Zone.SCHOOL,
                Zone.LA_AND_ABOVE,
                Zone.PUBLISHED,
            }
        ),
        "school": frozenset({Zone.REFERENCE, Zone.SCHOOL, Zone.LA_AND_ABOVE, Zone.PUBLISHED}),
        "local_authority": frozenset({Zone.LA_AND_ABOVE, Zone.PUBLISHED}),
        "published": frozenset({Zone.PUBLISHED}),
    }
)

#: Columns that identify a child directly (never granted to a role without ``identifiable_pupils``).
PUPIL_IDENTIFYING_COLUMNS: frozenset[str] = frozenset(
    {
        "upn",
        "date_of_birth",
        "dob",
        "forename",
        "surname",
        "middle_names",
        "legal_forename",
        "legal_surname",
        "former_upn",
        "uln",
    }
)
#: Columns that make a row a pupil's row (never granted at grain school or coarser).
PUPIL_ROW_COLUMNS: frozenset[str] = PUPIL_IDENTIFYING_COLUMNS | {"pupil_key"}
#: Columns that identify a school (never granted at grain local_authority or coarser).
SCHOOL_IDENTIFYING_COLUMNS: frozenset[str] = frozenset(
    {
        "urn",
        "school_urn",
        "laestab",
        "school_laestab",
        "school_name",
        "establishment_name",
        "estab",
    }
)
#: Columns a row rule may use to find a row's school, in order of preference.
SCHOOL_COLUMNS: tuple[str, ...] = ("urn", "school_urn")

SCOPE_KINDS = ("none", "urn", "trust", "la")


class PolicyError(Exception):
    """The policy file is malformed or breaks an invariant (a deployment error, not a user error)."""


class AccessRefused(UserFacingError):
    """A read the policy does not allow; ``rule`` names the rule that refused it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"refused ({rule}): {message}")
        self.rule = rule
        self.reason = message


# --- the policy file -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantRule:
    rule: str
    zone: Zone
    tables: tuple[str, ...]  # glob patterns
    rows: str  # key of Policy.row_templates
    exclude_columns: tuple[str, ...] = ()
    disclosure_control: bool = False
    exclude_tables: tuple[str, ...] = ()

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.tables) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude_tables
        )


@dataclass(frozen=True)
class RoleDef:
    name: str
    label: str
    who: str
    scope: str  # one of SCOPE_KINDS
    purpose_required: bool
    screen_purpose: bool
    minimum_grain: str
    identifiable_pupils: bool
    subject_access: bool
    principle: str
    grants: tuple[GrantRule, ...]

    @property
    def zones(self) -> tuple[Zone, ...]:
        return tuple(dict.fromkeys(g.zone for g in self.grants))


@dataclass(frozen=True)
class ScopeKind:
    name: str
    label: str
    pattern: re.Pattern[str]
    description: str


@dataclass(frozen=True)
class Policy:
    version: int
    updated: str
    source: str
    scopes: Mapping[str, ScopeKind]
    row_templates: Mapping[str, str]
    rows_in_words: Mapping[str, str]
    school_count_columns: tuple[str, ...]
    aggregate_levels: tuple[str, ...]
    prohibited_terms: tuple[str, ...]
    prohibited_use_instead: str
    roles: Mapping[str, RoleDef]


def _as_tuple(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{what}: expected a list of strings")
    return tuple(value)


def parse_policy(raw: Mapping[str, object]) -> Policy:
    """Build and check a :class:`Policy` from the parsed TOML document; raise PolicyError listing problems."""
    problems: list[str] = []
    try:
        version = int(raw["version"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        raise PolicyError("policy: an integer `version` is required") from None
    scopes = {
        name: ScopeKind(
            name,
            str(spec.get("label", name)),
            re.compile(str(spec["pattern"])),
            str(spec.get("description", "")),
        )
        for name, spec in dict(raw.get("scopes", {})).items()  # type: ignore[call-overload]
    }
    rows = {str(k): str(v) for k, v in dict(raw.get("rows", {})).items()}  # type: ignore[call-overload]
    words = {str(k): str(v) for k, v in dict(raw.get("rows_in_words", {})).items()}  # type: ignore[call-overload]
    disclosure = dict(raw.get("disclosure", {}))  # type: ignore[call-overload]
    prohibited = dict(raw.get("prohibited_uses", {}))  # type: ignore[call-overload]
    zone_values = {z.value: z for z in Zone}
    roles: dict[str, RoleDef] = {}
    rule_ids: set[str] = set()
    for role_name, spec in dict(raw.get("roles", {})).items():  # type: ignore[call-overload]
        spec = dict(spec)
        grain = str(spec.get("minimum_grain", ""))
        scope_kind = str(spec.get("scope", "none"))
        if grain not in GRAINS:
            problems.append(f"role {role_name}: minimum_grain {grain!r} is not one of {', '.join(GRAINS)}")
            continue
        if scope_kind != "none" and scope_kind not in scopes:
            problems.append(f"role {role_name}: scope {scope_kind!r} is not declared under [scopes]")
        identifiable = bool(spec.get("identifiable_pupils", False))
        grants: list[GrantRule] = []
        for g in spec.get("grants", []):
            rule = str(g.get("rule", ""))
            if not rule or rule in rule_ids:
                problems.append(f"role {role_name}: grant rule id {rule!r} missing or duplicated")
            rule_ids.add(rule)
            zone = zone_values.get(str(g.get("zone")))
            if zone is None:
                problems.append(f"rule {rule}: unknown zone {g.get('zone')!r}")
                continue
            if zone not in ZONES_BY_GRAIN[grain]:
                problems.append(
                    f"rule {rule}: zone {zone.value} may not be granted to a role whose minimum "
                    f"grain is {grain} (allowed: {', '.join(sorted(z.value for z in ZONES_BY_GRAIN[grain]))})"
                )
            if zone is Zone.RESTRICTED and not identifiable:
                problems.append(f"rule {rule}: the restricted zone needs identifiable_pupils = true")
            row_rule = str(g.get("rows", "all"))
            if row_rule not in rows:
                problems.append(f"rule {rule}: rows {row_rule!r} is not declared under [rows]")
            elif "{scope}" in rows[row_rule] and scope_kind == "none":
                problems.append(f"rule {rule}: rows {row_rule!r} needs a scope but role {role_name} has none")
            grants.append(
                GrantRule(
                    rule=rule,
                    zone=zone,
                    tables=_as_tuple(g.get("tables", []), f"rule {rule} tables"),
                    rows=row_rule,
                    exclude_columns=_as_tuple(g.get("exclude_columns", []), f"rule {rule}"),
                    disclosure_control=bool(g.get("disclosure_control", False)),
                    exclude_tables=_as_tuple(g.get("exclude_tables", []), f"rule {rule} exclude_tables"),
                )
            )
        roles[role_name] = RoleDef(
            name=role_name,
            label=str(spec.get("label", role_name)),
            who=str(spec.get("who", "")),
            scope=scope_kind,
            purpose_required=bool(spec.get("purpose_required", False)),
            screen_purpose=bool(spec.get("screen_purpose", False)),
            minimum_grain=grain,
            identifiable_pupils=identifiable,
            subject_access=bool(spec.get("subject_access", False)),
            principle=str(spec.get("principle", "")),
            grants=tuple(grants),
        )
    if problems:
        raise PolicyError("access policy is invalid:\n  " + "\n  ".join(problems))
    return Policy(
        version=version,
        updated=str(raw.get("updated", "")),
        source=str(raw.get("source", "")),
        scopes=MappingProxyType(scopes),
        row_templates=MappingProxyType(rows),
        rows_in_words=MappingProxyType(words),
        school_count_columns=_as_tuple(disclosure.get("school_count_columns", []), "school_count_columns"),
        aggregate_levels=_as_tuple(disclosure.get("aggregate_levels", []), "aggregate_levels"),
        prohibited_terms=_as_tuple(prohibited.get("terms", []), "prohibited_uses.terms"),
        prohibited_use_instead=str(prohibited.get("use_instead", "")),
        roles=MappingProxyType(roles),
    )


@lru_cache(maxsize=4)
def load_policy(path: Path = POLICY_FILE) -> Policy:
    """The policy in ``path`` (default ``access/policy.toml``), parsed and checked once."""
    with open(path, "rb") as handle:
        return parse_policy(tomllib.load(handle))


# --- the catalogue: what tables exist (or are declared) --------------------------------------------------


@dataclass(frozen=True)
class TableInfo:
    """What the policy needs to know about a table: its zone, its columns and whether rows are pupils."""

    name: str
    zone: Zone
    schema: pa.Schema
    pupil_level: bool

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)

    @classmethod
    def from_contract(cls, contract: TableContract) -> TableInfo:
        return cls(contract.name, contract.zone, contract.schema, contract.pupil_level)


def contract_catalogue(contracts: Iterable[TableContract] | None = None) -> dict[str, TableInfo]:
    """The catalogue of declared tables (``storage.tables.TABLES`` by default)."""
    return {c.name: TableInfo.from_contract(c) for c in (TABLES.values() if contracts is None else contracts)}


# --- grants ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableGrant:
    table: str
    zone: Zone
    row_filter: str | None  # SQL predicate over the table's columns (and `schools`), None = every row
    columns: tuple[str, ...]
    rule: str  # the policy rule that granted it
    rows_in_words: str = ""
    #: hide rows the statistics' disclosure rules would suppress (see the gateway)
    disclosure_control: bool = False


@dataclass(frozen=True)
class Grant:
    role: str
    scope: str | None
    policy_version: int
    minimum_grain: str
    tables: Mapping[str, TableGrant]
    zones: tuple[Zone, ...]
    purpose_required: bool
    subject_access: bool
    principle: str
    #: tables a grant rule matched but an invariant withheld: name -> why
    withheld: Mapping[str, str] = field(default_factory=dict)
    rules: tuple[GrantRule, ...] = ()

    def rule_for(self, name: str, zone: Zone | None = None) -> GrantRule | None:
        """The grant rule whose patterns match ``name`` (in ``zone`` when given)."""
        for rule in self.rules:
            if (zone is None or rule.zone is zone) and rule.matches(name):
                return rule
        return None


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def validate_scope(role: RoleDef, scope: str | None, pol: Policy) -> str | None:
    """The scope checked against the role's scope kind; AccessRefused when missing, unexpected, malformed."""
    if role.scope == "none":
        if scope not in (None, ""):
            raise AccessRefused("scope-unexpected", f"role {role.name!r} reads without a scope; drop --scope")
        return None
    kind = pol.scopes[role.scope]
    if scope is None or not scope.strip():
        raise AccessRefused("scope-required", f"role {role.name!r} needs --scope: {kind.description}")
    scope = scope.strip()
    if not kind.pattern.fullmatch(scope):
        raise AccessRefused("scope-invalid", f"scope for role {role.name!r} must be {kind.description}")
    if role.scope == "la":
        from schemas.reference import local_authorities

        if scope not in local_authorities():
            raise AccessRefused("scope-invalid", f"{scope} is not the 3-digit code of a live local authority")
    return scope


def _school_column(columns: tuple[str, ...]) -> str | None:
    return next((c for c in SCHOOL_COLUMNS if c in columns), None)


def _invariant_breach(role: RoleDef, info: TableInfo, columns: tuple[str, ...]) -> str | None:
    """Why ``info`` may never be shown to ``role`` whatever the policy file says, or None."""
    if info.zone not in ZONES_BY_GRAIN[role.minimum_grain] or info.zone is Zone.AUDIT:
        return f"zone {info.zone.value} is beyond minimum grain {role.minimum_grain}"
    if not role.identifiable_pupils:
        found = sorted(set(columns) & PUPIL_IDENTIFYING_COLUMNS)
        if found:
            return f"holds identifying pupil column(s) {', '.join(found)}"
    if role.minimum_grain != "pupil":
        if info.pupil_level:
            return "holds pupil-level rows"
        found = sorted(set(columns) & PUPIL_ROW_COLUMNS)
        if found:
            return f"holds pupil column(s) {', '.join(found)}"
    if role.minimum_grain in ("local_authority", "published"):
        found = sorted(set(columns) & SCHOOL_IDENTIFYING_COLUMNS)
        if found:
            return f"holds school-identifying column(s) {', '.join(found)}"
    return None


def _row_filter(
    rule: GrantRule, info: TableInfo, scope: str | None, pol: Policy
) -> tuple[str | None, str | None]:
    """(predicate, None) or (None, why the table must be withheld)."""
    parts: list[str] = []
    template = pol.row_templates[rule.rows]
    if "{scope}" in template:
        school_column = _school_column(info.columns)
        if school_column is None:
            return (
                None,
                f"rule {rule.rule} filters by school but the table has no "
                f"{' or '.join(SCHOOL_COLUMNS)} column",
            )
        assert scope is not None
        parts.append(template.replace("{school}", school_column).replace("{scope}", _sql_string(scope)))
    if info.zone is Zone.LA_AND_ABOVE and "geographic_level" in info.columns and pol.aggregate_levels:
        levels = ", ".join(_sql_string(level.lower()) for level in pol.aggregate_levels)
        parts.append(f"lower(replace(geographic_level, '_', ' ')) IN ({levels})")
    if rule.disclosure_control:
        count_column = next((c for c in pol.school_count_columns if c in info.columns), None)
        if count_column is not None:
            count_type = info.schema.field(count_column).type
            if (
                pa.types.is_integer(count_type)
                or pa.types.is_floating(count_type)
                or pa.types.is_decimal(count_type)
            ):
                parts.append(f"{count_column} > 1")
            else:
                parts.append(f"{count_column} <> '1'")
    if not parts:
        return None, None
    return " AND ".join(f"({p})" if len(parts) > 1 else p for p in parts), None


def policy(
    role: str,
    scope: str | None,
    catalogue: Mapping[str, TableInfo] | None = None,
    *,
    pol: Policy | None = None,
) -> Grant:
    """What ``role`` with ``scope`` may read: a pure function of the policy file and the table catalogue.

    ``catalogue`` lists the tables that exist or are declared (default: the registered table contracts);
    the gateway adds tables it finds in the lake. Raises :class:`AccessRefused` for an unknown role or a
    missing, unexpected or malformed scope.
    """
    pol = pol or load_policy()
    role_def = pol.roles.get(role)
    if role_def is None:
        raise AccessRefused("role-unknown", f"no role {role!r}; roles: {', '.join(pol.roles)}")
    scope = validate_scope(role_def, scope, pol)
    catalogue = contract_catalogue() if catalogue is None else catalogue
    tables: dict[str, TableGrant] = {}
    withheld: dict[str, str] = {}
    for name in sorted(catalogue):
        info = catalogue[name]
        rule = next((g for g in role_def.grants if g.zone is info.zone and g.matches(name)), None)
        if rule is None:
            continue
        columns = tuple(c for c in info.columns if c not in rule.exclude_columns)
        breach = _invariant_breach(role_def, info, columns)
        if breach is not None:
            withheld[name] = f"withheld by an invariant of the access policy: {breach}"
            continue
        predicate, why_not = _row_filter(rule, info, scope, pol)
        if why_not is not None:
            withheld[name] = f"withheld: {why_not}"
            continue
        tables[name] = TableGrant(
            table=name,
            zone=info.zone,
            row_filter=predicate,
            columns=columns,
            rule=rule.rule,
            rows_in_words=pol.rows_in_words.get(rule.rows, rule.rows),
            disclosure_control=rule.disclosure_control,
        )
    return Grant(
        role=role,
        scope=scope,
        policy_version=pol.version,
        minimum_grain=role_def.minimum_grain,
        tables=MappingProxyType(tables),
        zones=role_def.zones,
        purpose_required=role_def.purpose_required,
        subject_access=role_def.subject_access,
        principle=role_def.principle,
        withheld=MappingProxyType(withheld),
        rules=role_def.grants,
    )


def check_purpose(role: str, purpose: str | None, pol: Policy | None = None) -> str | None:
    """The purpose, checked: required for roles that declare it; refused when it names a prohibited use of
    school-level data for roles marked ``screen_purpose``."""
    pol = pol or load_policy()
    role_def = pol.roles.get(role)
    if role_def is None:
        raise AccessRefused("role-unknown", f"no role {role!r}; roles: {', '.join(pol.roles)}")
    text = (purpose or "").strip()
    if role_def.purpose_required and len(text) < 5:
        raise AccessRefused(
            "purpose-required", f"role {role!r} must say why it reads the data: give --purpose (a few words)"
        )
    if role_def.screen_purpose and text:
        lowered = " ".join(re.findall(r"[a-z]+", text.lower()))
        for term in pol.prohibited_terms:
            if re.search(rf"\b{re.escape(term.lower())}\b", lowered):
                raise AccessRefused(
                    "purpose-prohibited",
                    f"the purpose mentions {term!r}: {pol.roles[pol.prohibited_use_instead].principle} "
                    f"Use the {pol.prohibited_use_instead!r} role, which reads local authority, regional and "
                    "national figures only.",
                )
    return text or None


def describe_zone_access(role: RoleDef, zone: Zone, pol: Policy) -> str:
    """A short plain-English cell: what rows of ``zone`` the role may read ("—" for none)."""
    rules = [g for g in role.grants if g.zone is zone]
    if not rules:
        return "—"
    cells = []
    for g in rules:
        what = pol.rows_in_words.get(g.rows, g.rows)
        if g.tables != ("*",):
            what += " of " + ", ".join(g.tables)
        if g.exclude_columns:
            what += " (without " + ", ".join(g.exclude_columns) + ")"
        if g.exclude_tables:
            what += " except " + ", ".join(g.exclude_tables)
        if g.disclosure_control:
            what += "; rows the disclosure rules would suppress are hidden"
        cells.append(what)
    return "; ".join(cells)
