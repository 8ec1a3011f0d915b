"""The current state of the tables the sink stages into, resolved at read time (merge-on-read).

The sink commits every accepted row exactly once as it consumes, but not always into its final table:
amendments of stored school-days land in ``staged_sessions``, pupil records in ``staged_pupils`` and
extract states in ``staged_extracts`` (``storage.sink``). A *fold* later rewrites them into
``attendance_sessions``, ``pupils`` and ``extracts``; until then a reader that wants the current state reads
the stored table and its staging table together and resolves them here, with the fold's own rules:

- ``attendance_sessions``: per (urn, upn, date, session) the mark with the newest ``generated_at`` (on a tie
  the stored one);
- ``pupils``: per (urn, upn) the newest record (on a tie the stored one); ``current_since`` is when the run
  of records with the same characteristics that ends in it began (a newer record saying the same only moves
  the provenance), so that when folds run changes nothing;
- ``extracts``: per extract the row with the newest ``last_seen_at`` (on a tie the staged one), with the
  earliest ``first_seen_at`` of all.

The pupils fold writes what ``resolved_pupils`` computes; the sessions and extracts folds are MERGEs with
the same rules; the tests compare every resolution with a fold of the same rows: folding changes no
answer. Resolvers are pure functions over Polars lazy frames (no I/O); ``scan_current`` is the thin edge
that opens the Delta tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from storage import lake
from storage.tables import (
    ATTENDANCE_SESSIONS,
    EXTRACTS,
    PUPILS,
    STAGED_EXTRACTS,
    STAGED_PUPILS,
    STAGED_SESSIONS,
    TableContract,
)

#: Pupil columns whose change makes a new version of the pupil (``current_since`` moves).
PUPIL_CHARACTERISTICS = tuple(
    name for name in PUPILS.schema.names
    if name not in ("urn", "upn", "extract_id", "generated_at", "current_since")
)

_SESSION_KEY = list(ATTENDANCE_SESSIONS.key)
_PUPIL_KEY = list(PUPILS.key)


def current_sessions(stored: pl.LazyFrame, staged: pl.LazyFrame) -> pl.LazyFrame:
    """Per mark key, the row with the newest ``generated_at``; a stored row wins a tie."""
    newest_staged = staged.sort("generated_at").unique(subset=_SESSION_KEY, keep="last")
    staged_at = newest_staged.select(*_SESSION_KEY, pl.col("generated_at").alias("__staged_at"))
    stored_at = stored.select(*_SESSION_KEY, pl.col("generated_at").alias("__stored_at"))
    kept = (stored.join(staged_at, on=_SESSION_KEY, how="left")
            .filter(pl.col("__staged_at").is_null() | (pl.col("__staged_at") <= pl.col("generated_at")))
            .drop("__staged_at"))
    winners = (newest_staged.join(stored_at, on=_SESSION_KEY, how="left")
               .filter(pl.col("__stored_at").is_null() | (pl.col("generated_at") > pl.col("__stored_at")))
               .drop("__stored_at"))
    return pl.concat([kept, winners.select(ATTENDANCE_SESSIONS.schema.names)], how="vertical_relaxed")


def resolved_pupils(stored: pl.LazyFrame, staged: pl.LazyFrame) -> pl.LazyFrame:
    """The current row of every pupil that a staged record changes (newer than the stored row, or new):
    what a fold writes. Staged ``current_since`` is when the record was staged."""
    names = PUPILS.schema.names
    stored_side = stored.select(
        *_PUPIL_KEY, pl.col("generated_at").alias("__stored_at"),
        pl.coalesce("current_since", "generated_at").alias("__stored_since"),
        *[pl.col(name).alias(f"__stored_{name}") for name in PUPIL_CHARACTERISTICS])
    newer = (staged.join(stored_side, on=_PUPIL_KEY, how="left")
             .filter(pl.col("__stored_at").is_null() | (pl.col("generated_at") > pl.col("__stored_at")))
             # Rows staged before staging stamped current_since: from when the record was taken.
             .with_columns(pl.col("current_since").fill_null(pl.col("generated_at")),
                           pl.len().over(_PUPIL_KEY).alias("__records")))
    # One newer record (the usual case): a new version, unless it says what the stored row says.
    says_the_same = pl.col("__stored_at").is_not_null() & pl.all_horizontal(
        [pl.col(name).eq_missing(pl.col(f"__stored_{name}")) for name in PUPIL_CHARACTERISTICS])
    single = (newer.filter(pl.col("__records") == 1)
              .with_columns(pl.when(says_the_same).then(pl.col("__stored_since")).otherwise(pl.col("current_since"))
                            .alias("current_since"))
              .select(names))
    # Several: runs over the stored row and the records in generated_at order.
    several = newer.filter(pl.col("__records") > 1).select(names)
    history = pl.concat([
        stored.join(several.select(_PUPIL_KEY).unique(), on=_PUPIL_KEY, how="semi")
        .with_columns(pl.coalesce("current_since", "generated_at").alias("current_since"),
                      pl.lit(0, pl.Int8).alias("__staged")),
        several.with_columns(pl.lit(1, pl.Int8).alias("__staged")),
    ], how="vertical_relaxed").sort([*_PUPIL_KEY, "generated_at", "__staged", "current_since"])
    # Sorted by pupil, so neighbours are compared directly (windows per pupil cost a group-by each).
    same_pupil = pl.all_horizontal([pl.col(name) == pl.col(name).shift(1) for name in _PUPIL_KEY]).fill_null(False)
    differs = pl.any_horizontal([pl.col(name).ne_missing(pl.col(name).shift(1)) for name in PUPIL_CHARACTERISTICS])
    last_of_pupil = pl.all_horizontal([pl.col(name) == pl.col(name).shift(-1) for name in _PUPIL_KEY]
                                      ).fill_null(False).not_()
    runs = (history
            # A run begins at a pupil's first row and wherever the characteristics change; every run's first
            # row has a current_since, so filling forward never crosses into another pupil.
            .with_columns(pl.when(same_pupil.not_() | differs).then(pl.col("current_since")).forward_fill()
                          .alias("current_since"))
            .filter(last_of_pupil)
            .select(names))
    return pl.concat([single, runs], how="vertical_relaxed")


def current_pupils(stored: pl.LazyFrame, staged: pl.LazyFrame) -> pl.LazyFrame:
    """Every pupil's current row: the stored ones no staged record changes, and ``resolved_pupils``."""
    changed = resolved_pupils(stored, staged)
    return pl.concat([stored.join(changed.select(_PUPIL_KEY), on=_PUPIL_KEY, how="anti"), changed],
                     how="vertical_relaxed")


