"""The Delta tables the statistics write, declared through ``storage.tables.register``.

Zones:

- RESTRICTED: pupil-level working tables (``stats_pupil_day``, ``stats_pupil_period_totals``) and the run
  bookkeeping ``stats_aggregation_runs`` (its opt-out fingerprint names schools);
- SCHOOL: school-level figures (``stats_school_daily``, ``stats_pending_extracts``) and the exact
  National / Regional / LA figures **before** disclosure control (``stats_attendance_views_unsuppressed``):
  an LA row built from one school is that school's figures, so it is kept with the school-level data;
- LA_AND_ABOVE: only disclosure-controlled figures (``stats_attendance_views``): the rows a release would
  publish, with primary and secondary suppression applied (see :data:`VIEWS` for how the EES symbols are
  stored). Anyone who can read this zone's storage directly sees no cell the disclosure rules suppress.
"""

from __future__ import annotations

import pyarrow as pa

from official_stats.measures import COUNT_COLUMNS, PA_COUNT_COLUMNS, PA_RATE_COLUMNS, RATE_COLUMNS
from official_stats.views import VIEW_DIMENSIONS
from storage.tables import UTC_TS, TableContract, Zone, register


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


_GEOGRAPHY = [
    _f("region_code", pa.string(), "GSS region code"),
    _f("region_name", pa.string(), "Region name"),
    _f("old_la_code", pa.string(), "3-digit LA code"),
    _f("new_la_code", pa.string(), "9-character GSS LA code"),
    _f("la_name", pa.string(), "Local authority name"),
]
_CHARACTERISTICS = [
    _f("fsm_status", pa.string(), "FSM eligible, Not known to be eligible for FSM, or Unknown"),
    _f("sen_status", pa.string(), "No identified SEN, SEN support, EHC plan, or Unknown"),
    _f(
        "year_group",
        pa.string(),
        "Reception, Year 1 ... Year 14, Not following the national curriculum, Other",
    ),
]
_COUNTS = [_f(c, pa.int64(), f"Sessions: {c} (DfE arithmetic, official_stats.measures)") for c in COUNT_COLUMNS]
_RATES = [
    _f(c, pa.float64(), f"{c}: sessions / possible sessions x 100 (null when no possible sessions)")
    for c in RATE_COLUMNS
]

PUPIL_DAY = register(
    TableContract(
        name="stats_pupil_day",
        zone=Zone.RESTRICTED,
        schema=pa.schema(
            [
                _f("date", pa.date32(), "Register day", nullable=False),
                _f(
                    "academic_year_start",
                    pa.int32(),
                    "Year the academic year began (1 September)",
                    nullable=False,
                ),
                _f("term", pa.string(), "Autumn term, Spring term or Summer term", nullable=False),
                _f("urn", pa.string(), "School URN", nullable=False),
                _f("upn", pa.string(), "Unique Pupil Number", nullable=False),
                *_CHARACTERISTICS,
                _f("possible_sessions", pa.int32(), "Possible sessions that day (in scope, counted)"),
                _f("overall_absence", pa.int32(), "Absence sessions that day"),
            ]
        ),
        partition_by=("date",),
        key=("date", "urn", "upn"),
        purpose="Each in-scope pupil's counted possible and absence sessions per day: the source of the "
        "running "
        "per-pupil period totals (persistent absence). Rewritten per date by `attendance aggregate`.",
        pupil_level=True,
    )
)

PUPIL_PERIOD_TOTALS = register(
    TableContract(
        name="stats_pupil_period_totals",
        zone=Zone.RESTRICTED,
        schema=pa.schema(
            [
                _f("academic_year_start", pa.int32(), "Year the academic year began", nullable=False),
                _f("term", pa.string(), "Autumn term, Spring term or Summer term", nullable=False),
                _f("urn", pa.string(), "School URN (an enrolment is a pupil at a school)", nullable=False),
                _f("upn", pa.string(), "Unique Pupil Number", nullable=False),
                _f("possible_sessions", pa.int64(), "Possible sessions in the term so far"),
                _f("overall_absence", pa.int64(), "Absence sessions in the term so far"),
                *_CHARACTERISTICS,
                _f("updated_at", UTC_TS, "When this row last changed"),
            ]
        ),
        partition_by=("academic_year_start", "term"),
        key=("academic_year_start", "term", "urn", "upn"),
        purpose="Running per-enrolment totals per term, maintained incrementally from stats_pupil_day's "
        "Delta log "
        "(new minus old day rows); persistent and severe absence are computed from it.",
        pupil_level=True,
    )
)

