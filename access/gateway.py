"""The one read gateway: SQL over only the views a role's grant allows, every request audited.

``open_view(role, scope, lake_uri=..., purpose=..., user=...)`` checks the role, scope and purpose and
returns a :class:`View`. ``View.sql(query)``:

1. scans the query (``access.sql_guard``): one read-only SELECT, no file reads, no table functions, no
   catalogue; every table it names must be granted, else it is refused with the rule that refuses it
   (never an empty result in place of a refusal);
2. builds, for each named table, a lazy view of the Delta table (or published file) at a pinned version
   with the grant's row filter and column projection applied first;
3. runs the query with Polars' SQL engine in a fresh context holding only those views under their
   public names (the real tables, the schools register used by row filters and every other table are
   not in that context, so nothing the scanner could miss can reach them);
4. appends an audit row (allowed, refused or error) before returning anything: no audit, no data.
"""

from __future__ import annotations

import getpass
import importlib
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from access import audit
from access.policy import (
    AccessRefused,
    Grant,
    TableGrant,
    TableInfo,
    check_purpose,
    contract_catalogue,
    load_policy,
    policy,
)
from access.sql_guard import scan_sql
from attendance.errors import UserFacingError
from storage import current
from storage.tables import SCHOOLS, TABLES, Zone

log = logging.getLogger(__name__)

#: Modules that declare table contracts of other areas (imported when present, so that their tables are
#: known before anything has been written to them).
CONTRACT_MODULES = ("official_stats.contracts", "official_stats.tables")


class QueryFailed(UserFacingError):
    """A granted query that the engine could not run (syntax, unknown column, type error...)."""


@dataclass(frozen=True)
class Source:
    """Where a catalogued table's data is: a Delta table or a published file."""

    kind: str  # delta, csv, parquet
    uri: str
    zone: Zone


# --- the catalogue: declared contracts + what is in the lake ---------------------------------------------


def _import_contract_modules() -> None:
    for name in CONTRACT_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        except Exception:  # another area's import error must not take the gateway down
            log.warning("could not import %s to learn its table contracts", name, exc_info=True)


