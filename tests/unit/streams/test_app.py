"""The worker edge's pure decisions: when to fold, and the aiokafka rebalance-race shim."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.consumer.fetcher import Fetcher

from attendance.settings import Settings
from storage.sink import CommitResult
from streams.app import fold_reason, left_behind, tolerate_fetch_rebalance_race

SETTINGS = Settings(fold_idle_s=5.0, fold_interval_s=900.0)


@pytest.mark.parametrize(
    ("staged", "idle_s", "since_fold_s", "expected"),
    [
        (0, 60.0, 10_000.0, None),  # nothing staged: nothing to fold
        (10, 1.0, 10.0, None),  # busy, and the last fold was recent
        (10, 5.0, 10.0, "idle"),  # caught up
        (10, 1.0, 900.0, "interval"),  # busy for a long time: fold anyway
    ],
)
def test_a_worker_folds_when_idle_or_after_the_interval_and_only_with_rows_staged(
        staged: int, idle_s: float, since_fold_s: float, expected: str | None) -> None:
    assert fold_reason(staged, idle_s, since_fold_s, SETTINGS) == expected


def test_a_fetch_interrupted_by_a_rebalance_returns_nothing_instead_of_stopping_the_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def racing(self: object, partitions: object, timeout: float = 0, max_records: int | None = None) -> dict:
        raise KeyError("extracts-1")

    monkeypatch.setattr(Fetcher, "fetched_records", racing)
    tolerate_fetch_rebalance_race()
    assert asyncio.run(Fetcher.fetched_records(object(), set())) == {}
    tolerate_fetch_rebalance_race()  # applying it twice does not wrap twice
    assert Fetcher.fetched_records._tolerates_rebalance_race  # type: ignore[attr-defined]



def _result(committed: dict, stored: dict) -> CommitResult:
    return CommitResult(replay_skipped=not committed, offsets_committed=committed, offsets_already_stored=stored,
                        rows_written={}, sessions_version=None, conflicts=0, seconds=0.0)


def test_a_batch_skipped_as_stale_leaves_behind_the_held_partitions_delta_does_not_cover() -> None:
    t = "attendance.extracts.v1"
    offsets = {(t, 0): 100, (t, 1): 200, (t, 2): 300}
    # Partition 1 moved to another worker, which committed past this batch: the whole batch was refused.
    stale = _result({}, {(t, 1): 250})
    assert left_behind(offsets, stale, assigned={(t, 0), (t, 2)}) == {(t, 0), (t, 2)}
    # A plain replay (Delta already holds every offset) and a commit leave nothing behind.
    assert left_behind(offsets, _result({}, {(t, 0): 100, (t, 1): 250, (t, 2): 300}), {(t, 0), (t, 2)}) == set()
    assert left_behind(offsets, _result({(t, 0): 100, (t, 2): 300}, {(t, 1): 250}), {(t, 0), (t, 2)}) == set()
