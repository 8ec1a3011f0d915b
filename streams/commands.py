"""`attendance worker`, `rules`, `optout`, `optin`, `optouts list`, `quarantine report|replay`."""

from __future__ import annotations

import datetime as dt
import sys

import click

from attendance.errors import UserFacingError
from attendance.settings import get_settings


@click.command("worker")
@click.option("--until-drained", is_flag=True,
              help="Process everything currently in the topics, then exit (the daily run-once mode; staged rows "
                   "are left for the next fold: `attendance aggregate` folds first).")
@click.option("--loglevel", default="warning", show_default=True, help="Faust log level.")
def worker_command(until_drained: bool, loglevel: str) -> None:
    """Run the stream worker: validate, quarantine, honour opt-outs, write Delta exactly once."""
    from streams.app import run_worker

    sys.exit(run_worker(get_settings(), until_drained=until_drained, loglevel=loglevel))


def _urn(value: str) -> str:
    if not (len(value) == 6 and value.isdigit()):
        raise UserFacingError(f"URN must be 6 digits, got {value!r}")
    return value


def _publish(urn: str, status: str, by: str, reason: str | None, purge: bool, effective: str | None) -> None:
    from attendance.broker import bootstrap_servers
    from schemas.contract import OptOutEvent
    from streams.optouts import publish_event

    settings = get_settings()
    effective_at = dt.datetime.fromisoformat(effective) if effective else dt.datetime.now(dt.UTC)
    if effective_at.tzinfo is None:
        raise UserFacingError("--effective-at needs a UTC offset, e.g. 2026-11-23T09:00:00+00:00")
    event = OptOutEvent(urn=urn, status=status, effective_at=effective_at, recorded_by=by, reason=reason,
                        purge=purge)
    publish_event(bootstrap_servers(settings), settings.topic_optouts, event)
    click.echo(f"{urn}: {status} from {effective_at.isoformat()} (recorded by {by})")


@click.command("optout")
@click.argument("urn", callback=lambda ctx, p, v: _urn(v))
@click.option("--purge", is_flag=True, help="Also destroy everything already stored for the school.")
@click.option("--by", "by", default=lambda: get_settings().operator, show_default="$USER",
              help="Who recorded it.")
@click.option("--reason", default=None, help="Why (free text, kept in the opt-out record).")
@click.option("--effective-at", default=None, help="RFC 3339 time it takes effect (default: now).")
def optout_command(urn: str, purge: bool, by: str, reason: str | None, effective_at: str | None) -> None:
    """Opt a school out: from its effective time nothing of its pupils is stored."""
    _publish(urn, "opted_out", by, reason, purge, effective_at)
    if purge:
        from storage.destruction import purge_school
        from storage.lake import storage_options

        settings = get_settings()
        records = purge_school(urn, settings.lake_uri, storage_options(settings), requested_by=by,
                               reason=reason or "school opted out")
        for record in records:
            click.echo(f"purged {record.rows_deleted} rows, {record.files_removed} files from {record.table_name}")
        click.echo(f"verify with: attendance lake verify-destroyed --urn {urn}")


@click.command("optin")
@click.argument("urn", callback=lambda ctx, p, v: _urn(v))
@click.option("--by", "by", default=lambda: get_settings().operator, show_default="$USER")
@click.option("--reason", default=None)
@click.option("--effective-at", default=None, help="RFC 3339 time storage resumes (default: now).")
def optin_command(urn: str, by: str, reason: str | None, effective_at: str | None) -> None:
    """Opt a school back in: storage resumes from the effective time."""
    _publish(urn, "opted_in", by, reason, False, effective_at)


@click.group("optouts")
def optouts_group() -> None:
    """The register of school opt-outs (the compacted opt-outs topic)."""


@optouts_group.command("list")
def optouts_list() -> None:
    """Every school's latest opt-out state."""
    from attendance.broker import bootstrap_servers
    from streams.optouts import is_opted_out, read_optouts

    settings = get_settings()
    states = read_optouts(bootstrap_servers(settings), settings.topic_optouts)
    now = dt.datetime.now(dt.UTC)
    click.echo(f"{'urn':<8} {'status':<10} {'in force':<9} {'effective_at':<26} {'purge':<6} recorded_by")
    for state in sorted(states.values(), key=lambda s: s.urn):
        click.echo(f"{state.urn:<8} {state.status:<10} {'yes' if is_opted_out(state, now) else 'no':<9} "
                   f"{state.effective_at.isoformat():<26} {str(state.purge).lower():<6} {state.recorded_by}")
    click.echo(f"{len(states)} school(s)")


COMMANDS: list[click.Command] = [worker_command, optout_command, optin_command, optouts_group]

from streams.quarantine import QUARANTINE_COMMANDS  # noqa: E402
from streams.rules import RULES_COMMANDS  # noqa: E402

COMMANDS += RULES_COMMANDS + QUARANTINE_COMMANDS
