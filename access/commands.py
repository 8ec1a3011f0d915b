"""Commands of the access area: ``query``, ``audit report``, ``subject-access`` and ``access ...``."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from attendance.errors import UserFacingError
from attendance.settings import get_settings

ROLE_HELP = (
    "school, trust, local_authority, dfe_analyst, local_alliance, national_alliance, inspection, public "
    "(see `attendance access policy`)"
)


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


@click.command("query")
@click.option("--role", required=True, help=f"Role to read as: {ROLE_HELP}.")
@click.option(
    "--scope",
    default=None,
    help="URN (school), trust code (trust) or 3-digit LA code (local_authority, local_alliance).",
)
@click.option("--purpose", default=None, help="Why the data is read (required for some roles; audited).")
@click.option("--user", default=None, help="Who is asking (default: the login name); audited.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv", "parquet"]),
    default="table",
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the result to this file (required for parquet).",
)
@click.option("--list-tables", is_flag=True, help="List the tables the role may read, with their row rules.")
@click.argument("sql", required=False)
def query(
    role: str,
    scope: str | None,
    purpose: str | None,
    user: str | None,
    output_format: str,
    out: Path | None,
    list_tables: bool,
    sql: str | None,
) -> None:
    """Run SQL over only what ROLE (with --scope) may read; every query and refusal is audited."""
    import polars as pl

    from access.gateway import open_view

    if not list_tables and not sql:
        raise UserFacingError("give a SQL query (or --list-tables)")
    if output_format == "parquet" and out is None:
        raise UserFacingError("--format parquet needs --out FILE")
    view = open_view(
        role, scope, lake_uri=get_settings().lake_uri, purpose=purpose, user=user or _default_user()
    )
    if list_tables:
        tables = view.tables()
        if not tables:
            click.echo(f"role {role} may read no table that exists yet")
        for name, grant in sorted(tables.items()):
            rows = grant.row_filter or "all rows"
            columns = ", ".join(grant.columns)
            click.echo(f"{grant.zone.value}/{name}  [{grant.rule}]  rows: {rows}  columns: {columns}")
        return
    assert sql is not None
    frame = pl.from_arrow(view.sql(sql))
    assert isinstance(frame, pl.DataFrame)
    if output_format == "parquet":
        assert out is not None
        frame.write_parquet(out)
        click.echo(f"{frame.height} rows written to {out}", err=True)
    elif output_format == "csv":
        if out is not None:
            frame.write_csv(out)
            click.echo(f"{frame.height} rows written to {out}", err=True)
        else:
            sys.stdout.write(frame.write_csv())
    else:
        with pl.Config(tbl_rows=100, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200):
            text = str(frame)
        if out is not None:
            out.write_text(text + "\n", encoding="utf-8")
        else:
            click.echo(text)


@click.group("audit")
def audit_group() -> None:
    """The access audit: every query, refusal and subject-access export."""


@audit_group.command("report")
@click.option(
    "--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="From this day (YYYY-MM-DD)."
)
@click.option(
    "--format", "output_format", type=click.Choice(["table", "csv"]), default="table", show_default=True
)
def audit_report(since, output_format: str) -> None:  # type: ignore[no-untyped-def]
    """Requests by role, user and outcome (allowed / refused / error), with refusal rules."""
    import polars as pl

    from access import audit

    rows = audit.read(get_settings().lake_uri, since=since.date() if since else None)
    summary = audit.summarise(rows)
    if output_format == "csv":
        sys.stdout.write(summary.write_csv())
        return
    if summary.height == 0:
        click.echo("no audited requests" + (f" since {since.date()}" if since else ""))
        return
    with pl.Config(
        tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200, tbl_hide_dataframe_shape=True
    ):
        click.echo(str(summary))
    allowed = int(summary.filter(pl.col("outcome") == "allowed")["requests"].sum())
    refused = int(summary.filter(pl.col("outcome") == "refused")["requests"].sum())
    errors = rows.num_rows - allowed - refused
    click.echo(f"{rows.num_rows} requests: {allowed} allowed, {refused} refused, {errors} errors")


@click.command("subject-access")
@click.option("--upn", required=True, help="The pupil's UPN (never printed or logged).")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New, empty directory for the export.",
)
@click.option("--user", default=None, help="Who is asking (default: the login name); audited.")
@click.option("--reference", default=None, help="The subject access request's reference; audited.")
def subject_access_command(upn: str, out_dir: Path, user: str | None, reference: str | None) -> None:
    """Export everything held about one pupil (role data_protection_officer). Needs
    ATTENDANCE_PSEUDONYMISATION_KEY to find the pupil's pseudonymised rows."""
    from access.pseudonymise import key_from_env
    from access.subject_access import subject_access

    result = subject_access(
        upn,
        out_dir,
        lake_uri=get_settings().lake_uri,
        key=key_from_env(),
        user=user or _default_user(),
        reference=reference,
    )
    for table, rows in sorted(result.rows_by_table.items()):
        click.echo(f"{table}: {rows} row(s)")
    click.echo(f"{result.total_rows} rows exported; manifest: {result.manifest}")


@click.group("access")
def access_group() -> None:
    """Roles and scopes, the pseudonymised zone, and the check of outgoing zones."""


@access_group.command("policy")
@click.option("--markdown", is_flag=True, help="Render the policy as Markdown (docs/access.md).")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to this file."
)
def access_policy(markdown: bool, out: Path | None) -> None:
    """Print the role table: who may read which zones, rows and purposes."""
    from access.render import policy_markdown, policy_text

    text = policy_markdown() if markdown else policy_text()
    if out is not None:
        out.write_text(text, encoding="utf-8")
        click.echo(f"written {out}", err=True)
    else:
        click.echo(text, nl=False)


@access_group.command("pseudonymise")
@click.option(
    "--since-version",
    type=int,
    default=None,
    help="Only refresh dates whose attendance_sessions files changed after this Delta version.",
)
@click.option("--incremental", is_flag=True, help="Refresh from the version recorded by the last run.")
def access_pseudonymise(since_version: int | None, incremental: bool) -> None:
    """Rebuild or refresh the pseudonymised zone. Needs ATTENDANCE_PSEUDONYMISATION_KEY (secret store)."""
    from access.pseudonymise import key_from_env, last_source_version, pseudonymise

    lake_uri = get_settings().lake_uri
    key = key_from_env()
    if incremental:
        if since_version is not None:
            raise UserFacingError("give --since-version or --incremental, not both")
        since_version = last_source_version(lake_uri)
    result = pseudonymise(lake_uri, key, since_version)
    click.echo(
        f"sessions: {result.session_rows} rows over {result.dates_refreshed} dates (source version "
        f"{result.sessions_source_version}); pupils: {result.pupil_rows} rows (source version "
        f"{result.pupils_source_version}); {result.seconds:.2f}s, {result.rows_per_second:,.0f} rows/s"
    )


@access_group.command("scan")
def access_scan() -> None:
    """Check la_aggregates and published for pupil columns, UPN-shaped text and unsuppressed cells."""
    from access.leakscan import scan_outputs

    findings = scan_outputs(get_settings().lake_uri)
    for f in findings:
        click.echo(f"{f.location}: {f.check}: {f.detail}")
    if findings:
        click.echo(f"{len(findings)} finding(s)", err=True)
        sys.exit(1)
    click.echo("no pupil columns, UPN-shaped text or unsuppressed cells in la_aggregates and published")


COMMANDS: list[click.Command | click.Group] = [query, audit_group, subject_access_command, access_group]