def current_extracts(stored: pl.LazyFrame, staged: pl.LazyFrame) -> pl.LazyFrame:
    """Per extract the row with the newest ``last_seen_at`` (a staged row wins a tie, a null loses), with
    the earliest ``first_seen_at`` of all its rows."""
    rows = pl.concat([stored.with_columns(pl.lit(0, pl.Int8).alias("__staged")),
                      staged.with_columns(pl.lit(1, pl.Int8).alias("__staged"))], how="vertical_relaxed")
    earliest = rows.group_by("extract_id").agg(pl.col("first_seen_at").min().alias("__first_seen_at"))
    return (rows.sort(["extract_id", "last_seen_at", "__staged"], nulls_last=False)
            .unique(subset=["extract_id"], keep="last", maintain_order=True)
            .join(earliest, on="extract_id", how="left")
            .with_columns(pl.col("__first_seen_at").alias("first_seen_at"))
            .select(EXTRACTS.schema.names))


#: Each table the sink stages into: its staging table and its resolver.
STAGED_INTO: dict[str, tuple[TableContract, Callable[[pl.LazyFrame, pl.LazyFrame], pl.LazyFrame]]] = {
    ATTENDANCE_SESSIONS.name: (STAGED_SESSIONS, current_sessions),
    PUPILS.name: (STAGED_PUPILS, current_pupils),
    EXTRACTS.name: (STAGED_EXTRACTS, current_extracts),
}


def version_label(contract: TableContract) -> str:
    return f"{contract.zone.value}/{contract.name}"


def _empty(contract: TableContract) -> pl.LazyFrame:
    frame = pl.from_arrow(contract.schema.empty_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()


def scan_current(contract: TableContract, lake_uri: str, storage_options: Mapping[str, str] | None = None,
                 stored: DeltaTable | None = None) -> tuple[pl.LazyFrame, dict[str, int]]:
    """A lazy frame of ``contract``'s current state, and the Delta version of every table it reads
    (``zone/name`` -> version; for audit). Tables the sink does not stage into are read as they are.
    Raises ``deltalake.exceptions.TableNotFoundError`` when neither the table nor its staging table exists."""
    options = dict(storage_options or {})
    if stored is None and contract.name not in STAGED_INTO:
        stored = DeltaTable(contract.path(lake_uri), storage_options=options)
    if stored is None:
        stored = lake.open_table(contract, lake_uri, options)
    versions = {version_label(contract): stored.version()} if stored is not None else {}
    frame = pl.scan_delta(stored) if stored is not None else _empty(contract)
    if contract.name not in STAGED_INTO:
        return frame, versions
    staging, resolve = STAGED_INTO[contract.name]
    staged = lake.open_table(staging, lake_uri, options)
    if staged is None:
        if stored is None:
            raise TableNotFoundError(f"no table {version_label(contract)} yet")
        return frame, versions
    versions[version_label(staging)] = staged.version()
    if not staged.file_uris():
        return frame, versions
    return resolve(frame, pl.scan_delta(staged).select(contract.schema.names)), versions


def read_current(contract: TableContract, lake_uri: str,
                 storage_options: Mapping[str, str] | None = None) -> pl.DataFrame:
    """``contract``'s current state (see ``scan_current``); an empty frame when the table does not exist."""
    try:
        frame, _ = scan_current(contract, lake_uri, storage_options)
    except TableNotFoundError:
        frame = _empty(contract)
    return frame.collect()
