"""``attendance lake ...``: maintenance, destruction (opt-out purge, retention) and the data dictionary."""

from __future__ import annotations

import getpass
import sys
from datetime import date
from pathlib import Path

import click

from attendance.errors import UserFacingError
from attendance.settings import get_settings
from storage.tables import TABLES, TableContract, Zone

DICTIONARY_PATH = Path("docs/tables.md")


def _lake() -> tuple[str, dict[str, str]]:
    from storage.lake import storage_options

    settings = get_settings()
    return settings.lake_uri, storage_options(settings)


@click.group()
def lake() -> None:
    """The Delta lake: maintenance, destruction of pupil-level data, data dictionary."""


@lake.command("maintain")
@click.option("--retention-hours", type=int, default=168, show_default=True,
              help="Vacuum files removed more than this long ago (at least 1).")
def maintain_command(retention_hours: int) -> None:
    """Compact small files, checkpoint, expire old log entries and vacuum every table."""
    from storage.maintenance import maintain

    lake_uri, options = _lake()
    for line in maintain(lake_uri, options, retention_hours=retention_hours).lines():
        click.echo(line)


@lake.command("fold")
def fold_command() -> None:
    """MERGE staged amendments and pupil records into attendance_sessions and pupils now (workers and
    `attendance aggregate` also fold by themselves)."""
    from storage.sink import DeltaSink

    lake_uri, options = _lake()
    result = DeltaSink(lake_uri, options).fold()
    for name, count in (("attendance_sessions", result.sessions), ("pupils", result.pupils)):
        click.echo(f"{name}: {count.staged:,} staged rows read, {count.changed:,} rows inserted or updated, "
                   f"{count.removed:,} removed from staging")
    click.echo(f"fold took {result.seconds:.1f}s ({result.conflicts} commit conflicts retried)")


@lake.command("purge")
@click.option("--urn", required=True, help="The school whose pupil-level data is destroyed.")
@click.option("--by", "requested_by", default=None, help="Who asked (default: the current user).")
@click.option("--reason", default="school opted out", show_default=True, help="Why (for destruction_log).")
def purge_command(urn: str, requested_by: str | None, reason: str) -> None:
    """Delete a school's rows from every pupil-level table and physically remove their files."""
    from storage.destruction import purge_school, verify_destroyed

    lake_uri, options = _lake()
    who = requested_by or getpass.getuser()
    for record in purge_school(urn, lake_uri, options, requested_by=who, reason=reason):
        click.echo(f"{record.table_name}: {record.rows_deleted} row(s) deleted, {record.files_removed} "
                   f"file(s) removed, v{record.version_before} -> v{record.version_after}")
    result = verify_destroyed(urn, lake_uri, options)
    click.echo("verified: nothing of the school remains" if result.destroyed
               else "NOT yet destroyed: run `attendance lake verify-destroyed` for details")


@lake.group("retention")
def retention() -> None:
    """The retention schedule for pupil-level data."""


@retention.command("apply")
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None, help="Default: today.")
@click.option("--years", type=int, default=None,
              help="Years kept after the end (31 August) of the data's academic year, for every table. "
                   "Default: per table (storage.destruction.RETENTION_YEARS_BY_TABLE).")
def retention_apply(today: object, years: int | None) -> None:
    """Destroy pupil-level data whose retention period has ended."""
    from storage.destruction import apply_retention

    lake_uri, options = _lake()
    day = today.date() if today is not None else date.today()  # type: ignore[attr-defined]
    for record in apply_retention(lake_uri, day, years, options):
        click.echo(f"{record.table_name}: {record.rows_deleted} row(s) deleted where {record.predicate}; "
                   f"{record.files_removed} file(s) removed")


