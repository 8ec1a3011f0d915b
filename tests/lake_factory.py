"""Write small reference tables straight to Delta for tests (the GIAS loader has its own tests)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from deltalake import write_deltalake

from schemas.reference import local_authorities
from storage.tables import SCHOOLS


def write_register(lake_uri: str, schools: list[tuple[str, str, str]], status: str = "Open") -> pa.Table:
    """schools: (urn, laestab, attendance_phase). LA facts come from the reference tables."""
    las = local_authorities()
    rows = []
    for urn, laestab, phase in schools:
        la = las[laestab[:3]]
        rows.append({
            "urn": urn, "laestab": laestab, "school_name": f"School {urn}", "old_la_code": la.old_la_code,
            "new_la_code": la.new_la_code, "la_name": la.la_name, "region_code": la.region_code,
            "region_name": la.region_name, "type_of_establishment": "Community school",
            "establishment_type_group": "Local authority maintained schools", "status": status,
            "phase_of_education": phase, "attendance_phase": phase, "trust_code": None, "trust_name": None,
            "open_date": dt.date(2000, 1, 1), "close_date": None,
            "loaded_at": dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
        })
    table = pa.Table.from_pylist(rows, schema=SCHOOLS.schema)
    write_deltalake(SCHOOLS.path(lake_uri), table, mode="overwrite")
    return table


def copy_register(from_lake: str, to_lake: str) -> None:
    """Give a second lake the same school register (for comparing two runs of the pipeline)."""
    from deltalake import DeltaTable

    write_deltalake(SCHOOLS.path(to_lake), DeltaTable(SCHOOLS.path(from_lake)).to_pyarrow_table(), mode="overwrite")
