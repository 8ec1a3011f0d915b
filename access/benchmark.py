"""Throughput of the pseudonymisation: ``python -m access.benchmark [pupils] [days]``.

Synthetic UPNs only. Prints HMAC rates (distinct values, repeated pupils, Python's hmac per value) and one
end-to-end run of ``pseudonymise`` over a temporary Delta lake.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from access.pseudonymise import PupilKeyer, pseudonymise
from schemas.upn import make_upn
from storage.tables import ATTENDANCE_SESSIONS, PUPILS, UTC_TS

KEY = "benchmark-key-" + "0" * 32


def _filled(given: dict[str, pa.Array], schema: pa.Schema, rows: int) -> pa.Table:
    return pa.Table.from_pydict(
        {f.name: given.get(f.name, pa.nulls(rows, f.type)) for f in schema}, schema=schema
    )


def main(n_pupils: int = 20_000, days: int = 10) -> None:
    keyer = PupilKeyer(KEY)
    distinct = pa.array([f"B{i:012d}" for i in range(1_000_000)])
    started = time.perf_counter()
    keyer.keys(distinct)
    print(f"PupilKeyer.keys, 1M distinct values: {1e6 / (time.perf_counter() - started):,.0f} values/s")
    started = time.perf_counter()
    for value in distinct.to_pylist():
        hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()
    print(f"hmac.new per value, 1M: {1e6 / (time.perf_counter() - started):,.0f} values/s")
    repeated = pc.take(distinct.slice(0, 5000), pa.array([i % 5000 for i in range(1_000_000)]))
    started = time.perf_counter()
    keyer.keys(repeated)
    print(f"PupilKeyer.keys, 1M rows of 5,000 pupils: {1e6 / (time.perf_counter() - started):,.0f} rows/s")

    lake = tempfile.mkdtemp(prefix="pseudo-bench-") + "/lake"
    upns = [make_upn(373, 1000 + i // 1000, 26, i % 1000) for i in range(n_pupils)]
    urns = [f"{100000 + i // 1000}" for i in range(n_pupils)]
    at = dt.datetime(2026, 11, 17, tzinfo=dt.UTC)
    for k in range(days):
        rows = n_pupils * 2
        given = {
            "urn": pa.array(urns * 2),
            "upn": pa.array(upns * 2),
            "date": pa.array([dt.date(2026, 11, 2) + dt.timedelta(days=k)] * rows, pa.date32()),
            "session": pa.array(["AM"] * n_pupils + ["PM"] * n_pupils),
            "code": pa.array(["/"] * rows),
        }
        write_deltalake(
            ATTENDANCE_SESSIONS.path(lake),
            _filled(given, ATTENDANCE_SESSIONS.schema, rows),
            mode="append",
            partition_by=["date"],
        )
    given = {
        "urn": pa.array(urns),
        "upn": pa.array(upns),
        "date_of_birth": pa.array([dt.date(2016, 5, 1)] * n_pupils, pa.date32()),
        "generated_at": pa.array([at] * n_pupils, UTC_TS),
    }
    write_deltalake(PUPILS.path(lake), _filled(given, PUPILS.schema, n_pupils), mode="overwrite")
    result = pseudonymise(lake, KEY, storage_options={})
    print(
        f"pseudonymise end to end: {result.session_rows:,} session rows over {result.dates_refreshed} dates "
        f"+ {result.pupil_rows:,} pupils in {result.seconds:.2f}s = {result.rows_per_second:,.0f} rows/s"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
