"""The school register: load a Get Information About Schools (GIAS) establishments CSV into the lake.

``attendance schools load FILE`` reads ``edubasealldata*.csv`` as GIAS publishes it (Windows-1252, dates
dd-mm-yyyy, ~140 columns of which we keep a dozen), checks each row, keeps the good rows and reports the
bad ones by line number, and replaces the Delta table ``reference/schools`` with the result.

Which rows are errors:

- ``URN`` missing or not 6 digits; a URN already seen on an earlier good row (the first is kept);
- ``LA (code)`` missing or not 3 digits; an LA code that is not an English LA (live or abolished,
  ``schemas/reference/las.csv``) on a school in the statistics' scope. GIAS also lists Welsh schools,
  overseas establishments and "Does not apply" rows: when out of scope they are kept with empty geography;
- ``EstablishmentNumber`` not 1-4 digits, or missing on an in-scope school (GIAS leaves it empty for some
  out-of-scope establishments such as further-education colleges);
- ``OpenDate`` / ``CloseDate`` not a real dd-mm-yyyy date (dd/mm/yyyy, as a spreadsheet re-save writes it,
  is accepted too).

A school whose LA was abolished (e.g. 909 Cumbria, 2023) gets that LA's GSS code, name and region from the
reference table; every other school the live LA's. LAESTAB is the LA code and the establishment number
zero-padded to four digits.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from operator import itemgetter
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.compute as pc

from attendance.errors import UserFacingError
from schemas.reference import local_authorities, regions
from storage.tables import SCHOOLS

REQUIRED_COLUMNS: tuple[str, ...] = (
    "URN",
    "LA (code)",
    "LA (name)",
    "EstablishmentNumber",
    "EstablishmentName",
    "TypeOfEstablishment (name)",
    "EstablishmentTypeGroup (name)",
    "EstablishmentStatus (name)",
    "PhaseOfEducation (name)",
    "OpenDate",
    "CloseDate",
)
#: Read when present (every GIAS extract since academy trusts were added has them); empty otherwise.
OPTIONAL_COLUMNS: tuple[str, ...] = ("Trusts (code)", "Trusts (name)")

IN_SCOPE_PHASES: tuple[str, ...] = ("Primary", "Secondary", "Special")
OUT_OF_SCOPE = "Out of scope"

LOAD_HINT = "attendance schools load FILE"

# --- phase in the attendance statistics ---------------------------------------------------------------------
#
# Scope: "state-funded primary, secondary and special schools" [S: EES methodology "Pupil attendance in
# schools"; domain README section 2]. Decisions, with their grounds:
# - Academies and free schools (incl. UTCs and studio schools) are state-funded mainstream schools: their
#   GIAS phase decides Primary/Secondary.
# - Middle schools are "deemed" primary or secondary and DfE's statistics group them accordingly [S: GIAS
#   PhaseOfEducation "Middle deemed primary"/"Middle deemed secondary"; middleschoolresearch.org.uk "for
#   statistical reports middle schools are ... grouped together with either primary or secondary schools
#   depending on their 'deemed' status"].
# - All-through schools count as Secondary [I: DfE's school census tables put all-through schools under
#   state-funded secondary; Ofsted's phase grouping does the same (cited by a public repository); not
#   stated in the attendance methodology].
# - Special = LA-maintained special schools (community, foundation), special academies and special free
#   schools, whatever their GIAS phase. Non-maintained special schools are Out of scope: they are not
#   state-funded schools in DfE's classification [I: DfE's 2025/26 attendance denominator of 1,121 special
#   schools matches the state-funded special count; the EES methodology says "state-funded"].
# - Out of scope: independent schools, pupil referral units and alternative provision (LA or academy),
#   nurseries, 16-19 and post-16 institutions, further and higher education, Welsh, overseas, secure and
#   online providers, and mainstream schools whose phase is Nursery, 16 plus or Not applicable.

_SPECIAL_TYPES = frozenset(
    {
        "community special school",
        "foundation special school",
        "academy special converter",
        "academy special sponsor led",
        "free schools special",
    }
)
_MAINSTREAM_TYPES = frozenset(
    {
        "community school",
        "voluntary aided school",
        "voluntary controlled school",
        "foundation school",
        "academy converter",
        "academy sponsor led",
        "free schools",
        "city technology college",
        "university technical college",
        "studio schools",
    }
)
_OUT_OF_SCOPE_GROUPS = frozenset(
    {
        "independent schools",
        "colleges",
        "universities",
        "welsh schools",
        "other types",
        "online provider",
    }
)
_PRIMARY_PHASES = frozenset({"primary", "middle deemed primary"})
_SECONDARY_PHASES = frozenset({"secondary", "middle deemed secondary", "all through"})


def _norm(text: str | None) -> str:
    return " ".join((text or "").replace("-", " ").casefold().split())


def attendance_phase(type_group: str, type_name: str, phase_of_education: str) -> str:
    """The statistics' phase of a GIAS establishment: Primary, Secondary, Special or Out of scope."""
    group, kind, phase = _norm(type_group), _norm(type_name), _norm(phase_of_education)
    if group in _OUT_OF_SCOPE_GROUPS:
        return OUT_OF_SCOPE
    if kind in _SPECIAL_TYPES:
        return "Special"
    if kind in _MAINSTREAM_TYPES:
        if phase in _PRIMARY_PHASES:
            return "Primary"
        if phase in _SECONDARY_PHASES:
            return "Secondary"
    return OUT_OF_SCOPE


