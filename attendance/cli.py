"""The one command line: ``attendance ...``.

Each area of the system keeps its commands next to its code (``<package>/commands.py``) and this module
gathers them, so a newcomer finds ``attendance send`` in ``ingest/commands.py``. Errors a user can cause
are reported as one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

import click

from attendance.settings import get_settings

#: Modules that contribute commands; each exposes ``COMMANDS``: a list of click commands or groups.
COMMAND_MODULES = (
    "ingest.commands",
    "streams.commands",
    "storage.commands",
    "official_stats.commands",
    "access.commands",
    "attendance.ops_commands",
    "attendance.demo",
    "benchmarks.commands",
)


class AttendanceGroup(click.Group):
    """Turns the project's expected errors into one clear line and exit code 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        from attendance.errors import UserFacingError

        try:
            return super().invoke(ctx)
        except UserFacingError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=AttendanceGroup)
@click.option("--log-level", default=None, help="Override ATTENDANCE_LOG_LEVEL.")
def main(log_level: str | None) -> None:
    """Daily school attendance data platform for England."""
    level = (log_level or get_settings().log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO


# --- kafka ---------------------------------------------------------------------------------------------

@main.group()
def kafka() -> None:
    """Run a real local Apache Kafka broker (KRaft) from Maven Central, no Docker."""


@kafka.command("start")
def kafka_start() -> None:
    """Provision (first time) and start the local broker; print its address."""
    from attendance import broker

    settings = get_settings()
    if settings.kafka_bootstrap:
        click.echo(f"ATTENDANCE_KAFKA_BOOTSTRAP is set ({settings.kafka_bootstrap}): using that cluster.")
        return
    try:
        info = broker.start(settings)
    except broker.BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Kafka {info.kafka_version} running at {info.bootstrap} (pid {info.pid}; log {info.log_file})")


@kafka.command("stop")
@click.option("--wipe", is_flag=True, help="Also delete the broker's data directory.")
def kafka_stop(wipe: bool) -> None:
    """Stop the broker that `kafka start` started (only that process)."""
    from attendance import broker

    stopped = broker.stop(get_settings(), wipe=wipe)
    click.echo("stopped" if stopped else "no local broker was running")


@kafka.command("status")
def kafka_status() -> None:
    """Say whether the local broker is running, and where."""
    from attendance import broker

    settings = get_settings()
    if settings.kafka_bootstrap:
        click.echo(f"using external cluster {settings.kafka_bootstrap}")
        return
    info = broker.is_running(settings.state_dir)
    if info is None:
        click.echo("not running")
        sys.exit(1)
    click.echo(json.dumps(info.__dict__, indent=2))


# --- topics and schema -----------------------------------------------------------------------------------

@main.group()
def topics() -> None:
    """Kafka topics of the feed."""


@topics.command("create")
def topics_create() -> None:
    """Create the extracts, opt-outs and dead-letter topics (idempotent)."""
    from attendance.topics import create_topics

    for name, outcome in create_topics(get_settings()).items():
        click.echo(f"{name}: {outcome}")


@main.group()
def schema() -> None:
    """The feed contract."""


@schema.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schema_export(directory: Path) -> None:
    """Write the contract's JSON Schemas to DIRECTORY."""
    from schemas.contract import json_schemas

    directory.mkdir(parents=True, exist_ok=True)
    for name, document in json_schemas().items():
        (directory / name).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        click.echo(directory / name)


def _register_area_commands() -> None:
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name or module_name.startswith(str(exc.name) + "."):
                continue  # that area has no commands yet
            raise
        for command in module.COMMANDS:
            main.add_command(command)


_register_area_commands()
