"""Shared fixtures. The integration suite runs against one real Kafka broker per test session, started
through the same code as `attendance kafka start`, and real Delta tables on disk."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from attendance import broker
from attendance.settings import Settings


@pytest.fixture(scope="session")
def kafka_broker_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """The state directory of the session's broker (None when an external cluster is used)."""
    if os.environ.get("ATTENDANCE_KAFKA_BOOTSTRAP"):
        yield None
        return
    state_dir = tmp_path_factory.mktemp("broker-state")
    settings = Settings(state_dir=state_dir)
    broker.start(settings, state_dir=state_dir)
    try:
        yield state_dir
    finally:
        broker.stop(settings, state_dir=state_dir, wipe=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker_state: Path | None) -> str:
    """A real broker for the session (or the cluster in ATTENDANCE_KAFKA_BOOTSTRAP, if set)."""
    if kafka_broker_state is None:
        return os.environ["ATTENDANCE_KAFKA_BOOTSTRAP"]
    info = broker.is_running(kafka_broker_state)
    assert info is not None, "the session's broker is not running"
    return info.bootstrap


@pytest.fixture()
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings isolated per test: fresh topic names and a fresh lake on the session's broker."""
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        lake_uri=str(tmp_path / "lake"),
        state_dir=tmp_path / "state",
        topic_extracts=f"test.extracts.{suffix}",
        topic_optouts=f"test.optouts.{suffix}",
        topic_deadletter=f"test.deadletter.{suffix}",
        consumer_group=f"test-worker-{suffix}",
        extracts_partitions=4,
        connect_timeout_s=5.0,
        delivery_timeout_s=10.0,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a subprocess (`attendance ...`)."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"ATTENDANCE_{name.upper()}"] = str(value)
    return env