def _filesystem(lake_uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in lake_uri and not lake_uri.startswith("file://"):
        return pafs.FileSystem.from_uri(lake_uri)
    path = lake_uri.removeprefix("file://")
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _table_name_for_file(relative: str) -> str:
    stem = relative.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    name = re.sub(r"[^a-z0-9_]", "_", stem.lower())
    return name if name[:1].isalpha() else f"t_{name}"


def _csv_header(fs: pafs.FileSystem, path: str) -> list[str]:
    import csv
    import io

    with fs.open_input_stream(path) as stream:
        head = stream.read(65536).decode("utf-8-sig", errors="replace")
    first = head.splitlines()[0] if head else ""
    return next(csv.reader(io.StringIO(first)), [])


def discover(
    lake_uri: str, storage_options: Mapping[str, str] | None = None
) -> tuple[dict[str, TableInfo], dict[str, Source]]:
    """Tables found in the lake: Delta tables under every zone but audit, and CSV/Parquet files under
    ``published`` (each file is a table named after its file stem). Best effort: an unreachable store
    yields nothing (declared contracts still apply)."""
    infos: dict[str, TableInfo] = {}
    sources: dict[str, Source] = {}
    opts = dict(storage_options or {})
    try:
        fs, root = _filesystem(lake_uri)
    except Exception:
        log.warning("cannot list the lake at its URI; only declared tables are known", exc_info=True)
        return infos, sources
    base = lake_uri.rstrip("/")
    for zone in Zone:
        if zone is Zone.AUDIT:
            continue
        zone_dir = f"{root.rstrip('/')}/{zone.value}"
        try:
            entries = fs.get_file_info(pafs.FileSelector(zone_dir, allow_not_found=True, recursive=False))
        except Exception:
            log.warning("cannot list %s", zone.value, exc_info=True)
            continue
        delta_dirs: list[str] = []
        for entry in entries:
            if entry.type != pafs.FileType.Directory:
                continue
            if fs.get_file_info(f"{entry.path}/_delta_log").type != pafs.FileType.Directory:
                continue
            name = entry.base_name
            uri = f"{base}/{zone.value}/{name}"
            try:
                schema = pa.schema(DeltaTable(uri, storage_options=opts).schema().to_arrow())
            except Exception:
                log.warning("cannot read the Delta table %s/%s", zone.value, name, exc_info=True)
                continue
            delta_dirs.append(entry.path.rstrip("/") + "/")
            pupil_level = bool({"upn", "pupil_key"} & set(schema.names))
            contract = TABLES.get(name)
            if contract is not None and contract.zone is not zone:
                log.warning(
                    "table %s found in zone %s but declared in %s: ignored",
                    name,
                    zone.value,
                    contract.zone.value,
                )
                continue
            infos[name] = TableInfo(name, zone, schema, contract.pupil_level if contract else pupil_level)
            sources[name] = Source("delta", uri, zone)
        if zone is not Zone.PUBLISHED:
            continue
        files = [
            e
            for e in fs.get_file_info(pafs.FileSelector(zone_dir, allow_not_found=True, recursive=True))
            if e.type == pafs.FileType.File
            and not any(e.path.startswith(d) for d in delta_dirs)
            and (
                e.path.endswith(".parquet") or (e.path.endswith(".csv") and not e.path.endswith(".meta.csv"))
            )
        ]
        names = [_table_name_for_file(e.path) for e in files]
        for entry, name in zip(files, names, strict=True):
            relative = entry.path[len(zone_dir) :].strip("/")
            if names.count(name) > 1:
                name = _table_name_for_file(relative.replace("/", "__").rsplit(".", 1)[0] + ".x")
            if name in infos or name in TABLES:
                log.warning("published file %s has the name of another table (%s): ignored", relative, name)
                continue
            uri = f"{base}/{zone.value}/{relative}"
            try:
                if entry.path.endswith(".csv"):
                    schema = pa.schema([(c, pa.string()) for c in _csv_header(fs, entry.path)])
                    kind = "csv"
                else:
                    import pyarrow.parquet as pq

                    schema = pq.read_schema(entry.path, filesystem=fs)
                    kind = "parquet"
            except Exception:
                log.warning("cannot read published file %s", relative, exc_info=True)
                continue
            infos[name] = TableInfo(name, zone, schema, bool({"upn", "pupil_key"} & set(schema.names)))
            sources[name] = Source(kind, uri, zone)
    return infos, sources


def build_catalogue(
    lake_uri: str, storage_options: Mapping[str, str] | None = None
) -> tuple[dict[str, TableInfo], dict[str, Source]]:
    """Declared contracts (``storage.tables`` plus other areas' modules) and what the lake holds."""
    import access.pseudonymise  # noqa: F401  (declares the pseudonymised tables)

    _import_contract_modules()
    catalogue = {n: i for n, i in contract_catalogue().items() if i.zone is not Zone.AUDIT}
    sources = {n: Source("delta", TABLES[n].path(lake_uri), TABLES[n].zone) for n in catalogue}
    found, found_sources = discover(lake_uri, storage_options)
    catalogue.update(found)
    sources.update(found_sources)
    return catalogue, sources


# --- disclosure control --------------------------------------------------------------------------------

#: Columns the statistics package's disclosure rules work on (official_stats.disclosure.apply_disclosure).
DISCLOSURE_COLUMNS = frozenset(
    {
        "time_frame",
        "period_start",
        "period_end",
        "term",
        "academic_year",
        "geographic_level",
        "region_code",
        "old_la_code",
        "new_la_code",
        "education_phase",
        "fsm_status",
        "sen_status",
        "year_group",
        "enrolments",
        "school_submitted_count",
    }
)
_DISCLOSED: dict[tuple[str, int | None], pl.DataFrame] = {}


#: The column with which a table records the disclosure control applied when it was written (the
#: statistics' ``stats_attendance_views``: true = the row's figures are confidential and stored as null).
STORED_CONTROL_COLUMN = "suppressed"


def _disclosure_controlled(frame: pl.LazyFrame, name: str, version: int | None) -> pl.LazyFrame:
    """``frame`` without the rows the statistics' disclosure rules suppress (one school, few pupils, and the
    secondary suppression that protects them).

    A table that stores its disclosure control (a boolean ``suppressed`` column, written by the statistics
    package: the LA-and-above zone holds only controlled rows) is served without its suppressed rows (a
    null flag counts as suppressed); the rules are not re-applied. A table without that column that has the
    columns the rules need gets them applied per academic year, as a release does; other tables (or a lake
    without the statistics package) keep the grant's single-school row filter only, which every
    disclosure-controlled grant applies as well (defence in depth). Fails closed: an error applying the
    rules refuses the query."""
    schema = frame.collect_schema()
    if STORED_CONTROL_COLUMN in schema.names():
        if schema[STORED_CONTROL_COLUMN] != pl.Boolean:
            raise AccessRefused(
                "disclosure-unavailable",
                f"{name}: its {STORED_CONTROL_COLUMN} column is not a true/false flag, so nothing is shown",
            )
        return frame.filter(~pl.col(STORED_CONTROL_COLUMN).fill_null(True))
    try:
        from official_stats.disclosure import DisclosureRules, apply_disclosure
    except ImportError:
        return frame
    if not set(schema.names()) >= DISCLOSURE_COLUMNS:
        return frame
    key = (name, version)
    if version is None or key not in _DISCLOSED:
        try:
            rows = frame.collect()
            rules = DisclosureRules.from_config()
            parts = [
                apply_disclosure(part, rules)
                for part in rows.partition_by("academic_year", maintain_order=True)
            ]
            kept = (
                pl.concat(parts).filter(~pl.col("suppressed")).drop("suppressed", "suppression_reason")
                if parts
                else rows
            )
        except Exception as exc:
            log.exception("disclosure control failed for %s", name)
            raise AccessRefused(
                "disclosure-unavailable",
                f"{name}: disclosure control could not be applied, so nothing is shown",
            ) from exc
        if len(_DISCLOSED) >= 8:
            _DISCLOSED.pop(next(iter(_DISCLOSED)))
        _DISCLOSED[key] = kept
    return _DISCLOSED[key].lazy()


# --- the view ----------------------------------------------------------------------------------------------


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class View:
    """What one role with one scope may read; ``sql()`` runs a query over exactly that."""

    grant: Grant
    lake_uri: str
    user: str
    purpose: str | None
    catalogue: dict[str, TableInfo]
    sources: dict[str, Source]
    storage_options: dict[str, str] = field(default_factory=dict)

    # -- what is readable -----------------------------------------------------------------------------
    def tables(self) -> dict[str, TableGrant]:
        """The granted tables that exist now (name -> grant: rule, row filter, columns)."""
        return {name: g for name, g in self.grant.tables.items() if self._exists(name)}

    def _exists(self, name: str) -> bool:
        source = self.sources.get(name)
        if source is None:
            return False
        if source.kind != "delta":
            return True
        try:
            DeltaTable(source.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            return False
        return True

    # -- running a query ----------------------------------------------------------------------------
    def sql(self, query: str) -> pa.Table:
        """Run ``query`` over the granted views; refused (AccessRefused) or failed (QueryFailed) requests
        are audited and raised, allowed ones audited and returned."""
        started = time.perf_counter()
        named: tuple[str, ...] = ()
        versions: dict[str, int | None] = {}
        try:
            scanned = scan_sql(query)
            named = scanned.table_names
            self._check_references(scanned.tables)
            frames = {name: self._view_frame(name, versions) for name in named}
            result = self._run(query, frames)
        except AccessRefused as exc:
            self._audit(
                "query", "refused", query, named, versions, started, rule=exc.rule, message=exc.reason
            )
            raise
        except QueryFailed as exc:
            self._audit("query", "error", query, named, versions, started, rule=None, message=str(exc))
            raise
        self._audit("query", "allowed", query, named, versions, started, rows=result.num_rows)
        log.info(
            "query allowed: role=%s tables=%s rows=%d", self.grant.role, ",".join(named), result.num_rows
        )
        return result

    def to_polars(self, query: str) -> pl.DataFrame:
        frame = pl.from_arrow(self.sql(query))
        assert isinstance(frame, pl.DataFrame)
        return frame

    def _zone_name(self, name: str) -> str:
        info = self.catalogue.get(name)
        return f"{info.zone.value}/{name}" if info else name

    def _check_references(self, refs) -> None:  # type: ignore[no-untyped-def]
        g = self.grant
        role = g.role
        version = f"policy v{g.policy_version}"
        zones = ", ".join(z.value for z in g.zones) or "none"
        for ref in refs:
            name = ref.name
            if name in g.tables:
                if ref.qualifier:
                    raise AccessRefused(
                        "qualified-name",
                        f"write {ref.text!r} as {name}: tables are named without a schema or zone",
                    )
                continue
            if name in g.withheld:
                raise AccessRefused(
                    "invariant",
                    f"{self._zone_name(name)} is {g.withheld[name]} "
                    f"(role {role!r}, {version}). {g.principle}",
                )
            info = self.catalogue.get(name)
            if info is None and name in TABLES:  # declared but not catalogued: the audit zone
                info = TableInfo.from_contract(TABLES[name])
            if info is not None:
                if info.zone in g.zones:
                    allowed = sorted(n for n, t in g.tables.items() if t.zone is info.zone)
                    raise AccessRefused(
                        "table-not-granted",
                        f"role {role!r} may not read {self._zone_name(name)}: of zone {info.zone.value} it "
                        f"reads only {', '.join(allowed) or 'nothing'} ({version}). {g.principle}",
                    )
                raise AccessRefused(
                    "zone-not-granted",
                    f"role {role!r} may not read {self._zone_name(name)} (zone {info.zone.value}): it reads "
                    f"only the zones {zones} ({version}). {g.principle}",
                )
            if g.rule_for(name) is not None:
                raise AccessRefused(
                    "not-available-yet",
                    f"no table {name!r} is available yet; role {role!r} may read such a table from the zones "
                    f"{zones} once it has been produced",
                )
            raise AccessRefused(
                "table-unknown",
                f"no table {name!r}; role {role!r} may read: {', '.join(sorted(g.tables)) or 'nothing'}",
            )

    def _source_frame(self, name: str, versions: dict[str, int | None], grant_rule: str) -> pl.LazyFrame:
        source = self.sources[name]
        if source.kind == "delta":
            try:
                table = DeltaTable(source.uri, storage_options=self.storage_options)
            except TableNotFoundError:
                raise AccessRefused(
                    "not-available-yet",
                    f"{self._zone_name(name)} is granted to role {self.grant.role!r} (rule {grant_rule}) "
                    "but has not been written yet",
                ) from None
            if name in current.STAGED_INTO and source.uri == TABLES[name].path(self.lake_uri):
                # Rows the sink has committed but not folded yet are read too (merge-on-read), and the
                # staging table's version goes to the audit with the table's.
                frame, read = current.scan_current(TABLES[name], self.lake_uri, self.storage_options, stored=table)
                versions.update(read)
                return frame
            versions[self._zone_name(name)] = table.version()
            return pl.scan_delta(table)
        versions[self._zone_name(name)] = None
        if source.kind == "csv":
            return pl.scan_csv(source.uri, infer_schema=False, storage_options=self.storage_options or None)
        return pl.scan_parquet(source.uri, storage_options=self.storage_options or None)

    def _schools_frame(self, versions: dict[str, int | None]) -> pl.LazyFrame:
        try:
            table = DeltaTable(SCHOOLS.path(self.lake_uri), storage_options=self.storage_options)
        except TableNotFoundError:
            empty = pl.from_arrow(SCHOOLS.schema.empty_table())
            assert isinstance(empty, pl.DataFrame)
            return empty.lazy()
        versions[f"{SCHOOLS.zone.value}/{SCHOOLS.name}"] = table.version()
        return pl.scan_delta(table)

    def _view_frame(self, name: str, versions: dict[str, int | None]) -> pl.LazyFrame:
        """The granted view of ``name``: disclosure control, the grant's row filter and columns applied to a
        pinned version."""
        tg = self.grant.tables[name]
        frame = self._source_frame(name, versions, tg.rule)
        if tg.disclosure_control:
            frame = _disclosure_controlled(frame, self._zone_name(name), versions.get(self._zone_name(name)))
        columns = ", ".join(_quoted(c) for c in tg.columns)
        if tg.row_filter is None:
            return frame.select(list(tg.columns))
        private = {"source": frame}
        if re.search(r"\bschools\b", tg.row_filter):
            private["schools"] = self._schools_frame(versions)
        return pl.SQLContext(frames=private).execute(f"SELECT {columns} FROM source WHERE {tg.row_filter}")

    def _run(self, query: str, frames: dict[str, pl.LazyFrame]) -> pa.Table:
        context = pl.SQLContext(frames=frames)
        try:
            result = context.execute(query, eager=False).collect()
        except pl.exceptions.PolarsError as exc:
            message = audit.redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) or ""
            if "relation" in message and "not found" in message:
                raise AccessRefused(
                    "table-not-granted",
                    f"the query names a table role {self.grant.role!r} may not read ({message})",
                ) from None
            raise QueryFailed(f"the query could not be run: {message}") from None
        return result.to_arrow(compat_level=pl.CompatLevel.oldest())

    def _audit(
        self,
        action: str,
        outcome: str,
        query: str | None,
        named: tuple[str, ...],
        versions: dict[str, int | None],
        started: float,
        *,
        rows: int = 0,
        rule: str | None = None,
        message: str | None = None,
    ) -> None:
        audit.append(
            self.lake_uri,
            [
                audit.AuditEvent(
                    action=action,
                    user=self.user,
                    role=self.grant.role,
                    scope=self.grant.scope,
                    purpose=self.purpose,
                    outcome=outcome,
                    sql=query,
                    tables=[self._zone_name(n) for n in named],
                    table_versions=versions,
                    rows_returned=rows,
                    refusal_rule=rule,
                    message=message,
                    policy_version=self.grant.policy_version,
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
            ],
            self.storage_options,
        )


def open_view(
    role: str,
    scope: str | None = None,
    *,
    lake_uri: str | None = None,
    purpose: str | None = None,
    user: str | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> View:
    """A :class:`View` for ``role`` and ``scope``. Refusals (unknown role, bad or missing scope, missing or
    prohibited purpose, the subject-access-only role) are audited and raised as AccessRefused."""
    from storage.lake import storage_options as lake_storage_options

    if lake_uri is None:
        from attendance.settings import get_settings

        lake_uri = get_settings().lake_uri
    user = (user or "").strip() or getpass.getuser()
    opts = dict(storage_options if storage_options is not None else lake_storage_options(lake_uri=lake_uri))
    started = time.perf_counter()
    pol = load_policy()
    try:
        catalogue, sources = build_catalogue(lake_uri, opts)
        grant = policy(role, scope, catalogue, pol=pol)
        if grant.subject_access:
            raise AccessRefused(
                "subject-access-only",
                f"role {role!r} reads through `attendance subject-access` only, never ad-hoc queries",
            )
        checked_purpose = check_purpose(role, purpose, pol)
    except AccessRefused as exc:
        audit.append(
            lake_uri,
            [
                audit.AuditEvent(
                    action="open",
                    user=user,
                    role=role,
                    scope=scope,
                    purpose=purpose,
                    outcome="refused",
                    refusal_rule=exc.rule,
                    message=exc.reason,
                    policy_version=pol.version,
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
            ],
            opts,
        )
        raise
    return View(
        grant=grant,
        lake_uri=lake_uri,
        user=user,
        purpose=checked_purpose,
        catalogue=catalogue,
        sources=sources,
        storage_options=opts,
    )
