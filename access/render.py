"""The policy as a table a data protection officer can read: plain text and Markdown (docs/access.md).

Everything here is generated from ``access/policy.toml`` through ``policy()`` itself, so the document
cannot say something the software does not do.
"""

from __future__ import annotations

import pyarrow as pa

from access.policy import (
    PUPIL_IDENTIFYING_COLUMNS,
    PUPIL_ROW_COLUMNS,
    SCHOOL_IDENTIFYING_COLUMNS,
    ZONES_BY_GRAIN,
    Policy,
    TableInfo,
    contract_catalogue,
    describe_zone_access,
    load_policy,
    policy,
)
from storage.tables import Zone

ZONE_ORDER = (
    Zone.REFERENCE,
    Zone.RESTRICTED,
    Zone.PSEUDONYMISED,
    Zone.SCHOOL,
    Zone.LA_AND_ABOVE,
    Zone.PUBLISHED,
)
EXAMPLE_SCOPES = {"none": None, "urn": "100000", "trust": "16782", "la": "373"}

#: Illustrative aggregate tables for the cases table (the statistics package declares the real ones).
EXAMPLE_TABLES = (
    TableInfo(
        "school_daily",
        Zone.SCHOOL,
        pa.schema([("urn", pa.string()), ("date", pa.date32()), ("possible_sessions", pa.int64())]),
        False,
    ),
    TableInfo(
        "la_daily",
        Zone.LA_AND_ABOVE,
        pa.schema(
            [
                ("geographic_level", pa.string()),
                ("old_la_code", pa.string()),
                ("num_schools", pa.int64()),
                ("possible_sessions", pa.int64()),
            ]
        ),
        False,
    ),
    TableInfo(
        "attendance_daily_file",
        Zone.PUBLISHED,
        pa.schema([("geographic_level", pa.string()), ("attendance_perc", pa.string())]),
        False,
    ),
)
CASE_TABLES = (
    "schools",
    "attendance_sessions",
    "pupils",
    "quarantine",
    "pupil_sessions_pseudo",
    "pupils_pseudo",
    "school_daily",
    "la_daily",
    "attendance_daily_file",
)


def _catalogue() -> dict[str, TableInfo]:
    import access.pseudonymise  # noqa: F401  (declares the pseudonymised tables)

    catalogue = contract_catalogue()
    for info in EXAMPLE_TABLES:
        catalogue.setdefault(info.name, info)
    return catalogue


def _scope_cell(pol: Policy, kind: str) -> str:
    return "none" if kind == "none" else f"{pol.scopes[kind].label} ({pol.scopes[kind].description})"


def role_rows(pol: Policy | None = None) -> list[dict[str, str]]:
    """One row per role: who, scope, purpose, grain and, per zone, which rows it may read."""
    pol = pol or load_policy()
    rows = []
    for role in pol.roles.values():
        row = {
            "Role": role.name,
            "Who": role.who,
            "Scope": _scope_cell(pol, role.scope),
            "Purpose required": "yes" if role.purpose_required else "no",
            "Minimum grain": role.minimum_grain
            + ("" if role.identifiable_pupils or role.minimum_grain != "pupil" else " (pseudonymised)"),
        }
        for zone in ZONE_ORDER:
            row[zone.value] = describe_zone_access(role, zone, pol)
        if role.subject_access:
            row[Zone.RESTRICTED.value] = row[Zone.PSEUDONYMISED.value] = "one pupil, by subject access only"
        rows.append(row)
    return rows


def _case_cell(grant, info: TableInfo) -> str:  # type: ignore[no-untyped-def]
    tg = grant.tables.get(info.name)
    if tg is not None:
        cell = tg.rows_in_words
        dropped = [c for c in info.columns if c not in tg.columns]
        if dropped:
            cell += f", without {', '.join(dropped)}"
        if tg.row_filter and "geographic_level" in tg.row_filter:
            cell += ", LA/regional/national levels only"
        if tg.row_filter and any(
            f"{c} > 1" in tg.row_filter or f"{c} <> '1'" in tg.row_filter
            for c in ("num_schools", "school_count", "schools")
        ):
            cell += ", no single-school rows"
        return cell
    if info.name in grant.withheld:
        return "withheld: " + grant.withheld[info.name]
    if grant.subject_access and info.pupil_level:
        return "one pupil, by subject access"
    return "no"


