"""`attendance demo`: the whole flow on the embedded default (a local broker and a local Delta lake).

Each step is the same CLI a user would run, in a subprocess, so the demo shows the real commands.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from attendance.settings import get_settings
from official_stats.periods import school_days_ending


def _run(step: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    click.secho(f"\n$ attendance {' '.join(args)}", fg="cyan")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "attendance", *args], env=env, text=True, capture_output=True)
    output = (done.stdout + done.stderr).strip()
    if output:
        lines = output.splitlines()
        click.echo("\n".join(lines[:25] + ([f"... ({len(lines) - 25} more lines)"] if len(lines) > 25 else [])))
    click.echo(f"[{step}: {time.monotonic() - started:.1f}s, exit {done.returncode}]")
    return done


@click.command("demo")
@click.option("--schools", default=300, show_default=True)
@click.option("--days", default=5, show_default=True, help="School days (a week).")
@click.option("--data", "data_dir", default=Path("demo-data"), type=click.Path(path_type=Path), show_default=True)
@click.option("--keep-broker", is_flag=True, help="Leave the local broker running afterwards.")
def demo_command(schools: int, days: int, data_dir: Path, keep_broker: bool) -> None:
    """Run the whole flow end to end and print a summary."""
    from attendance import broker

    settings = get_settings()
    started = time.monotonic()
    env = dict(os.environ)
    started_broker = False
    if not settings.kafka_bootstrap:
        if broker.is_running(settings.state_dir) is None:
            click.echo("starting a local Kafka broker (first run downloads it from Maven Central)...")
            info = broker.start(settings)
            started_broker = True
        else:
            info = broker.is_running(settings.state_dir)
        click.echo(f"Kafka at {info.bootstrap}")
    failures: list[str] = []
    try:
        if data_dir.exists():
            shutil.rmtree(data_dir)
        lake = Path(settings.lake_uri)
        if lake.exists() and not settings.lake_uri.startswith("s3://"):
            shutil.rmtree(lake)  # the demo starts from an empty lake
        school_days = school_days_ending(dt.date.today(), days)
        end = school_days[-1]
        steps = [
            ("topics", ["topics", "create"]),
            ("generate", ["generate", "--out", str(data_dir), "--schools", str(schools), "--start-date",
                          school_days[0].isoformat(), "--days", str(days), "--fault-rate", "0.02",
                          "--workers", "2"]),
            ("register", ["schools", "load", str(data_dir / "register" / "edubasealldata.csv")]),
        ]
        for step, args in steps:
            done = _run(step, args, env)
            if done.returncode != 0 and step != "register":
                failures.append(step)
        extracts = data_dir / "extracts"
        first_urn = _an_urn(extracts / school_days[0].isoformat())
        half = max(1, days // 2)
        for day in school_days[:half]:
            _run("send", ["send", "--no-progress", str(extracts / day.isoformat())], env)
        _run("optout", ["optout", first_urn, "--by", "demo", "--reason", "school asked to opt out"], env)
        for day in school_days[half:]:
            _run("send", ["send", "--no-progress", str(extracts / day.isoformat())], env)
        for step, args in [
            ("worker", ["worker", "--until-drained"]),
            ("quarantine", ["quarantine", "report"]),
            ("aggregate", ["aggregate", "--full"]),
            ("publish", ["publish", "--release", end.isoformat(), "--out", str(data_dir / "published"), "--now"]),
            ("optouts", ["optouts", "list"]),
        ]:
            done = _run(step, args, env)
            if done.returncode != 0:
                failures.append(step)
        _summary(settings, first_urn, started, data_dir / "published")
    finally:
        if started_broker and not keep_broker:
            broker.stop(settings)
            click.echo("stopped the local broker the demo started")
    if failures:
        click.secho(f"steps that failed: {', '.join(failures)}", fg="red")
        sys.exit(1)


def _an_urn(folder: Path) -> str:
    names = sorted(p.name.split(".")[0] for p in folder.glob("*.json*"))
    return names[len(names) // 2]


def _summary(settings, opted_out_urn: str, started: float, published: Path) -> None:
    import polars as pl

    from storage.lake import read_table, storage_options
    from storage.tables import ATTENDANCE_SESSIONS, EXTRACTS, OPTOUT_AUDIT, PUPILS, QUARANTINE

    options = storage_options(settings)

    def count(contract) -> int:
        try:
            return read_table(contract, settings.lake_uri, storage_options=options).num_rows
        except Exception:  # noqa: BLE001 - a table the run did not create counts as empty
            return 0

    extracts = pl.from_arrow(read_table(EXTRACTS, settings.lake_uri, storage_options=options))
    by_status = dict(extracts.group_by("status").len().iter_rows()) if extracts.height else {}
    click.secho("\n=== summary ===", bold=True)
    click.echo(f"extracts: {by_status}")
    click.echo(f"accepted: {count(ATTENDANCE_SESSIONS):,} session marks, {count(PUPILS):,} pupils")
    click.echo(f"quarantined: {count(QUARANTINE):,} items (attendance quarantine report)")
    click.echo(f"dropped for opt-out (school {opted_out_urn}): {count(OPTOUT_AUDIT)} extract(s), count-level audit")
    click.echo(f"Delta lake: {Path(settings.lake_uri).resolve()}")
    click.echo(f"published EES files: {published.resolve()}")
    a_school = pl.from_arrow(read_table(EXTRACTS, settings.lake_uri, storage_options=options)
                             .select(["urn"])).filter(pl.col("urn") != opted_out_urn)["urn"].min()
    click.echo("try (each read is checked against the policy and audited):")
    click.echo('  attendance query --role inspection --purpose "regional trends" "SELECT geographic_level, '
               "region_name, la_name, education_phase, overall_absence_perc FROM stats_attendance_views "
               "WHERE time_frame = 'Year to date' LIMIT 10\"")
    click.echo('  attendance query --role local_authority --scope 373 --purpose "attendance support" '
               '"SELECT urn, COUNT(*) AS marks FROM attendance_sessions GROUP BY urn"')
    click.echo(f'  attendance query --role school --scope {a_school} --purpose "own pupils" '
               '"SELECT date, code, COUNT(*) AS marks FROM attendance_sessions GROUP BY date, code ORDER BY date"')
    click.echo(f"demo finished in {time.monotonic() - started:.0f}s")


COMMANDS = [demo_command]