@lake.command("verify-destroyed")
@click.option("--urn", required=True)
def verify_destroyed_command(urn: str) -> None:
    """Check that no row and no Parquet file of the school remains; exit 1 if anything does."""
    from storage.destruction import verify_destroyed

    lake_uri, options = _lake()
    result = verify_destroyed(urn, lake_uri, options)
    for table, rows in sorted(result.rows_remaining.items()):
        click.echo(f"{table}: {rows} row(s) in the current version")
    for path in result.files_remaining:
        click.echo(f"file still holding the school's rows: {path}")
    click.echo(f"{result.files_scanned} Parquet file(s) read; {result.log_files_mentioning_urn} log entries "
               "name the URN (statistics/predicates, no pupil data)")
    for table in result.tables_without_urn:
        click.echo(f"{table}: pupil-level but has no urn column: not checked")
    if not result.destroyed:
        click.echo("NOT destroyed")
        sys.exit(1)
    click.echo("destroyed")


@lake.command("dictionary")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=DICTIONARY_PATH,
              show_default=True)
@click.option("--check", is_flag=True, help="Exit 1 if the file differs from what would be generated.")
def dictionary_command(output: Path, check: bool) -> None:
    """Regenerate the analysts' data dictionary from storage.tables."""
    text = render_dictionary()
    if check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            raise UserFacingError(f"{output} is out of date: run `attendance lake dictionary`")
        click.echo(f"{output} is up to date")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}")


COMMANDS: list[click.Command | click.Group] = [lake]


# --- data dictionary ---------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_section(contract: TableContract) -> list[str]:
    from storage.lake import table_configuration

    stats = table_configuration(contract).get("delta.dataSkippingStatsColumns")
    lines = [
        f"### `{contract.name}`",
        "",
        contract.purpose,
        "",
        f"- Path: `<lake>/{contract.zone.value}/{contract.name}`",
        f"- Key (one row per): {', '.join(f'`{k}`' for k in contract.key)}",
        f"- Partitioned by: {', '.join(f'`{p}`' for p in contract.partition_by) or 'not partitioned'}",
        f"- Pupil-level: {'yes: purged on opt-out, subject to retention' if contract.pupil_level else 'no'}",
    ]
    if stats is not None:
        columns = ", ".join(f"`{name}`" for name in stats.split(","))
        lines.append(f"- Column statistics kept in the Delta log only for: {columns}")
    lines += ["", "| Column | Type | Required | Meaning |", "|---|---|---|---|"]
    for field in contract.schema:
        doc = (field.metadata or {}).get(b"doc", b"").decode()
        required = "" if field.nullable else "yes"
        lines.append(f"| `{field.name}` | {field.type} | {required} | {_cell(doc)} |")
    return lines + [""]


def render_dictionary() -> str:
    """docs/tables.md: the tables (from storage.tables) followed by how they are written and destroyed."""
    from storage.lake import load_all_contracts

    load_all_contracts()
    lines = [
        "# Data dictionary: the Delta tables",
        "",
        "<!-- Generated by `attendance lake dictionary` from storage/tables.py and storage/commands.py: "
        "edit those, not this file. -->",
        "",
        "Every table lives at `<lake_uri>/<zone>/<table>` (`ATTENDANCE_LAKE_URI`, a path or `s3://` URI). "
        "Each zone is a separate storage root so that access can be granted per zone on the storage itself.",
        "",
        "| Zone | Tables |",
        "|---|---|",
    ]
    for zone in Zone:
        names = [f"`{c.name}`" for c in TABLES.values() if c.zone == zone]
        lines.append(f"| `{zone.value}` | {', '.join(names) or '(none yet)'} |")
    lines += ["", "## Tables", ""]
    for contract in sorted(TABLES.values(), key=lambda c: (list(Zone).index(c.zone), c.name)):
        lines += _table_section(contract)
    return "\n".join(lines) + "\n" + PROSE


