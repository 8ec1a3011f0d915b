"""Routine upkeep of every Delta table: compact small files (pupils: Z-ordered by URN), checkpoint, expire
old log, vacuum.

Safe while the sink writes: compaction commits per partition and only conflicts with writes to the same
files; a conflicting compaction is retried a few times and then skipped for this run (never forced).
Vacuum only deletes files removed from the table more than ``retention_hours`` ago (never 0 here: readers
and writers of older snapshots must find their files; zero-retention vacuum is for destruction only, see
``storage.destruction``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from attendance.errors import UserFacingError
from storage import lake
from storage.tables import TABLES, TableContract

log = logging.getLogger(__name__)

DEFAULT_RETENTION_HOURS = 168  # a week: delta-rs' default deletedFileRetentionDuration
COMPACTION_ATTEMPTS = 4
#: Tables compacted by Z-order on these columns rather than by bin-packing: the pupils fold works in URN
#: ranges and relies on each file holding URNs of one range (storage.sink.DeltaSink._fold_pupils).
CLUSTER_BY: dict[str, list[str]] = {"pupils": ["urn"]}


@dataclass(frozen=True)
class TableMaintenance:
    table: str
    files_before: int
    files_after: int
    files_compacted_away: int  # files removed by compaction (merged into fewer, larger files)
    compaction_skipped: str | None  # why compaction was skipped this run, if it was
    checkpoint_version: int
    files_vacuumed: int


@dataclass(frozen=True)
class MaintenanceReport:
    tables: list[TableMaintenance] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # contracts whose table does not exist yet

    def lines(self) -> list[str]:
        out = [
            f"{t.table}: files {t.files_before} -> {t.files_after}"
            f" (compaction {'skipped: ' + t.compaction_skipped if t.compaction_skipped else 'done'}),"
            f" checkpoint at v{t.checkpoint_version}, vacuumed {t.files_vacuumed} file(s)"
            for t in self.tables
        ]
        out += [f"{name}: no table yet" for name in self.missing]
        return out


def maintain(lake_uri: str, storage_options: Mapping[str, str] | None = None,
             retention_hours: int = DEFAULT_RETENTION_HOURS,
             tables: Iterable[TableContract] | None = None) -> MaintenanceReport:
    """Compact, checkpoint, expire the log beyond ``delta.logRetentionDuration`` and vacuum every table."""
    if retention_hours < 1:
        raise UserFacingError(
            f"retention must be at least 1 hour for routine maintenance (got {retention_hours}); "
            "zero-retention vacuum is only done by `attendance lake purge` and `retention apply`")
    report = MaintenanceReport()
    for contract in tables if tables is not None else list(TABLES.values()):
        delta = lake.open_table(contract, lake_uri, storage_options)
        if delta is None:
            report.missing.append(contract.name)
            continue
        files_before = len(delta.file_uris())
        removed, skipped = _compact(delta, contract)
        delta.update_incremental()
        delta.create_checkpoint()
        delta.cleanup_metadata()
        vacuumed = delta.vacuum(retention_hours=retention_hours, dry_run=False,
                                enforce_retention_duration=retention_hours >= DEFAULT_RETENTION_HOURS)
        delta.update_incremental()
        report.tables.append(TableMaintenance(
            table=contract.name, files_before=files_before, files_after=len(delta.file_uris()),
            files_compacted_away=removed, compaction_skipped=skipped, checkpoint_version=delta.version(),
            files_vacuumed=len(vacuumed),
        ))
    return report


def _compact(delta: DeltaTable, contract: TableContract) -> tuple[int, str | None]:
    """Compact, retrying on a concurrent-write conflict; after the last attempt, skip (never force)."""
    for attempt in range(1, COMPACTION_ATTEMPTS + 1):
        try:
            # One commit per partition: a conflict then only costs that partition's work.
            interval = timedelta(0) if contract.partition_by else None
            if contract.name in CLUSTER_BY:
                metrics = delta.optimize.z_order(CLUSTER_BY[contract.name], min_commit_interval=interval,
                                                  writer_properties=lake.WRITER_PROPERTIES)
            else:
                metrics = delta.optimize.compact(min_commit_interval=interval,
                                                 writer_properties=lake.WRITER_PROPERTIES)
            return int(metrics.get("numFilesRemoved", 0)), None
        except CommitFailedError as exc:
            log.info("%s: compaction conflicted with a concurrent write (attempt %d): %s",
                     contract.name, attempt, str(exc).splitlines()[0])
            delta.update_incremental()
            time.sleep(random.uniform(0, 0.2 * 2 ** attempt))
    return 0, f"conflicted with concurrent writes {COMPACTION_ATTEMPTS} times; next run will retry"
