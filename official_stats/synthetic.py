"""Synthetic sink tables (schools, pupils, extracts, attendance_sessions) for tests and the benchmark.

The real generator and worker are built elsewhere; this writes the tables directly with
``deltalake.write_deltalake`` in the shapes of ``storage.tables``, column-wise (numpy + pyarrow), with no
real pupil data (UPNs are synthetic 13-character strings).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from schemas.reference import local_authorities
from storage.tables import table

UTC = dt.UTC
#: Codes and weights of a plausible day (about 93% attendance).
DEFAULT_CODES = np.array(["/", "L", "I", "M", "N", "O", "U", "B", "C", "G", "D", "#"])
DEFAULT_WEIGHTS = np.array([0.895, 0.01, 0.035, 0.006, 0.01, 0.01, 0.002, 0.006, 0.005, 0.005, 0.008, 0.008])


def _strings(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(pa.scalar(prefix), digits, "")


@dataclass
class SyntheticRoll:
    schools: pa.Table
    pupils: pa.Table


def make_roll(
    n_schools: int,
    pupils_per_school: int,
    academic_year_start: int,
    seed: int = 1,
    la_codes: list[str] | None = None,
) -> SyntheticRoll:
    """Schools spread over LAs (3 in 4 primary, then secondary, some special) and their pupils."""
    rng = np.random.default_rng(seed)
    las = local_authorities()
    codes = la_codes or sorted(las)
    school_index = np.arange(n_schools)
    la_for_school = [las[codes[i % len(codes)]] for i in school_index]
    phases = np.where(school_index % 20 == 19, "Special", np.where(school_index % 4 == 3, "Secondary", "Primary"))
    urns = _strings("1", school_index, 5)
    schools = pa.table(
        {
            "urn": urns,
            "laestab": pa.array([la.old_la_code + f"{2000 + i % 8000:04d}" for i, la in enumerate(la_for_school)]),
            "school_name": _strings("Synthetic school ", school_index, 5),
            "old_la_code": pa.array([la.old_la_code for la in la_for_school]),
            "new_la_code": pa.array([la.new_la_code for la in la_for_school]),
            "la_name": pa.array([la.la_name for la in la_for_school]),
            "region_code": pa.array([la.region_code for la in la_for_school]),
            "region_name": pa.array([la.region_name for la in la_for_school]),
            "type_of_establishment": pa.array(["Community school"] * n_schools),
            "establishment_type_group": pa.array(["Local authority maintained schools"] * n_schools),
            "status": pa.array(["Open"] * n_schools),
            "phase_of_education": pa.array(phases.tolist()),
            "attendance_phase": pa.array(phases.tolist()),
            "trust_code": pa.nulls(n_schools, pa.string()),
            "trust_name": pa.nulls(n_schools, pa.string()),
            "open_date": pa.nulls(n_schools, pa.date32()),
            "close_date": pa.nulls(n_schools, pa.date32()),
            "loaded_at": pa.array(
                [dt.datetime(academic_year_start, 9, 1, tzinfo=UTC)] * n_schools, pa.timestamp("us", tz="UTC")
            ),
        }
    )
    n = n_schools * pupils_per_school
    pupil_school = np.repeat(school_index, pupils_per_school)
    # ages 5-15 at 31 August (Primary 5-10, Secondary/Special 11-15), a few out of scope (4 and 16)
    is_secondary = np.repeat(phases != "Primary", pupils_per_school)
    age = np.where(is_secondary, rng.integers(11, 17, n), rng.integers(4, 11, n))
    birth_year = academic_year_start - age - 1
    birth_day = rng.integers(0, 365, n)
    september = np.array(birth_year - 1970, dtype="datetime64[Y]").astype("datetime64[M]") + np.timedelta64(8, "M")
    dob = september.astype("datetime64[D]") + birth_day
    year_group = np.clip(age - 4, 0, 13).astype(str)
    year_group = np.where(year_group == "0", "R", year_group)
    pupils = pa.table(
        {
            "urn": pc.take(urns, pa.array(pupil_school)),
            "upn": _strings("S", np.arange(n), 12),
            "date_of_birth": pa.array(dob, pa.date32()),
            "sex": pa.array(np.where(rng.random(n) < 0.5, "M", "F")),
            "nc_year_group": pa.array(year_group),
            "ethnicity": pa.nulls(n, pa.string()),
            "fsm_eligible": pa.array(rng.random(n) < 0.24),
            "sen_provision": pa.array(rng.choice(np.array(["N", "K", "E"]), n, p=[0.83, 0.13, 0.04])),
            "looked_after": pa.array(np.zeros(n, dtype=bool)),
            "child_in_need": pa.nulls(n, pa.bool_()),
            "child_protection_plan": pa.nulls(n, pa.bool_()),
            "admission_date": pa.array([dt.date(academic_year_start, 9, 1)] * n, pa.date32()),
            "leaving_date": pa.nulls(n, pa.date32()),
            "extract_id": pa.nulls(n, pa.string()),
            "generated_at": pa.array(
                [dt.datetime(academic_year_start, 9, 1, tzinfo=UTC)] * n, pa.timestamp("us", tz="UTC")
            ),
            "current_since": pa.array(
                [dt.datetime(academic_year_start, 9, 1, tzinfo=UTC)] * n, pa.timestamp("us", tz="UTC")
            ),
        }
    )
    return SyntheticRoll(schools, pupils)


def make_day(
    roll: SyntheticRoll,
    day: dt.date,
    seed: int = 0,
    codes: np.ndarray = DEFAULT_CODES,
    weights: np.ndarray = DEFAULT_WEIGHTS,
    status: str = "complete",
) -> tuple[pa.Table, pa.Table]:
    """(attendance_sessions rows, extracts rows) for every pupil on ``day``: one complete extract per
    school."""
    rng = np.random.default_rng(seed + day.toordinal())
    pupils = roll.pupils
    n = pupils.num_rows
    am = rng.choice(codes, n, p=weights / weights.sum())
    pm = np.where(am == "/", "\\", np.where(rng.random(n) < 0.97, am, "/"))
    pm = np.where(pm == "/", "\\", pm)
    pm = np.where(am == "L", "\\", pm)
    school_urns = roll.schools.column("urn")
    extract_ids = pa.array([str(uuid.UUID(int=(day.toordinal() << 32) + i)) for i in range(school_urns.length())])
    index = pc.index_in(pupils.column("urn"), value_set=school_urns)
    pupil_extract = pc.take(extract_ids, index)
    generated = dt.datetime.combine(day, dt.time(17, 0), tzinfo=UTC)
    sessions = pa.table(
        {
            "urn": pa.concat_arrays([pupils.column("urn").combine_chunks()] * 2),
            "upn": pa.concat_arrays([pupils.column("upn").combine_chunks()] * 2),
            "date": pa.array([day] * (2 * n), pa.date32()),
            "session": pa.array(["AM"] * n + ["PM"] * n),
            "code": pa.array(np.concatenate([am, pm])),
            "is_possible": pa.nulls(2 * n, pa.bool_()),
            "is_present": pa.nulls(2 * n, pa.bool_()),
            "is_approved_educational_activity": pa.nulls(2 * n, pa.bool_()),
            "is_authorised": pa.nulls(2 * n, pa.bool_()),
            "is_unauthorised": pa.nulls(2 * n, pa.bool_()),
            "is_late": pa.nulls(2 * n, pa.bool_()),
            "extract_id": pa.concat_arrays(
                [pupil_extract.combine_chunks() if hasattr(pupil_extract, "combine_chunks") else pupil_extract] * 2
            ),
            "generated_at": pa.array([generated] * (2 * n), pa.timestamp("us", tz="UTC")),
            "ingested_at": pa.array([generated] * (2 * n), pa.timestamp("us", tz="UTC")),
        }
    )
    m = school_urns.length()
    extracts = pa.table(
        {
            "extract_id": extract_ids,
            "urn": school_urns,
            "laestab": roll.schools.column("laestab"),
            "extract_date": pa.array([day] * m, pa.date32()),
            "generated_at": pa.array([generated] * m, pa.timestamp("us", tz="UTC")),
            "chunk_count": pa.array([1] * m, pa.int32()),
            "chunks_received": pa.array([1] * m, pa.int32()),
            "pupil_count": pa.nulls(m, pa.int32()),
            "pupils_accepted": pa.nulls(m, pa.int32()),
            "pupils_rejected": pa.nulls(m, pa.int32()),
            "marks_accepted": pa.nulls(m, pa.int32()),
            "marks_rejected": pa.nulls(m, pa.int32()),
            "status": pa.array([status] * m),
            "first_seen_at": pa.array([generated] * m, pa.timestamp("us", tz="UTC")),
            "last_seen_at": pa.array([generated] * m, pa.timestamp("us", tz="UTC")),
        }
    )
    return sessions, extracts


def conform(data: pa.Table, name: str) -> pa.Table:
    """``data`` in the sink table's contract schema (missing nullable columns filled with nulls)."""
    schema = table(name).schema
    columns = [
        data.column(f.name).cast(f.type) if f.name in data.column_names else pa.nulls(data.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def write_reference(lake_uri: str, roll: SyntheticRoll, cdf: bool = False) -> None:
    """Write the schools and pupils tables (overwrite)."""
    write_deltalake(table("schools").path(lake_uri), conform(roll.schools, "schools"), mode="overwrite")
    write_deltalake(table("pupils").path(lake_uri), conform(roll.pupils, "pupils"), mode="overwrite")


def append_day(lake_uri: str, sessions: pa.Table, extracts: pa.Table, cdf: bool = False) -> None:
    """Append a day's sessions (partitioned by date) and its extracts, as the sink would."""
    configuration = {"delta.enableChangeDataFeed": "true"} if cdf else None
    write_deltalake(
        table("attendance_sessions").path(lake_uri),
        conform(sessions, "attendance_sessions"),
        mode="append",
        partition_by=["date"],
        configuration=configuration,
    )
    write_deltalake(table("extracts").path(lake_uri), conform(extracts, "extracts"), mode="append")


def replace_marks(lake_uri: str, sessions: pa.Table) -> None:
    """Replace whole date partitions of attendance_sessions (an amendment of those days)."""
    days = sorted(set(sessions.column("date").to_pylist()))
    predicate = " OR ".join(f"date = '{d.isoformat()}'" for d in days)
    write_deltalake(
        table("attendance_sessions").path(lake_uri),
        conform(sessions, "attendance_sessions"),
        mode="overwrite",
        predicate=predicate,
        partition_by=["date"],
    )