PROSE = """\
## How rows get in: exactly once

The stream worker consumes extract messages from Kafka in batches and hands each batch to the Delta sink
(`storage/sink.py`, `DeltaSink.write_batch`), with the last Kafka offset it processed for every
(topic, partition) in the batch. The design follows delta-io/kafka-delta-ingest: **the Kafka offsets are
stored in the Delta log itself**, in the same commit as the data, as `txn` actions
(`appId = <prefix>-<topic>-<partition>`, `version = offset`).

- The **offsets table is `attendance_sessions`**: every batch ends with one commit to it that carries the
  batch's offsets, even when the batch has no session rows (a commit with no data files).
- The other tables of a batch (appends to `staged_pupils` and `staged_extracts`, `quarantine`,
  `optout_audit`) are written first, with operations that are idempotent (staged rows fold newest-wins, or
  insert-if-absent on the key), and the sessions+offsets commit comes **last**: an offset only moves once
  everything of its batch is durable.
- Before committing, the sink reads the stored offset of each (topic, partition): if Delta already holds
  an offset >= the batch's, the batch is a replay and is skipped (delta-rs itself accepts a lower version:
  the writer must check).
- A worker resumes each partition at `DeltaSink.committed_offset(topic, partition) + 1`, never at Kafka's
  own committed offset (which may run ahead of what is durable).
- A crash before the last commit: the batch is consumed again and every write is replayed harmlessly. A
  crash after it: the replay is skipped.
- Two workers on different partitions write at the same time: appends never conflict; MERGEs into the
  same day can, and are retried with jittered backoff (metrics `attendance_delta_commit_conflicts_total`,
  `attendance_delta_commit_retries_total`). Two workers that both believe they own a partition (a zombie
  after a rebalance) commit the same `appId`, which delta-rs never lets both commit concurrently: the loser
  retries and then finds its offsets already stored.
- Extract messages must be keyed by URN (a school's messages in one partition): that is what makes a
  school's rows the business of one writer at a time.

On S3 the commit protocol relies on conditional writes (put-if-absent): the sink sets
`aws_conditional_put=etag` and never `AWS_S3_ALLOW_UNSAFE_RENAME` (see `storage/lake.py`).

## Amendments: the newest extract wins

Schools amend registers for days after the fact, and send an extract twice a day. `attendance_sessions`
keeps **one row per (urn, upn, date, session): the mark from the extract with the latest `generated_at`**.

- An amendment (a later extract) replaces the mark; `extract_id`, `generated_at` and `ingested_at` move
  with it.
- An older extract arriving late never overwrites a newer mark (the MERGE only updates when
  `s.generated_at > t.generated_at`).
- Within one batch, the newest row per key is kept before writing.
- Rows for a school-day the table does not hold yet are appended; rows for a school-day it holds are
  MERGEd. The result is the same; appending spares a scan of the day's partition.
- `pupils`: the same rule per (urn, upn). `current_since` moves only when a characteristic changes: it is
  when the first record of the current run of records with these characteristics was staged; a newer
  extract that says the same only moves `extract_id` and `generated_at`.
- `extracts`: one row per extract, replaced by the state with the latest `last_seen_at`; `first_seen_at`
  keeps the earliest value. Batches stage extract rows in `staged_extracts` (a MERGE per batch cost a
  national day 14 s of its batches' writes).
- `quarantine` and `optout_audit` rows are inserted once per key; replays add nothing.

delta-rs rewrites every Parquet file that holds an amended row (copy-on-write; it cannot write deletion
vectors: delta-io/delta-rs#4512), so amendments of earlier days cost more than new days' rows.

## Reading before a fold: merge-on-read

Amendments of stored school-days, pupil records and extract states are committed to `staged_sessions`,
`staged_pupils` and `staged_extracts` (exactly once, with their batch) and rewritten into their tables by a
*fold*: when a continuously running worker is idle, every `ATTENDANCE_FOLD_INTERVAL_S`, when staging passes
`ATTENDANCE_FOLD_MAX_STAGED_ROWS`, by `attendance lake fold`, and first thing in `attendance aggregate`,
`attendance access pseudonymise` and `attendance dq report`. A run-once worker (`--until-drained`) does not fold.

Between folds the tables' current state is the table and its staging table together, resolved with the
fold's own rules (`storage/current.py`): `attendance query` reads `attendance_sessions`, `pupils` and
`extracts` that way (the audit records both tables' versions), so every committed row is visible at once.
A reader that opens the Delta table directly (Polars, DuckDB, Spark) sees it as of the last fold, plus
`staged_*` beside it; `storage.current.read_current(contract, lake_uri)` gives the current state in
Python. Tests compare the resolution with a fold of the same rows: folding changes no answer.

## Destruction of pupil-level data

Pupil-level tables (marked above) are destroyed in two ways, both with `attendance lake ...`:

- **Opt-out purge** (`lake purge --urn URN --by WHO --reason TEXT`): deletes the school's rows from every
  pupil-level table, staging tables first: a fold writes only rows whose school is still staged, so a fold
  running beside the purge cannot write the school's staged rows back (one narrow window is left: a school
  with only staged pupil records, purged in the instant between a fold's look at staging and its commit;
  `lake verify-destroyed` shows it, and purging again removes it).
- **Retention** (`lake retention apply`): deletes rows whose retention has ended: data of an academic year
  (1 September to 31 August) is kept until 31 August N years later, and destroyed from the next day.
  N is set per table (`storage/destruction.py`: sessions and pupils 3, quarantine 1, placeholders until
  the retention schedule is agreed). Rows are dated by `date` (sessions), `generated_at` (pupils: re-dated
  by every extract that carries the pupil, so a pupil on roll is never destroyed) and `quarantined_at`
  (quarantine); other pupil-level tables by the first of `date`, `academic_year_start`, `generated_at`
  they have.

Both cover every pupil-level table, including those other packages declare (statistics, pseudonymised).

A Delta `DELETE` only writes a new version; the old Parquet files would still be readable by time travel.
So each destruction is followed by a **vacuum with zero retention**: the files that held the rows are
physically deleted. Earlier versions still load, but reading them fails: the data is gone. Files that no
version references (left by a write that failed) are removed too once older than an hour.

Every destruction writes one `destruction_log` row per table: what (predicate), why, rows deleted, files
removed, Delta versions before and after, who asked, when.

`lake verify-destroyed --urn URN` is the proof: it queries the current version of every pupil-level table
**and reads the `urn` column of every Parquet file under each table directory**, referenced or not, and
exits 1 if any row or file of the school remains.

Not reachable by a URN purge: `quarantine` rows of messages that could not be read far enough to know
their school (`urn` empty); their raw bytes go with the quarantine retention.

### What the Delta log keeps

The `_delta_log` (JSON commits and Parquet checkpoints) is not touched by vacuum. After a purge it still
holds, for the removed files: their paths (`date=YYYY-MM-DD/part-…parquet`, no identifier), partition
values (dates), row counts, and **column statistics (min/max/null count)**, plus each operation's predicate
(`urn = '…'`, `t.urn IN (…)`). delta-rs writes min/max statistics for the first 32 columns by default,
which would put UPNs, dates of birth and characteristics of the first and last pupil of every file into
the log. Pupil-level tables are therefore created with `delta.dataSkippingStatsColumns` restricted to
school, time and provenance columns (listed per table above): **the log holds URNs, dates and counts,
never a pupil's value** (a unit test checks that no UPN appears in the log). Old log entries are deleted
by `lake maintain` (`cleanup_metadata`, after a checkpoint) once older than `delta.logRetentionDuration`
(30 days).

## Maintenance

`attendance lake maintain` compacts small files (one commit per partition; a compaction that conflicts
with the sink is retried, then skipped until the next run), writes a checkpoint, expires log entries older
than 30 days and vacuums files removed more than a week ago (`--retention-hours`, at least 1: readers of
recent versions must find their files). It is safe while the sink writes.
"""
