"""The worker edge's pure decisions: when to fold, and the aiokafka rebalance-race shim."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.consumer.fetcher import Fetcher

from attendance.settings import Settings
from streams.app import fold_reason, tolerate_fetch_rebalance_race

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