SCHOOL_DAILY = register(
    TableContract(
        name="stats_school_daily",
        zone=Zone.SCHOOL,
        schema=pa.schema(
            [
                _f("date", pa.date32(), "Register day", nullable=False),
                _f("urn", pa.string(), "School URN", nullable=False),
                _f("laestab", pa.string(), "LAESTAB from the register"),
                _f("school_name", pa.string(), "School name from the register"),
                _f("academic_year_start", pa.int32(), "Year the academic year began"),
                _f("education_phase", pa.string(), "Primary, Secondary or Special"),
                *_GEOGRAPHY,
                *_COUNTS,
                _f("enrolments", pa.int64(), "Pupils with at least one possible session that day"),
                *_RATES,
            ]
        ),
        partition_by=("date",),
        key=("date", "urn"),
        purpose="School-level daily attendance (restricted: never published; no disclosure control applied).",
        pupil_level=False,
    )
)

_VIEW_TYPES = {
    "time_frame": (pa.string(), "Day, Week, Term or Year to date"),
    "period_start": (
        pa.date32(),
        "First day of the period (the day, the Monday, the term start, 1 September)",
    ),
    "period_end": (pa.date32(), "Last day of the period (Year to date: the last day with data)"),
    "academic_year": (pa.string(), "Academic year, YYYYZZ"),
    "term": (pa.string(), "Term rows: Autumn term, Spring term, Summer term"),
    "geographic_level": (pa.string(), "National, Regional or Local authority"),
    "country_code": (pa.string(), "E92000001"),
    "country_name": (pa.string(), "England"),
    "education_phase": (pa.string(), "Primary, Secondary, Special or Total"),
}
_VIEW_FIELDS = []
for _name in VIEW_DIMENSIONS:
    if _name in _VIEW_TYPES:
        _type, _doc = _VIEW_TYPES[_name]
        _VIEW_FIELDS.append(_f(_name, _type, _doc, nullable=_name in ("term",)))
    else:
        _VIEW_FIELDS.append(next(f for f in _GEOGRAPHY + _CHARACTERISTICS if f.name == _name))

_VALUE_FIELDS = [
    *_COUNTS,
    _f(
        "enrolments",
        pa.float64(),
        "Pupils with a possible session: the day's count, or the mean over days",
    ),
    _f(
        "num_schools",
        pa.float64(),
        "Schools with counted data: the day's count, or the mean over days",
    ),
    _f("school_submitted_count", pa.int64(), "Distinct schools with counted data in the period"),
    _f("school_all_count", pa.int64(), "In-scope open schools in the register"),
    *[_f(c, pa.int64(), "Persistent absence (Term and Year to date rows)") for c in PA_COUNT_COLUMNS],
    *_RATES,
    *[_f(name, pa.float64(), f"{num} / pa_enrolments x 100") for name, num in PA_RATE_COLUMNS],
]

VIEWS_UNSUPPRESSED = register(
    TableContract(
        name="stats_attendance_views_unsuppressed",
        zone=Zone.SCHOOL,
        schema=pa.schema([*_VIEW_FIELDS, *_VALUE_FIELDS]),
        partition_by=("time_frame", "period_start"),
        key=VIEW_DIMENSIONS,
        purpose="National, Regional and LA attendance by phase (and FSM, SEN, year group at National/Regional) "
        "for days, weeks, terms and the year to date, BEFORE disclosure control (an LA of one school shows "
        "that school): the exact figures that incremental aggregation and releases are built from. School "
        "zone: never published, never served to a role below the school grain.",
        pupil_level=False,
    )
)

