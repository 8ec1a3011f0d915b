"""`attendance send`, `attendance generate`, `attendance schools load`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from attendance.settings import get_settings


@click.command("send")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--progress/--no-progress", default=True, help="Show a progress bar with pupils per second.")
def send_command(paths: tuple[Path, ...], progress: bool) -> None:
    """Publish extract files (.json / .json.gz, or folders of them) to the extracts topic."""
    from attendance.broker import bootstrap_servers
    from ingest.producer import send_files

    settings = get_settings()
    summary = send_files(paths, settings, bootstrap_servers(settings), progress=progress and sys.stderr.isatty())
    rate = summary.pupils_sent / summary.seconds if summary.seconds else 0.0
    click.echo(
        f"sent {summary.files_sent} extracts as {summary.messages_sent} messages: {summary.pupils_sent:,} pupil "
        f"records, {summary.marks_sent:,} marks, {summary.bytes_sent / 1e6:,.1f} MB in {summary.seconds:.1f}s "
        f"({rate:,.0f} pupil records/s) to {settings.topic_extracts}"
    )
    for file, reason in summary.refused:
        click.echo(f"refused {file}: {reason}", err=True)
    for file, error in summary.undelivered:
        click.echo(f"not delivered {file}: {error}", err=True)
    if not summary.ok:
        click.echo(f"{len(summary.refused)} file(s) refused, {len(summary.undelivered)} not delivered", err=True)
        sys.exit(1)


COMMANDS: list[click.Command] = [send_command]

from ingest.generate import GENERATE_COMMANDS  # noqa: E402
from ingest.register import REGISTER_COMMANDS  # noqa: E402

COMMANDS += REGISTER_COMMANDS + GENERATE_COMMANDS