# --- reading the CSV ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowError:
    """One problem on one row. ``line`` counts physical lines of the file, the header being line 1."""

    line: int
    column: str
    problem: str

    @property
    def message(self) -> str:
        return f"{self.column}: {self.problem}"

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class RegisterLoad:
    table: pa.Table  # conforms to storage.tables.SCHOOLS.schema
    errors: list[RowError]
    rows_read: int  # data rows in the file (blank lines not counted)
    encoding: str

    @property
    def rejected_lines(self) -> list[int]:
        return sorted({e.line for e in self.errors})


def _decode(raw: bytes, path: Path) -> tuple[str, str]:
    """GIAS publishes Windows-1252. A file re-saved as UTF-8 (with or without BOM) is read as UTF-8."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw, encodings = raw[3:], ("utf-8",)
    elif raw.isascii():
        encodings = ("ascii",)
    else:
        # Windows-1252 text with non-ASCII characters is (almost) never valid UTF-8; UTF-8 text is.
        encodings = ("utf-8", "cp1252")
    for encoding in encodings:
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError as exc:
            failure = exc
    line = raw[: failure.start].count(b"\n") + 1
    raise UserFacingError(
        f"{path}: line {line} is neither Windows-1252 (as GIAS publishes) nor UTF-8 text "
        f"(byte 0x{raw[failure.start]:02x})"
    )


@dataclass
class _Rows:
    lines: list[int]
    values: dict[str, list[str]]
    errors: list[RowError]


def _parse(text: str, path: Path) -> tuple[_Rows, int]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise UserFacingError(f"{path} is empty: expected a GIAS establishments CSV") from None
    except csv.Error as exc:
        raise UserFacingError(f"{path}: cannot read the header line as CSV ({exc})") from None
    header = [h.strip().lstrip("\ufeff").strip() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UserFacingError(
            f"{path} is not a GIAS establishments CSV (edubasealldata*.csv): missing column(s) "
            + ", ".join(f"'{c}'" for c in missing)
        )
    wanted = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in header]
    positions = [header.index(c) for c in wanted]
    pick = itemgetter(*positions)
    columns: list[list[str]] = [[] for _ in wanted]
    appenders = [c.append for c in columns]
    lines: list[int] = []
    errors: list[RowError] = []
    width = len(header)
    previous_end = reader.line_num
    rows_read = 0
    try:
        for row in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not row:  # blank line
                continue
            rows_read += 1
            if len(row) != width:
                errors.append(RowError(start, "(row)", f"has {len(row)} fields; the header has {width}"))
                continue
            lines.append(start)
            for append, value in zip(appenders, pick(row), strict=True):
                append(value)
    except csv.Error as exc:
        raise UserFacingError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    values = dict(zip(wanted, columns, strict=True))
    for name in OPTIONAL_COLUMNS:
        values.setdefault(name, [""] * len(lines))
    return _Rows(lines=lines, values=values, errors=errors), rows_read


# --- checking the rows --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geography:
    new_la_code: str
    la_name: str
    region_code: str
    region_name: str


@lru_cache(maxsize=1)
def _english_las() -> dict[str, _Geography]:
    """Old LA code -> geography: live LAs, plus abolished ones (for schools that closed before)."""
    region_names = regions()
    text = resources.files("schemas").joinpath("reference", "las.csv").read_text(encoding="utf-8")
    result: dict[str, _Geography] = {}
    for row in csv.DictReader(text.splitlines()):
        code = row["old_la_code"]
        if re.fullmatch(r"\d{3}", code) and row["parent_geography_code"] in region_names:
            result[code] = _Geography(
                row["new_la_code"],
                row["la_name"],
                row["parent_geography_code"],
                region_names[row["parent_geography_code"]],
            )
    for code, la in local_authorities().items():  # the live LA wins where a code was reused
        result[code] = _Geography(la.new_la_code, la.la_name, la.region_code, la.region_name)
    return result


def _text(values: Sequence[str]) -> pa.Array:
    array = pc.utf8_trim_whitespace(pa.array(values, pa.string()))
    return pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)


def _dates(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """dd-mm-yyyy (or dd/mm/yyyy) text -> date32, and a mask of values that are present but not a date."""
    normal = pc.replace_substring(text, "/", "-")
    shaped = pc.match_substring_regex(normal, r"^\d{2}-\d{2}-\d{4}$")
    parsed = pc.strptime(
        pc.if_else(shaped, normal, pa.scalar(None, pa.string())),
        format="%d-%m-%Y",
        unit="s",
        error_is_null=True,
    )
    # Arrow's strptime rolls 31-02 over to 02-03: a real date prints back as the text it came from.
    real = pc.equal(pc.strftime(parsed, format="%d-%m-%Y"), normal)
    bad = pc.and_(pc.is_valid(text), pc.invert(pc.fill_null(real, False)))
    dates = pc.if_else(pc.fill_null(real, False), pc.cast(parsed, pa.date32()), pa.scalar(None, pa.date32()))
    return dates, bad


def _mask(array: pa.Array) -> list[bool]:
    return pc.fill_null(array, False).to_pylist()


def read_gias_csv(path: Path, *, loaded_at: dt.datetime | None = None) -> RegisterLoad:
    """Read a GIAS establishments CSV: good rows as a SCHOOLS table, bad rows as errors with line numbers."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserFacingError(f"cannot read {path}: {exc.strerror or exc}") from None
    text, encoding = _decode(raw, path)
    rows, rows_read = _parse(text, path)
    v = rows.values
    n = len(rows.lines)
    lines = pa.array(rows.lines, pa.int64())
    urn = _text(v["URN"])
    la_code = _text(v["LA (code)"])
    number = _text(v["EstablishmentNumber"])
    type_group = _text(v["EstablishmentTypeGroup (name)"])
    type_name = _text(v["TypeOfEstablishment (name)"])
    gias_phase = _text(v["PhaseOfEducation (name)"])
    open_date, open_bad = _dates(_text(v["OpenDate"]))
    close_date, close_bad = _dates(_text(v["CloseDate"]))

    # Phase: a pure function of three texts; computed once per distinct combination.
    key = pc.binary_join_element_wise(
        pc.fill_null(type_group, ""), pc.fill_null(type_name, ""), pc.fill_null(gias_phase, ""), "\x1f"
    )
    distinct = pc.unique(key)
    phases = pa.array([attendance_phase(*k.split("\x1f")) for k in distinct.to_pylist()], pa.string())
    phase = pc.take(phases, pc.index_in(key, value_set=distinct))
    in_scope = pc.is_in(phase, value_set=pa.array(IN_SCOPE_PHASES))

    geography = _english_las()
    known = pa.array(sorted(geography), pa.string())
    la_index = pc.index_in(la_code, value_set=known)

    def lookup(attribute: str) -> pa.Array:
        return pc.take(
            pa.array([getattr(geography[c], attribute) for c in known.to_pylist()], pa.string()), la_index
        )

    urn_ok = pc.match_substring_regex(urn, r"^\d{6}$")
    la_ok = pc.match_substring_regex(la_code, r"^\d{3}$")
    number_ok = pc.match_substring_regex(number, r"^\d{1,4}$")
    checks: list[tuple[str, pa.Array, object]] = [
        ("URN", pc.is_null(urn), "missing"),
        ("URN", pc.invert(pc.fill_null(urn_ok, True)), lambda i: f"'{v['URN'][i].strip()}' is not 6 digits"),
        ("LA (code)", pc.is_null(la_code), "missing"),
        (
            "LA (code)",
            pc.invert(pc.fill_null(la_ok, True)),
            lambda i: f"'{v['LA (code)'][i].strip()}' is not a 3-digit LA code",
        ),
        (
            "LA (code)",
            pc.and_(pc.and_(pc.fill_null(la_ok, False), pc.is_null(la_index)), in_scope),
            lambda i: (
                f"unknown LA code '{v['LA (code)'][i].strip()}' (not an English local authority) on an "
                f"in-scope school"
            ),
        ),
        ("EstablishmentNumber", pc.and_(pc.is_null(number), in_scope), "missing on an in-scope school"),
        (
            "EstablishmentNumber",
            pc.invert(pc.fill_null(number_ok, True)),
            lambda i: f"'{v['EstablishmentNumber'][i].strip()}' is not a 1-4 digit establishment number",
        ),
        ("OpenDate", open_bad, lambda i: f"'{v['OpenDate'][i].strip()}' is not a dd-mm-yyyy date"),
        ("CloseDate", close_bad, lambda i: f"'{v['CloseDate'][i].strip()}' is not a dd-mm-yyyy date"),
    ]
    errors = list(rows.errors)
    bad = [False] * n
    for column, mask, problem in checks:
        for i, flagged in enumerate(_mask(mask)):
            if flagged:
                bad[i] = True
                errors.append(RowError(rows.lines[i], column, problem(i) if callable(problem) else problem))

    # Duplicate URNs among otherwise good rows: the first (by line) is kept.
    good = pa.array([not b for b in bad])
    candidates = pa.table({"urn": urn, "line": lines, "row": pa.array(range(n), pa.int64())}).filter(good)
    first = candidates.group_by("urn").aggregate([("line", "min")])
    joined = candidates.join(first, "urn")
    repeats = joined.filter(pc.not_equal(joined["line"], joined["line_min"])).sort_by("row")
    for row, repeat_urn, kept_line in zip(
        repeats["row"].to_pylist(), repeats["urn"].to_pylist(), repeats["line_min"].to_pylist(), strict=True
    ):
        bad[row] = True
        errors.append(
            RowError(rows.lines[row], "URN", f"{repeat_urn} is also on line {kept_line} (that row was kept)")
        )
    errors.sort(key=lambda e: (e.line, e.column))
    keep = pa.array([not b for b in bad])

    laestab = pc.if_else(
        pc.is_valid(number),
        pc.binary_join_element_wise(la_code, pc.utf8_lpad(pc.fill_null(number, ""), 4, "0"), ""),
        pa.scalar(None, pa.string()),
    )
    stamp = loaded_at or dt.datetime.now(dt.UTC)
    columns = {
        "urn": urn,
        "laestab": laestab,
        "school_name": _text(v["EstablishmentName"]),
        "old_la_code": la_code,
        "new_la_code": lookup("new_la_code"),
        "la_name": pc.coalesce(lookup("la_name"), _text(v["LA (name)"])),
        "region_code": lookup("region_code"),
        "region_name": lookup("region_name"),
        "type_of_establishment": type_name,
        "establishment_type_group": type_group,
        "status": _text(v["EstablishmentStatus (name)"]),
        "phase_of_education": gias_phase,
        "attendance_phase": phase,
        "trust_code": _text(v["Trusts (code)"]),
        "trust_name": _text(v["Trusts (name)"]),
        "open_date": open_date,
        "close_date": close_date,
        "loaded_at": pa.array([stamp] * n, pa.timestamp("us", tz="UTC")),
    }
    schema = SCHOOLS.schema
    table = pa.Table.from_arrays([pc.cast(columns[f.name], f.type) for f in schema], schema=schema).filter(
        keep
    )
    return RegisterLoad(table=table, errors=errors, rows_read=rows_read, encoding=encoding)


