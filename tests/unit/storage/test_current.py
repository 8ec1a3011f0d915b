"""Reading the current state before a fold: the resolution agrees with what the fold then writes."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from storage import lake
from storage.current import current_extracts, current_pupils, current_sessions, read_current
from storage.sink import DeltaSink, SinkBatch
from storage.tables import ATTENDANCE_SESSIONS, EXTRACTS, PUPILS, TableContract

TOPIC = "attendance.extracts.v1"
DAY = date(2026, 11, 16)
NINE = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)
TEN = NINE + timedelta(hours=1)
ELEVEN = NINE + timedelta(hours=2)


def _frame(contract: TableContract, rows: list[dict]) -> pl.LazyFrame:
    frame = pl.from_arrow(lake.conform(pa.Table.from_pylist(rows), contract))
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()


def _mark(code: str, generated_at: datetime, upn: str = "A1") -> dict:
    return {"urn": "100001", "upn": upn, "date": DAY, "session": "AM", "code": code, "generated_at": generated_at,
            "extract_id": f"x-{generated_at:%H}"}


def test_a_newer_staged_mark_wins_and_an_older_or_equal_one_does_not() -> None:
    stored = _frame(ATTENDANCE_SESSIONS, [_mark("/", TEN, "A1"), _mark("/", TEN, "A2"), _mark("/", TEN, "A3")])
    staged = _frame(ATTENDANCE_SESSIONS, [_mark("N", ELEVEN, "A1"), _mark("N", NINE, "A2"), _mark("N", TEN, "A3"),
                                          _mark("L", NINE, "A4"), _mark("U", TEN, "A4")])
    codes = dict(current_sessions(stored, staged).select("upn", "code").collect().iter_rows())
    assert codes == {"A1": "N", "A2": "/", "A3": "/", "A4": "U"}


def _pupil(sen: str, generated_at: datetime, staged_at: datetime | None = None) -> dict:
    return {"urn": "100001", "upn": "A1", "sen_provision": sen, "generated_at": generated_at,
            "extract_id": f"x-{generated_at:%H}", "current_since": staged_at or generated_at}


def test_a_pupils_version_is_current_since_the_run_of_records_saying_it_began() -> None:
    stored = _frame(PUPILS, [_pupil("N", NINE, NINE)])
    noon, one = NINE.replace(hour=12), NINE.replace(hour=13)
    [row] = current_pupils(stored, _frame(PUPILS, [_pupil("K", TEN, noon), _pupil("K", ELEVEN, one)])
                           ).collect().to_dicts()
    assert (row["sen_provision"], row["generated_at"], row["current_since"]) == ("K", ELEVEN, noon)
    # Saying the same as stored moves the provenance only; an older record never wins.
    [row] = current_pupils(stored, _frame(PUPILS, [_pupil("N", ELEVEN, one), _pupil("E", NINE - timedelta(1))])
                           ).collect().to_dicts()
    assert (row["sen_provision"], row["generated_at"], row["current_since"]) == ("N", ELEVEN, NINE)


def test_an_extracts_newest_state_wins_with_its_earliest_first_sighting() -> None:
    def state(status: str, first: datetime, last: datetime | None) -> dict:
        return {"extract_id": "e1", "urn": "100001", "status": status, "first_seen_at": first, "last_seen_at": last}

    stored = _frame(EXTRACTS, [state("incomplete", TEN, TEN)])
    staged = _frame(EXTRACTS, [state("complete", ELEVEN, ELEVEN), state("incomplete", NINE, NINE)])
    [row] = current_extracts(stored, staged).collect().to_dicts()
    assert (row["status"], row["first_seen_at"], row["last_seen_at"]) == ("complete", NINE, ELEVEN)


def _snapshot(lake_uri: str, contract: TableContract, current: bool) -> list[tuple]:
    frame = read_current(contract, lake_uri) if current else pl.from_arrow(lake.read_table(contract, lake_uri))
    assert isinstance(frame, pl.DataFrame)
    drop = [c for c in ("ingested_at",) if c in frame.columns]
    return sorted(frame.drop(drop).rows(), key=repr)


def _random_batch(rng: random.Random, offset: int, clock: datetime) -> SinkBatch:
    """A few schools' marks over three days, pupils and extract states, with random generated_at: newer,
    older and equal to what may be stored."""
    marks, pupil_rows, extracts = [], [], []
    for urn in rng.sample(["100001", "100002", "100003"], 2):
        generated = NINE + timedelta(minutes=rng.randrange(0, 600, 30))
        extract_id = f"{urn}-{generated:%H%M}"
        for upn in ("A1", "A2", "A3"):
            for day in rng.sample([DAY, DAY + timedelta(1), DAY + timedelta(2)], 2):
                marks.append({"urn": urn, "upn": upn, "date": day, "session": rng.choice(["AM", "PM"]),
                              "code": rng.choice("/NLU"), "extract_id": extract_id, "generated_at": generated})
            pupil_rows.append({"urn": urn, "upn": upn, "sen_provision": rng.choice("NK"),
                               "fsm_eligible": rng.random() < 0.5, "extract_id": extract_id,
                               "generated_at": generated})
        extracts.append({"extract_id": f"{urn}-e", "urn": urn, "status": rng.choice(["incomplete", "complete"]),
                         "first_seen_at": clock - timedelta(minutes=rng.randrange(60)), "last_seen_at": clock})
    table = pa.Table.from_pylist
    unique_marks = {(m["urn"], m["upn"], m["date"], m["session"]): m for m in marks}
    return SinkBatch(sessions=table(list(unique_marks.values())), pupils=table(pupil_rows),
                     extracts=table(extracts), offsets={(TOPIC, 0): offset})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reading_the_current_state_before_a_fold_gives_what_the_fold_writes(tmp_path: Path, seed: int) -> None:
    lake_uri = str(tmp_path / "lake")
    rng = random.Random(seed)
    clock = iter(NINE + timedelta(minutes=minute) for minute in range(10_000))
    sink = DeltaSink(lake_uri, clock=lambda: next(clock))
    for offset in range(1, 13):
        sink.write_batch(_random_batch(rng, offset, NINE + timedelta(minutes=offset)))
        if rng.random() < 0.3:
            sink.fold()
        for contract in (ATTENDANCE_SESSIONS, PUPILS, EXTRACTS):
            before = _snapshot(lake_uri, contract, current=True)
            if rng.random() < 0.25:  # check a fold against the resolution now and then (folds are slow)
                sink.fold()
                assert _snapshot(lake_uri, contract, current=False) == before, contract.name
    sink.fold()
    for contract in (ATTENDANCE_SESSIONS, PUPILS, EXTRACTS):
        assert _snapshot(lake_uri, contract, current=True) == _snapshot(lake_uri, contract, current=False)
