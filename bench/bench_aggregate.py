"""Benchmark the daily aggregation: a 2,000-school day after 20 days of history vs after 1 day.

    .venv/bin/python bench/bench_aggregate.py [--schools 2000] [--pupils 200] [--history 20] [--repeats 3]

Builds two synthetic lakes (column-wise Arrow data written straight to Delta, as the sink would: sessions
partitioned by date, extracts, pupils, schools), aggregates their history, then times the incremental run
that processes one more school day (and, ``--repeats`` - 1 times, an amendment of that day). The incremental
design should make the cost follow the day's data, not the history: the script prints both medians and their
ratio (target <= 1.5). Prints no pupil value.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from official_stats import incremental, synthetic


def school_days(start: dt.date, count: int) -> list[dt.date]:
    days: list[dt.date] = []
    day = start
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day += dt.timedelta(days=1)
    return days


def amend(sessions: pa.Table, seed: int) -> pa.Table:
    """Turn 2% of the day's marks into N (no reason yet): an amendment touching the whole day."""
    rng = np.random.default_rng(seed)
    mask = pa.array(rng.random(sessions.num_rows) < 0.02)
    codes = pc.if_else(mask, pa.scalar("N"), sessions.column("code"))
    return sessions.set_column(sessions.schema.get_field_index("code"), "code", codes)


def build(lake: Path, roll: synthetic.SyntheticRoll, history: list[dt.date], new_day: dt.date) -> pa.Table:
    """Write and aggregate the history, then append the new day (not aggregated yet); returns its marks."""
    synthetic.write_reference(str(lake), roll)
    for day in history:
        sessions, extracts = synthetic.make_day(roll, day)
        synthetic.append_day(str(lake), sessions, extracts)
    incremental.run_aggregation(str(lake), optouts=None)
    sessions, extracts = synthetic.make_day(roll, new_day)
    synthetic.append_day(str(lake), sessions, extracts)
    return sessions


def timed_run(lake: Path, new_day: dt.date, label: str) -> float:
    t0 = time.perf_counter()
    report = incremental.run_aggregation(str(lake), optouts=None)
    elapsed = time.perf_counter() - t0
    assert report.dates_recomputed == [new_day], report.dates_recomputed
    steps = ", ".join(f"{k} {v:.2f}" for k, v in report.timings.items())
    print(f"  {label}: {elapsed:.2f}s ({steps})", flush=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schools", type=int, default=2000)
    parser.add_argument("--pupils", type=int, default=200, help="Pupils per school.")
    parser.add_argument("--history", type=int, default=20, help="School days of history in the long lake.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary lakes.")
    args = parser.parse_args()

    roll = synthetic.make_roll(args.schools, args.pupils, 2026, seed=7)
    days = school_days(dt.date(2026, 9, 7), args.history + 1)
    root = Path(tempfile.mkdtemp(prefix="bench_aggregate_"))
    lakes = {
        "short": (root / "short", days[:1], days[1]),
        "long": (root / "long", days[: args.history], days[args.history]),
    }
    timings: dict[str, list[float]] = {"short": [], "long": []}
    setup: dict[str, float] = {}
    try:
        marks_of: dict[str, pa.Table] = {}
        for name, (lake, history, new_day) in lakes.items():
            t0 = time.perf_counter()
            marks_of[name] = build(lake, roll, history, new_day)
            setup[name] = time.perf_counter() - t0
        # warm-up (first MERGE, first DataFusion session ...) on a tiny lake, so neither timed lake pays it
        tiny = synthetic.make_roll(5, 10, 2026, seed=3)
        tiny_marks = build(root / "warmup", tiny, days[:1], days[1])
        incremental.run_aggregation(str(root / "warmup"), optouts=None)
        synthetic.replace_marks(str(root / "warmup"), amend(tiny_marks, 9))
        incremental.run_aggregation(str(root / "warmup"), optouts=None)
        # interleaved, so that load from other processes on the machine hits both alike: the first run
        # processes the new day, the next ones an amendment of it
        for repeat in range(args.repeats):
            for name, (lake, _, new_day) in lakes.items():
                if repeat:
                    synthetic.replace_marks(str(lake), amend(marks_of[name], repeat))
                timings[name].append(timed_run(lake, new_day, f"{name} run {repeat + 1}"))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    short, long = timings["short"], timings["long"]
    short_setup, long_setup = setup["short"], setup["long"]

    marks = 2 * roll.pupils.num_rows
    one, twenty = statistics.median(short), statistics.median(long)
    print(f"day: {args.schools} schools, {roll.pupils.num_rows:,} pupils, {marks:,} session marks")
    print(
        f"after 1 day of history:   median {one:.2f}s  runs {', '.join(f'{t:.2f}' for t in short)}  "
        f"(setup {short_setup:.1f}s)"
    )
    print(
        f"after {args.history} days of history: median {twenty:.2f}s  runs "
        f"{', '.join(f'{t:.2f}' for t in long)}  "
        f"(setup {long_setup:.1f}s)"
    )
    ratio = twenty / one
    print(f"ratio {ratio:.2f} (target <= 1.5): {'OK' if ratio <= 1.5 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
