"""Proof by fault: workers killed with SIGKILL at random points while a day streams, and several workers
sharing a topic, leave the tables holding exactly the expected rows. Every loop is bounded in time and
count; everything targets 127.0.0.1."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from attendance.settings import Settings
from tests.faults.harness import (
    Sender,
    assert_exactly_expected,
    kill,
    make_world,
    run_until_drained,
    snapshot,
    start_worker,
    wait,
    worker_log,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

KILLS = 4
SMALL_BATCHES = {"ATTENDANCE_BATCH_MAX_MESSAGES": "6", "ATTENDANCE_BATCH_MAX_LATENCY_S": "0.2"}


def test_sigkill_at_random_points_loses_and_doubles_nothing(settings: Settings, tmp_path: Path):
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    print(f"fault seed {seed}")
    world = make_world(settings, tmp_path / "world", schools=30, days=2)
    files = world.files()
    sender = Sender(settings, files, pause_s=0.1)
    sender.start()
    kills = 0
    deadline = time.monotonic() + 240
    while kills < KILLS and time.monotonic() < deadline:
        worker = start_worker(settings, **SMALL_BATCHES)
        # Small batches commit every fraction of a second, so a random instant lands mid-batch or mid-commit.
        time.sleep(rng.uniform(4.0, 9.0))
        kill(worker)
        kills += 1
    sender.join(timeout=240)
    assert not sender.is_alive() and sender.error is None, sender.error
    assert kills == KILLS
    run_until_drained(settings, **SMALL_BATCHES)
    assert_exactly_expected(settings, files)


def test_two_workers_on_one_topic_equal_a_single_worker(settings: Settings, tmp_path: Path):
    world = make_world(settings, tmp_path / "world", schools=30, days=2)
    Sender(settings, world.files(), pause_s=0).run()

    single = settings.model_copy(update={"lake_uri": str(tmp_path / "lake-single"),
                                         "consumer_group": settings.consumer_group + "-single"})
    from tests.lake_factory import copy_register

    copy_register(settings.lake_uri, single.lake_uri)
    run_until_drained(single)

    pair = [start_worker(settings, until_drained=True, **SMALL_BATCHES) for _ in range(2)]
    try:
        for worker in pair:
            assert wait(worker, 240) == 0, worker_log(worker)
    finally:
        for worker in pair:
            kill(worker)
    assert_exactly_expected(settings, world.files())
    shared, alone = snapshot(settings), snapshot(single)
    for name in shared:
        assert shared[name].equals(alone[name]), f"{name} differs between two workers and one"