#: Columns of :data:`VIEWS` that disclosure control suppresses (null when ``suppressed``). School counts
#: (``num_schools``, ``school_submitted_count``, ``school_all_count``) are not suppressed: which schools are
#: open and submitting is public (official_stats.disclosure).
SUPPRESSIBLE_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in _VALUE_FIELDS if f.name not in ("num_schools", "school_submitted_count", "school_all_count")
)

VIEWS = register(
    TableContract(
        name="stats_attendance_views",
        zone=Zone.LA_AND_ABOVE,
        schema=pa.schema(
            [
                *_VIEW_FIELDS,
                *_VALUE_FIELDS,
                _f(
                    "suppressed",
                    pa.bool_(),
                    "Disclosure control: true when this row's counts, enrolments and rates are confidential "
                    "(EES symbol c; they are stored as null)",
                    nullable=False,
                ),
                _f(
                    "suppression_reason",
                    pa.string(),
                    "single_school, few_pupils or secondary (protects a suppressed row from subtraction); "
                    "null when not suppressed",
                ),
                _f("controlled_at", UTC_TS, "When disclosure control was applied to this academic year"),
            ]
        ),
        partition_by=("academic_year",),
        key=VIEW_DIMENSIONS,
        purpose="National, Regional and LA attendance by phase (and FSM, SEN, year group at National/Regional) "
        "for days, weeks, terms and the year to date, AFTER disclosure control: the rows of a release as of "
        "the latest aggregated day (ISO week 53 left out, as in releases). A suppressed row keeps its "
        "dimensions and school counts; its counts, enrolments and rates are null (symbol c). Otherwise a "
        "null value means not applicable (symbol z). Rewritten per academic year by `attendance aggregate`.",
        pupil_level=False,
    )
)

AGGREGATION_STATE = register(
    TableContract(
        name="stats_aggregation_runs",
        zone=Zone.RESTRICTED,
        schema=pa.schema(
            [
                _f("run_id", pa.string(), "UUID of the run", nullable=False),
                _f("run_at", UTC_TS, "When the run finished", nullable=False),
                _f("mode", pa.string(), "incremental, date or full"),
                _f("sessions_version", pa.int64(), "attendance_sessions Delta version processed up to"),
                _f(
                    "optouts_fingerprint",
                    pa.string(),
                    "The opt-outs list the run used (urn, status, effective_at; JSON)",
                ),
                _f("dates_recomputed", pa.list_(pa.date32()), "Register days recomputed"),
                _f("excluded_marks", pa.string(), "Marks not counted, by reason (JSON of counts)"),
                _f("duration_seconds", pa.float64(), "Wall time of the run"),
            ]
        ),
        partition_by=(),
        key=("run_id",),
        purpose="One row per aggregation run: the state the next incremental run starts from, and an audit trail "
        "(restricted: the opt-outs fingerprint names schools; operations only, served to no role).",
        pupil_level=False,
    )
)

PENDING_EXTRACTS = register(
    TableContract(
        name="stats_pending_extracts",
        zone=Zone.SCHOOL,
        schema=pa.schema(
            [
                _f(
                    "extract_id",
                    pa.string(),
                    "Extract whose marks were held back (not complete when aggregated)",
                    nullable=False,
                ),
                _f("urn", pa.string(), "School URN", nullable=False),
                _f("date", pa.date32(), "Register day of the held-back marks", nullable=False),
                _f("first_seen_at", UTC_TS, "When a run first held them back"),
            ]
        ),
        partition_by=(),
        key=("extract_id", "date"),
        purpose="Register days to recompute when an extract that was not complete becomes complete.",
        pupil_level=False,
    )
)

CONTRACTS: tuple[TableContract, ...] = (
    PUPIL_DAY,
    PUPIL_PERIOD_TOTALS,
    SCHOOL_DAILY,
    VIEWS_UNSUPPRESSED,
    VIEWS,
    AGGREGATION_STATE,
    PENDING_EXTRACTS,
)
