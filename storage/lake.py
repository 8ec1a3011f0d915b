"""Thin typed helpers around deltalake: storage options, opening, creating and reading contract tables.

Everything that touches the lake goes through a ``TableContract`` (``storage.tables``) so that a table's
path, schema, partitioning and configuration are decided in one place.

Concurrency on S3
-----------------
Delta's commit protocol needs an atomic "create the next ``_delta_log/NNN.json`` only if it does not
exist". Local disks, Azure and GCS give that natively. On S3, delta-rs used to need a DynamoDB locking
provider (or ``AWS_S3_ALLOW_UNSAFE_RENAME=true``, which gives it up and is only safe with ONE writer).
Since delta-rs 0.23 it commits with S3 conditional writes (put-if-absent) instead
(delta-io/delta-rs PR #3091 "make put-if-absent default for S3 stores"), delta-rs 1.x dropped the
DynamoDB log store altogether (delta-io/delta-rs issue #4464, discussion #4482), and for S3-compatible
stores (MinIO, R2, moto) the delta-rs docs ask for ``aws_conditional_put="etag"`` in the storage options
("this provides safe concurrency": docs/integrations/object-storage/s3-like.md). We always set it
explicitly, so that a change of library default cannot silently turn it off, and we never set
``AWS_S3_ALLOW_UNSAFE_RENAME``: this project runs several sink processes against one table.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import ColumnProperties, DeltaTable, WriterProperties
from deltalake.exceptions import TableNotFoundError

from storage.tables import TableContract

if TYPE_CHECKING:
    from attendance.settings import Settings

#: Columns whose min/max statistics may be written to the Delta log of a pupil-level table. The log
#: (``_delta_log/*.json`` and checkpoints) is kept for ``delta.logRetentionDuration`` and is NOT removed by
#: vacuum, so per-file min/max of a UPN, a date of birth or a characteristic would outlive a purge. Only
#: school, time and provenance columns get statistics (enough for partition/URN pruning and for the MERGE
#: conflict checker); see docs/tables.md "What the Delta log keeps".
NON_PERSONAL_STATS_COLUMNS: frozenset[str] = frozenset({
    "urn", "date", "session", "extract_id", "generated_at", "ingested_at", "current_since",
    "extract_date", "chunk_index", "topic", "partition", "offset", "reason_code", "severity",
    "quarantined_at", "replayed_at",
})

#: Parquet settings for what the pipeline writes in bulk (sink appends, folds, compaction, purges): ZSTD at
#: level 1 writes faster than delta-rs's default Snappy and a third of the bytes (1.5 million session rows:
#: 0.41 s and 3.3 MB against 0.50 s and 10.3 MB on this machine), and reads as fast. UPNs are (nearly)
#: unique per file, so a dictionary only costs time before the writer gives it up: without it the same
#: rows take 0.40 s and 2.4 MB (760,000 pupil records 0.29 -> 0.24 s).
WRITER_PROPERTIES = WriterProperties(compression="ZSTD", compression_level=1,
                                     column_properties={"upn": ColumnProperties(dictionary_enabled=False)})

#: How long the Delta log keeps old commits (and so the file paths, row counts and URN statistics in them).
LOG_RETENTION = "interval 30 days"


def is_s3_uri(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def storage_options(settings: Settings | None = None, lake_uri: str | None = None,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """deltalake ``storage_options`` for the lake: ``{}`` for a local path; endpoint, region, credentials
    (from the usual ``AWS_*`` environment variables) and safe-concurrency settings for ``s3://``."""
    if lake_uri is None:
        if settings is None:
            from attendance.settings import get_settings

            settings = get_settings()
        lake_uri = settings.lake_uri
    if not is_s3_uri(lake_uri):
        return {}
    env = os.environ if environ is None else environ
    options: dict[str, str] = {
        "AWS_REGION": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "eu-west-2",
        # Atomic put-if-absent of the next commit file: safe concurrent writers without a lock table.
        "aws_conditional_put": "etag",
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        if env.get(name):
            options[name] = env[name]
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        options["AWS_ALLOW_HTTP"] = "true" if endpoint.startswith("http://") else "false"
        # Path-style addressing: MinIO/moto style endpoints do not resolve bucket subdomains.
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    return options


def table_configuration(contract: TableContract) -> dict[str, str | None]:
    """Delta table properties for a contract (statistics columns restricted on pupil-level tables)."""
    config: dict[str, str | None] = {"delta.logRetentionDuration": LOG_RETENTION}
    if contract.pupil_level:
        stats = [name for name in contract.schema.names if name in NON_PERSONAL_STATS_COLUMNS]
        config["delta.dataSkippingStatsColumns"] = ",".join(stats)
    return config


def open_table(contract: TableContract, lake_uri: str,
               storage_options: Mapping[str, str] | None = None) -> DeltaTable | None:
    """The contract's Delta table at its latest version, or None when it does not exist yet."""
    try:
        return DeltaTable(contract.path(lake_uri), storage_options=dict(storage_options or {}))
    except TableNotFoundError:
        return None


def ensure_table(contract: TableContract, lake_uri: str,
                 storage_options: Mapping[str, str] | None = None) -> DeltaTable:
    """Open the table, creating it empty (contract schema, partitioning, properties) if missing.

    Idempotent, and safe when two processes race: creation is the commit of version 0, which only one
    of them can write (put-if-absent); the loser's error is swallowed and it opens the winner's table.
    """
    existing = open_table(contract, lake_uri, storage_options)
    if existing is not None:
        return existing
    try:
        return DeltaTable.create(
            contract.path(lake_uri), contract.schema, mode="ignore",
            partition_by=list(contract.partition_by) or None, name=contract.name,
            description=contract.purpose, configuration=table_configuration(contract),
            storage_options=dict(storage_options or {}),
        )
    except Exception:
        table = open_table(contract, lake_uri, storage_options)
        if table is None:
            raise
        return table


def read_table(contract: TableContract, lake_uri: str, filter: Any = None,
               columns: list[str] | None = None, storage_options: Mapping[str, str] | None = None,
               version: int | None = None) -> pa.Table:
    """The table's current rows (or at ``version``) as Arrow; an empty table with the contract's schema
    when it does not exist. ``filter``: a ``pyarrow.compute`` expression (``pc.field("urn") == "100000"``).

    Files rewritten by a delta-rs MERGE store strings as Arrow ``string_view``; pyarrow cannot compare a
    ``string_view`` column with a ``string`` literal while pruning, so such a filter is applied after
    reading instead (same rows, more I/O). Write ``pc.field("urn").cast(pa.string()) == ...`` to keep
    the pushdown.
    """
    opts = dict(storage_options or {})
    try:
        delta = DeltaTable(contract.path(lake_uri), version=version, storage_options=opts)
    except TableNotFoundError:
        empty = contract.schema.empty_table()
        return empty.select(columns) if columns else empty
    dataset = delta.to_pyarrow_dataset()
    if filter is None:
        return dataset.to_table(columns=columns)
    try:
        return dataset.to_table(columns=columns, filter=filter)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        table = dataset.to_table().filter(filter)
        return table.select(columns) if columns else table


def conform(data: pa.Table, contract: TableContract,
            fill: Mapping[str, object] | None = None) -> pa.Table:
    """``data`` with exactly the contract's columns, in order and types: missing nullable columns become
    nulls, ``fill`` columns are set to one value for every row (column-wise), unknown columns are an error
    (nothing outside the contract is ever stored), and nulls in a non-nullable column are an error."""
    fill = dict(fill or {})
    unknown = [name for name in data.column_names if name not in contract.schema.names]
    if unknown:
        raise ValueError(f"{contract.name}: columns outside the table contract: {', '.join(unknown)}")
    columns = []
    for field in contract.schema:
        if field.name in fill:
            value = pa.scalar(fill[field.name], field.type)
            column = pc.fill_null(pa.nulls(data.num_rows, field.type), value)
        elif field.name in data.column_names:
            column = data.column(field.name).cast(field.type)
        elif field.nullable:
            column = pa.nulls(data.num_rows, field.type)
        else:
            raise ValueError(f"{contract.name}: required column {field.name!r} is missing")
        if not field.nullable and column.null_count:
            raise ValueError(
                f"{contract.name}: {column.null_count} null value(s) in required column {field.name!r}")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=contract.schema)


