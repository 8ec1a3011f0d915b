"""Benchmark the Delta sink: a generated 2,000-school day, then the next day with amendments of the first.

Each day is written as the worker writes it (``DeltaSink.write_batch`` per batch), then folded
(``DeltaSink.fold``). Write throughput is session rows of the day per second from the first batch until the
last has committed: then every row is in Delta exactly once, and readers see the day's current state
(``storage.current`` resolves staged rows with their tables). The fold, which rewrites staged rows into
their tables (copy-on-write compaction, run when the worker is idle or by ``attendance aggregate``), is
timed separately, and the rate including it is printed too.

    .venv/bin/python bench/bench_sink.py [--schools 2000] [--pupils 380] [--batch-schools 250]

Builds the Arrow tables synthetically (column-wise: numpy + pyarrow.compute, no per-record Python),
writes them through ``DeltaSink.write_batch`` into a fresh lake in batches of ``--batch-schools`` schools
(what the worker would hand over), and prints session rows/s and pupil rows/s. Prints no pupil value.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from storage import lake
from storage.sink import DeltaSink, SinkBatch
from storage.tables import SCHOOLS

TOPIC = "attendance.extracts.v1"
PARTITIONS = 8
CODES = np.array(["/", "\\", "L", "I", "M", "N", "O", "U", "B", "C", "G"])
PRESENT = {"/", "\\", "L"}
AUTHORISED = {"I", "M", "C"}
UNAUTHORISED = {"N", "O", "U", "G"}


def _strings(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(pa.scalar(prefix), digits, "")


def make_school_roll(
    schools: int, pupils_per_school: int, seed: int
) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """URN per pupil, UPN per pupil (synthetic 13 chars, not check-lettered), school index per pupil."""
    rng = np.random.default_rng(seed)
    urns = rng.choice(np.arange(100000, 150000), size=schools, replace=False)
    school_of_pupil = np.repeat(np.arange(schools), pupils_per_school)
    pupil_number = np.arange(schools * pupils_per_school)
    return _strings("", urns[school_of_pupil], 6), _strings("X", pupil_number, 12), school_of_pupil


def session_rows(
    urn: pa.Array, upn: pa.Array, day: date, generated_at: datetime, rng: np.random.Generator, extract_id: str
) -> pa.Table:
    n = len(urn)
    codes = CODES[rng.integers(0, len(CODES), size=2 * n)]
    code = pa.array(codes)
    return pa.table(
        {
            "urn": pa.concat_arrays([urn, urn]),
            "upn": pa.concat_arrays([upn, upn]),
            "date": pa.array(np.full(2 * n, np.datetime64(day, "D"))).cast(pa.date32()),
            "session": pa.array(np.repeat(np.array(["AM", "PM"]), n)),
            "code": code,
            "is_possible": pa.array(np.ones(2 * n, dtype=bool)),
            "is_present": pc.is_in(code, pa.array(sorted(PRESENT))),
            "is_approved_educational_activity": pc.equal(code, "B"),
            "is_authorised": pc.is_in(code, pa.array(sorted(AUTHORISED))),
            "is_unauthorised": pc.is_in(code, pa.array(sorted(UNAUTHORISED))),
            "is_late": pc.is_in(code, pa.array(["L", "U"])),
            "extract_id": pa.array(np.full(2 * n, extract_id)),
            "generated_at": pa.array(
                np.full(2 * n, np.datetime64(generated_at.replace(tzinfo=None), "us"))
            ).cast(pa.timestamp("us", tz="UTC")),
        }
    )


def pupil_rows(
    urn: pa.Array,
    upn: pa.Array,
    generated_at: datetime,
    rng: np.random.Generator,
    extract_id: str,
    changed_share: float = 0.0,
) -> pa.Table:
    n = len(urn)
    year = rng.integers(1, 12, size=n)
    sen = np.array(["N", "K", "E"])[rng.choice(3, size=n, p=[0.82, 0.14, 0.04])]
    fsm = rng.random(n) < 0.25
    fsm = np.where(rng.random(n) < changed_share, ~fsm, fsm)
    return pa.table(
        {
            "urn": urn,
            "upn": upn,
            "date_of_birth": pa.array(
                np.datetime64("2020-09-01") - (year * 365 + rng.integers(0, 365, n)).astype("timedelta64[D]")
            ).cast(pa.date32()),
            "sex": pa.array(np.array(["M", "F"])[rng.integers(0, 2, n)]),
            "nc_year_group": pc.cast(pa.array(year), pa.string()),
            "ethnicity": pa.array(np.full(n, "WBRI")),
            "fsm_eligible": pa.array(fsm),
            "sen_provision": pa.array(sen),
            "looked_after": pa.array(rng.random(n) < 0.01),
            "admission_date": pa.array(np.full(n, np.datetime64("2024-09-04", "D"))).cast(pa.date32()),
            "extract_id": pa.array(np.full(n, extract_id)),
            "generated_at": pa.array(np.full(n, np.datetime64(generated_at.replace(tzinfo=None), "us"))).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
    )


def day_batches(
    urn: pa.Array,
    upn: pa.Array,
    school_of_pupil: np.ndarray,
    day: date,
    amend_share: float,
    batch_schools: int,
    offset_base: int,
    seed: int,
    changed_share: float,
) -> list[SinkBatch]:
    """The day's batches: each school's AM/PM marks, ``amend_share`` extra rows amending the previous five
    school days with a later generated_at, and its pupils."""
    rng = np.random.default_rng(seed)
    generated = datetime(day.year, day.month, day.day, 16, 0, tzinfo=UTC)
    schools = int(school_of_pupil.max()) + 1
    batches = []
    offset = offset_base
    for first in range(0, schools, batch_schools):
        rows = np.nonzero((school_of_pupil >= first) & (school_of_pupil < first + batch_schools))[0]
        b_urn, b_upn = urn.take(pa.array(rows)), upn.take(pa.array(rows))
        sessions = session_rows(b_urn, b_upn, day, generated, rng, f"extract-{day}-{first}")
        # Distinct pupils per amended day: an extract carrying one mark twice is rejected by validation
        # (duplicate_session), so the sink never sees it.
        amended = rng.choice(len(rows), size=int(2 * len(rows) * amend_share), replace=False)
        amend_days = [day - timedelta(days=d) for d in (1, 2, 3, 4, 5)]
        parts = [sessions]
        for index, amend_day in enumerate(amend_days):
            picked = amended[index :: len(amend_days)]
            parts.append(
                session_rows(
                    b_urn.take(pa.array(picked)),
                    b_upn.take(pa.array(picked)),
                    amend_day,
                    generated,
                    rng,
                    f"extract-{day}-{first}",
                ).slice(0, len(picked))
            )
        pupils = pupil_rows(b_urn, b_upn, generated, rng, f"extract-{day}-{first}", changed_share)
        offsets = {(TOPIC, p): offset + p for p in range(PARTITIONS)}
        offset += 1000
        batches.append(SinkBatch(sessions=pa.concat_tables(parts), pupils=pupils, offsets=offsets))
    return batches


def run_day(sink: DeltaSink, batches: list[SinkBatch], label: str) -> dict[str, float]:
    """Write the day's batches, then fold (as the worker does when it has drained); time both."""
    session_rows_total = sum(b.sessions.num_rows for b in batches if b.sessions is not None)
    pupil_rows_total = sum(b.pupils.num_rows for b in batches if b.pupils is not None)
    started = time.perf_counter()
    conflicts = 0
    for batch in batches:
        conflicts += sink.write_batch(batch).conflicts
    written = time.perf_counter()
    folded = sink.fold()
    finished = time.perf_counter()
    batches_s, fold_s, wall = written - started, finished - written, finished - started
    print(
        f"{label}: {len(batches)} batches, {session_rows_total:,} session rows, "
        f"{pupil_rows_total:,} pupil rows ({conflicts + folded.conflicts} conflicts)"
    )
    print(f"  batches (append new school-days, stage the rest): {batches_s:.2f} s")
    print(f"  write throughput: {session_rows_total / batches_s:,.0f} session rows/s "
          f"({pupil_rows_total / batches_s:,.0f} pupil rows/s alongside)")
    print(f"  then the fold (compaction): {folded.sessions.staged:,} staged marks, {folded.pupils.staged:,} "
          f"staged pupils: {fold_s:.2f} s; including it {session_rows_total / wall:,.0f} session rows/s")
    return {"session_rows": session_rows_total, "pupil_rows": pupil_rows_total, "seconds": wall,
            "batch_seconds": batches_s, "fold_seconds": fold_s}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--schools", type=int, default=2000)
    parser.add_argument("--pupils", type=int, default=380, help="Pupils per school.")
    parser.add_argument("--batch-schools", type=int, default=250, help="Schools per sink batch.")
    parser.add_argument("--amend-share", type=float, default=0.05)
    parser.add_argument("--lake", type=Path, default=None, help="Lake directory (default: a temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the lake afterwards.")
    args = parser.parse_args()

    lake_dir = args.lake or Path(tempfile.mkdtemp(prefix="bench-lake-"))
    shutil.rmtree(lake_dir, ignore_errors=True)
    try:
        generate_started = time.perf_counter()
        urn, upn, school_of_pupil = make_school_roll(args.schools, args.pupils, seed=1)
        day1 = date(2026, 11, 16)
        first = day_batches(urn, upn, school_of_pupil, day1, args.amend_share, args.batch_schools, 0, 2, 0.0)
        second = day_batches(
            urn,
            upn,
            school_of_pupil,
            day1 + timedelta(days=1),
            args.amend_share,
            args.batch_schools,
            100_000,
            3,
            0.01,
        )
        print(f"generated in {time.perf_counter() - generate_started:.1f} s; lake {lake_dir}")
        # The register's URNs: the pupils fold cuts its URN ranges at their quantiles.
        write_deltalake(SCHOOLS.path(str(lake_dir)), lake.conform(pa.table({"urn": pc.unique(urn)}), SCHOOLS))
        sink = DeltaSink(str(lake_dir), app_id_prefix="bench")
        run_day(sink, first, f"day 1 ({day1}, fresh lake)")
        run_day(sink, second, f"day 2 ({day1 + timedelta(days=1)}, amends day 1)")
    finally:
        if not args.keep and args.lake is None:
            shutil.rmtree(lake_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
