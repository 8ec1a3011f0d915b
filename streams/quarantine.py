"""`attendance quarantine report` and `attendance quarantine replay`.

Replay re-publishes quarantined messages to the extracts topic after a rule or register fix: the message
bytes stored with a message-level rejection, or, for pupil- and mark-level rejections, the original message
re-read from Kafka by its offset (while the topic still retains it). Re-judging is harmless for anything
already accepted: every table is merged on its natural key and the newest ``generated_at`` wins, so a
re-sent mark with the same ``generated_at`` changes nothing.
"""

from __future__ import annotations

import datetime as dt

import click
import polars as pl

from attendance.errors import UserFacingError
from attendance.settings import Settings, get_settings
from storage.tables import QUARANTINE


def load_quarantine(settings: Settings, date: dt.date | None, urn: str | None) -> pl.DataFrame:
    from storage.lake import read_table, storage_options

    try:
        table = read_table(QUARANTINE, settings.lake_uri, storage_options=storage_options(settings))
    except Exception as exc:  # noqa: BLE001 - a missing table is a user-facing condition here
        raise UserFacingError(f"no quarantine table under {settings.lake_uri}: has a worker run? ({exc})") from exc
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if date is not None:
        frame = frame.filter(pl.col("extract_date") == date)
    if urn is not None:
        frame = frame.filter(pl.col("urn") == urn)
    return frame


def summarise(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Counts by reason, and by school and reason (pure: what the report prints)."""
    by_reason = frame.group_by("reason_code", "severity").agg(
        pl.len().alias("rejections"), pl.col("urn").n_unique().alias("schools")).sort("rejections", descending=True)
    by_school = frame.group_by("urn", "reason_code").agg(
        pl.len().alias("rejections"), pl.col("extract_id").n_unique().alias("extracts")).sort(
        ["urn", "rejections"], descending=[False, True])
    return by_reason, by_school


@click.group("quarantine")
def quarantine_group() -> None:
    """What was rejected, and why."""


@quarantine_group.command("report")
@click.option("--date", "date_", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Extract date.")
@click.option("--urn", default=None, help="One school.")
def report_command(date_: dt.datetime | None, urn: str | None) -> None:
    """Summarise quarantined messages, pupils and marks by reason and school."""
    frame = load_quarantine(get_settings(), date_.date() if date_ else None, urn)
    by_reason, by_school = summarise(frame)
    with pl.Config(tbl_rows=60, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        click.echo(f"{frame.height} quarantined item(s)")
        click.echo(by_reason)
        click.echo(by_school.head(200))


@quarantine_group.command("replay")
@click.option("--reason", "reasons", multiple=True, help="Only these reason codes (repeatable).")
@click.option("--urn", default=None, help="Only this school.")
@click.option("--dry-run", is_flag=True, help="Say what would be re-submitted.")
def replay_command(reasons: tuple[str, ...], urn: str | None, dry_run: bool) -> None:
    """Re-submit quarantined messages (after a rule or register fix) without duplicating anything."""
    from attendance.broker import bootstrap_servers

    settings = get_settings()
    frame = load_quarantine(settings, None, urn).filter(pl.col("replayed_at").is_null())
    if reasons:
        frame = frame.filter(pl.col("reason_code").is_in(list(reasons)))
    messages = frame.select("topic", "partition", "offset", "urn", "raw_message").unique(
        ["topic", "partition", "offset"]).sort("topic", "partition", "offset")
    click.echo(f"{messages.height} message(s) to re-submit")
    if dry_run or messages.height == 0:
        return
    sent = replay(settings, bootstrap_servers(settings), messages)
    _mark_replayed(settings, messages)
    click.echo(f"re-submitted {sent} message(s) to {settings.topic_extracts}")


def replay(settings: Settings, bootstrap: str, messages: pl.DataFrame) -> int:
    from kafka import KafkaConsumer, TopicPartition

    from ingest.producer import make_producer

    producer = make_producer(bootstrap, settings)
    consumer = None
    sent = 0
    try:
        for row in messages.iter_rows(named=True):
            value = row["raw_message"]
            key = row["urn"].encode() if row["urn"] else None
            if value is None:
                if consumer is None:
                    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
                tp = TopicPartition(row["topic"], row["partition"])
                consumer.assign([tp])
                consumer.seek(tp, row["offset"])
                records = consumer.poll(timeout_ms=5000, max_records=1).get(tp, [])
                if not records or records[0].offset != row["offset"]:
                    raise UserFacingError(f"message {row['topic']}/{row['partition']}/{row['offset']} is no longer "
                                          "retained by Kafka; ask the contractor to re-send the extract")
                value, key = records[0].value, records[0].key
            producer.send(settings.topic_extracts, key=key, value=value).get(timeout=settings.delivery_timeout_s)
            sent += 1
    finally:
        producer.close(timeout=5)
        if consumer is not None:
            consumer.close()
    return sent


def _mark_replayed(settings: Settings, messages: pl.DataFrame) -> None:
    from deltalake import DeltaTable

    from storage.lake import storage_options

    table = DeltaTable(QUARANTINE.path(settings.lake_uri), storage_options=storage_options(settings))
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    for (topic, partition), group in messages.group_by("topic", "partition"):
        offsets = ", ".join(str(o) for o in group["offset"].to_list())
        table.update(predicate=f"topic = '{topic}' AND partition = {partition} AND offset IN ({offsets}) "
                               "AND replayed_at IS NULL",
                     updates={"replayed_at": f"CAST('{now}' AS TIMESTAMP)"})


QUARANTINE_COMMANDS: list[click.Command] = [quarantine_group]
