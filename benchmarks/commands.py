"""``attendance bench ...``: benchmarks of the whole platform (docs/benchmarks.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from attendance.settings import get_settings


@click.group("bench")
def bench() -> None:
    """Benchmarks on realistic volumes (docs/benchmarks.md)."""


@bench.command("national")
@click.option("--schools", default=None, type=click.IntRange(min=10),
              help="Schools sending extracts [default: 21,292, the national day; 2000 for a quick run].")
@click.option("--workers", "workers_text", default="1,2,4", show_default=True,
              help="Worker process counts for the scale-out runs; the first is the reference run.")
@click.option("--out", default=Path("bench-results/national.json"), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Where the JSON report is written.")
@click.option("--keep", is_flag=True, help="Keep the topics, generated data and lakes (printed at the end).")
@click.option("--work-dir", "work_parent", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Parent folder of the run's data and lakes [default: the system temp folder].")
@click.option("--seed", default=1, show_default=True, help="Generator seed.")
@click.option("--fault-rate", default=0.005, show_default=True, type=click.FloatRange(0, 1),
              help="Share of extracts with one injected fault (quarantine work).")
@click.option("--amendments", default=0.05, show_default=True, type=float,
              help="Share of the previous day's marks re-sent, amended, in the measured day's extracts.")
@click.option("--stage-timeout", "stage_timeout_s", default=None, type=click.FloatRange(min=10),
              help="Seconds any one stage may take [default: 300 + 0.08 x schools].")
def national(schools: int | None, workers_text: str, out: Path, keep: bool, work_parent: Path | None, seed: int,
             fault_rate: float, amendments: float, stage_timeout_s: float | None) -> None:
    """One national school day end to end: produce, bare consume, pipeline, aggregate, publish, scale-out."""
    from benchmarks.national import NATIONAL_SCHOOLS, BenchOptions, format_table, parse_workers, run_national

    options = BenchOptions(
        schools=schools or NATIONAL_SCHOOLS, workers=parse_workers(workers_text), out=out, keep=keep,
        work_parent=work_parent, seed=seed, fault_rate=fault_rate, amendments=amendments,
        stage_timeout_s=stage_timeout_s, command="attendance " + " ".join(sys.argv[1:]),
    )
    report = run_national(options, get_settings(), echo=lambda line: click.echo(line, err=True))
    click.echo(format_table(report))
    click.echo(f"\nall figures: {out}")
    if not report["scale_out"]["all_equal"]:
        click.echo("error: the scale-out runs did not produce the same tables (see 'differences')", err=True)
        sys.exit(1)


COMMANDS: list[click.Command | click.Group] = [bench]