def case_rows(pol: Policy | None = None) -> list[dict[str, str]]:
    """The table of cases: for each role (example scope) and example table, what ``policy()`` grants."""
    pol = pol or load_policy()
    catalogue = _catalogue()
    rows = []
    for role in pol.roles.values():
        scope = EXAMPLE_SCOPES[role.scope]
        grant = policy(role.name, scope, catalogue, pol=pol)
        row = {"Role (example scope)": role.name + (f" ({scope})" if scope else "")}
        for name in CASE_TABLES:
            row[f"{catalogue[name].zone.value}/{name}"] = _case_cell(grant, catalogue[name])
        rows.append(row)
    return rows


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    headers = list(rows[0])

    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(r[h]) for h in headers) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def policy_markdown(pol: Policy | None = None) -> str:
    """The generated part of docs/access.md."""
    pol = pol or load_policy()
    out = [
        f"Policy version {pol.version} ({pol.updated}), from `access/policy.toml`; "
        f"principles: {pol.source}.\n",
        "\n### Roles and the zones they may read\n\n",
        _markdown_table(role_rows(pol)),
        "\n### Why each role reads what it reads\n\n",
    ]
    out += [f"- **{r.name}** ({r.label}): {r.principle}\n" for r in pol.roles.values()]
    out += [
        "\n### Table of cases\n\n",
        "What `policy(role, scope)` grants for an example scope (URN 100000, trust 16782, LA 373) and "
        "example tables. `school_daily`, `la_daily` and `attendance_daily_file` stand for whatever the "
        "statistics package writes to those zones. These cases are the unit tests' table.\n\n",
        _markdown_table(case_rows(pol)),
        "\n### Row rules, exactly\n\n",
        "How each row rule is written in SQL for a table (`{school}` is its urn or school_urn column, "
        "`{scope}` the scope):\n\n",
        *[f"- {name}: `{template or 'no filter'}`\n" for name, template in pol.row_templates.items()],
        "\n### Rules no policy edit can override\n\n",
        "- Zones by minimum grain: "
        + "; ".join(
            f"{grain}: {', '.join(z.value for z in ZONE_ORDER if z in zones)}"
            for grain, zones in ZONES_BY_GRAIN.items()
        )
        + ". The audit zone is never readable through the gateway.\n",
        "- Roles without identifiable pupils never get a table with "
        f"{', '.join(sorted(PUPIL_IDENTIFYING_COLUMNS))}.\n",
        "- Grain school or coarser never gets a pupil-level table or a column "
        f"{', '.join(sorted(PUPIL_ROW_COLUMNS))}.\n",
        "- Grain local_authority or published never gets a table with "
        f"{', '.join(sorted(SCHOOL_IDENTIFYING_COLUMNS))}.\n",
        "- A row rule that needs a school column withholds a table without one; it never shows it "
        "unfiltered.\n",
        f"- In la_aggregates only the levels {', '.join(pol.aggregate_levels)} are shown; rules marked "
        f"'no single-school rows' drop rows with {' / '.join(pol.school_count_columns)} of 1 or fewer.\n",
    ]
    if pol.prohibited_terms:
        out.append(
            f"- Roles that screen their purpose refuse one mentioning: {', '.join(pol.prohibited_terms)} "
            f"(use the {pol.prohibited_use_instead} role).\n"
        )
    return "".join(out)


def policy_text(pol: Policy | None = None) -> str:
    """The role table for a terminal: one block per role."""
    pol = pol or load_policy()
    lines = [f"access policy v{pol.version} ({pol.updated})", ""]
    for row in role_rows(pol):
        lines.append(
            f"{row['Role']}  scope: {row['Scope']}  purpose required: {row['Purpose required']}  "
            f"minimum grain: {row['Minimum grain']}"
        )
        for zone in ZONE_ORDER:
            if row[zone.value] != "—":
                lines.append(f"    {zone.value:<18} {row[zone.value]}")
        lines.append("")
    return "\n".join(lines)