# --- the Delta table ----------------------------------------------------------------------------------------


def write_register(table: pa.Table, lake_uri: str) -> int:
    """Replace the register table with ``table``; returns the new Delta version."""
    from deltalake import DeltaTable, write_deltalake

    path = SCHOOLS.path(lake_uri)
    if "://" not in path:
        Path(path).mkdir(parents=True, exist_ok=True)
    write_deltalake(
        path,
        table.cast(SCHOOLS.schema),
        mode="overwrite",
        schema_mode="overwrite",
        description=SCHOOLS.purpose,
    )
    return DeltaTable(path).version()


def read_register(lake_uri: str) -> pa.Table:
    """The current register, as a SCHOOLS-shaped Arrow table."""
    from deltalake import DeltaTable

    path = SCHOOLS.path(lake_uri)
    if not DeltaTable.is_deltatable(path):
        raise UserFacingError(
            f"no school register at {path}: load one with `{LOAD_HINT}` (a GIAS edubasealldata*.csv)"
        )
    return DeltaTable(path).to_pyarrow_table().select(SCHOOLS.schema.names).cast(SCHOOLS.schema)


# --- command line -------------------------------------------------------------------------------------------

MAX_ERRORS_SHOWN = 50


@click.group("schools")
def schools() -> None:
    """The school register (Get Information About Schools)."""