def sql_literal(value: object) -> str:
    """A value as a SQL string literal for a Delta predicate (quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


#: Most values ``in_list`` spells out; beyond, it gives their range. delta-rs parses a predicate recursively and
#: overflowed its stack (the worker died of SIGSEGV) on an IN list of 21,292 URNs (a national day's extracts
#: folded at once); 5,000 still passed.
IN_LIST_MAX = 1000


def in_list(column: str, values: pa.Array | pa.ChunkedArray) -> str:
    """A pruning filter over ``values`` (nulls ignored), for MERGE predicates and reads that also match on the
    exact key: ``column IN ('a','b')`` over the distinct values, or, for more than ``IN_LIST_MAX`` of them,
    ``(column >= 'lowest' AND column <= 'highest')``, which lets through every one of them (and maybe more)."""
    distinct = sorted(map(str, pc.unique(values).drop_null().to_pylist()))
    if len(distinct) > IN_LIST_MAX:
        return f"({column} >= {sql_literal(distinct[0])} AND {column} <= {sql_literal(distinct[-1])})"
    return f"{column} IN ({', '.join(sql_literal(v) for v in distinct)})"


def filesystem(uri: str, storage_options: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path in it for a table or lake URI (local path or ``s3://``), for
    listing and reading the Parquet files themselves (destruction checks every file, not only the
    current version's)."""
    opts = {key.upper(): value for key, value in (storage_options or {}).items()}
    if is_s3_uri(uri):
        endpoint = opts.get("AWS_ENDPOINT_URL")
        scheme = "https"
        if endpoint and "://" in endpoint:
            scheme, endpoint = endpoint.split("://", 1)
        fs = pafs.S3FileSystem(
            access_key=opts.get("AWS_ACCESS_KEY_ID"), secret_key=opts.get("AWS_SECRET_ACCESS_KEY"),
            session_token=opts.get("AWS_SESSION_TOKEN"), region=opts.get("AWS_REGION"),
            endpoint_override=endpoint, scheme=scheme,
        )
        return fs, uri.split("://", 1)[1].rstrip("/")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


def data_files(uri: str, storage_options: Mapping[str, str] | None = None) -> list[str]:
    """Every Parquet data file under a table directory, referenced by the log or not (``_delta_log``
    excluded), as paths in ``filesystem(uri)``."""
    fs, root = filesystem(uri, storage_options)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(
        info.path for info in infos
        if info.type == pafs.FileType.File and info.path.endswith(".parquet")
        and "/_delta_log/" not in info.path and not info.path.split("/")[-1].startswith(("_", "."))
    )


#: Modules that declare tables with ``storage.tables.register``. Destruction and the data dictionary must
#: see every table, not only those some earlier import happened to register.
TABLE_MODULES = ("official_stats.contracts", "access.pseudonymise", "access.audit", "dq.report")


def load_all_contracts() -> None:
    """Import every module that registers table contracts (missing modules are skipped)."""
    for name in TABLE_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