@schools.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def load_command(file: Path) -> None:
    """Load a GIAS establishments CSV (edubasealldata*.csv) as the school register, replacing the old one.

    Rows with problems are reported by line number and left out; the good rows are loaded. Exits 1 if any
    row was rejected.
    """
    from attendance.settings import get_settings

    lake_uri = get_settings().lake_uri
    result = read_gias_csv(file)
    table = result.table
    if table.num_rows == 0:
        raise UserFacingError(
            f"no usable rows in {file} ({len(result.rejected_lines)} rejected); the register was not replaced"
        )
    version = write_register(table, lake_uri)
    phase = table["attendance_phase"]
    open_now = pc.invert(pc.fill_null(pc.starts_with(table["status"], "Closed"), False))
    counts = {p: pc.sum(pc.and_(pc.equal(phase, p), open_now)).as_py() or 0 for p in IN_SCOPE_PHASES}
    closed = table.num_rows - (pc.sum(open_now).as_py() or 0)
    out_of_scope = pc.sum(pc.and_(pc.equal(phase, OUT_OF_SCOPE), open_now)).as_py() or 0
    click.echo(
        f"loaded {table.num_rows:,} establishments from {file} into {SCHOOLS.path(lake_uri)} "
        f"(Delta version {version})"
    )
    click.echo(
        "open, in scope: "
        + ", ".join(f"{counts[p]:,} {p.lower()}" for p in IN_SCOPE_PHASES)
        + f"; open, out of scope: {out_of_scope:,}; closed: {closed:,}"
    )
    if result.errors:
        rejected = result.rejected_lines
        click.echo(f"rejected {len(rejected):,} row(s):", err=True)
        for error in result.errors[:MAX_ERRORS_SHOWN]:
            click.echo(f"  {error}", err=True)
        if len(result.errors) > MAX_ERRORS_SHOWN:
            click.echo(f"  ... and {len(result.errors) - MAX_ERRORS_SHOWN:,} more problem(s)", err=True)
        sys.exit(1)


REGISTER_COMMANDS: list[click.Command | click.Group] = [schools]
