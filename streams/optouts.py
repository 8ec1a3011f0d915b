"""School opt-outs: the pure decision, and the register read from the compacted opt-outs topic.

Ordering guarantee: before a batch of extracts is judged, the worker reads the opt-outs topic up to its end
offset *as of that moment* (:meth:`OptOutRegister.catch_up`). Any opt-out published before the extract was
consumed therefore has a lower offset and is seen, whichever worker holds the school's partition. Every
worker reads the whole (one-partition, compacted) topic itself, as Kafka Streams' global tables do; a Faust
GlobalTable could not give this read-your-writes barrier, because its catch-up position is internal.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from schemas.contract import OptOutEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptOutState:
    urn: str
    status: str  # opted_out | opted_in
    effective_at: dt.datetime
    purge: bool
    recorded_by: str
    reason: str | None


def is_opted_out(state: OptOutState | None, now: dt.datetime) -> bool:
    """Whether the school's data must not be stored at ``now``.

    An opt-out counts from its effective time. An opt-in resumes storage from its effective time; until
    then the school stays opted out (the topic is compacted, so a pending opt-in replaced the opt-out).
    """
    if state is None:
        return False
    if state.status == "opted_out":
        return state.effective_at <= now
    return state.effective_at > now


def opted_out_urns(states: Iterable[OptOutState], now: dt.datetime) -> frozenset[str]:
    return frozenset(s.urn for s in states if is_opted_out(s, now))


def parse_event(value: bytes | None, key: bytes | None) -> OptOutState | None:
    """Decode one opt-outs topic record; a tombstone (None) clears the school's state."""
    if value is None:
        return None
    event = OptOutEvent.model_validate_json(value)
    if key is not None and key.decode() != event.urn:
        raise ValueError("opt-out record key does not match its urn")
    return OptOutState(event.urn, event.status, event.effective_at, event.purge, event.recorded_by, event.reason)


def encode_event(event: OptOutEvent) -> tuple[bytes, bytes]:
    return event.urn.encode(), orjson.dumps(event.model_dump(mode="json"))


class OptOutRegister:
    """Every school's latest opt-out state, read from the compacted topic by this process itself."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap, self.topic = bootstrap, topic
        self.states: dict[str, OptOutState] = {}
        self._consumer = None
        self._end_offsets = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                          auto_offset_reset="earliest", group_id=None)
        await self._consumer.start()
        # End offsets are asked on a connection of their own: a broker answers one request per connection at
        # a time, and the reading consumer's connection nearly always has a fetch waiting (up to
        # fetch_max_wait_ms, 500 ms) for records on this quiet topic, which would delay every barrier by that
        # much (measured: 0.2-0.5 s a batch). This consumer is assigned nothing, so it never fetches.
        self._end_offsets = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                             group_id=None)
        await self._end_offsets.start()
        partitions = self._consumer.partitions_for_topic(self.topic) or {0}
        self._tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_beginning(*self._tps)

    async def catch_up(self, timeout_s: float = 30.0) -> None:
        """Read the topic up to its current end offsets (the ordering barrier)."""
        import asyncio

        consumer = self._consumer
        assert consumer is not None and self._end_offsets is not None, "start() first"
        ends = await self._end_offsets.end_offsets(self._tps)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any([await consumer.position(tp) < ends[tp] for tp in self._tps]):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"could not read the opt-outs topic {self.topic} to its end in {timeout_s}s")
            batches = await consumer.getmany(*self._tps, timeout_ms=500)
            for records in batches.values():
                for record in records:
                    self._apply(record.key, record.value)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        try:
            state = parse_event(value, key)
        except ValueError:
            log.error("ignored an unreadable opt-out record (key length %s)", len(key or b""))
            return
        if state is None:
            if key is not None:
                self.states.pop(key.decode(errors="replace"), None)
        else:
            self.states[state.urn] = state

    def opted_out(self, now: dt.datetime) -> frozenset[str]:
        return opted_out_urns(self.states.values(), now)

    async def stop(self) -> None:
        for consumer in (self._consumer, self._end_offsets):
            if consumer is not None:
                await consumer.stop()
        self._consumer = self._end_offsets = None


def read_optouts(bootstrap: str, topic: str, timeout_s: float = 10.0) -> dict[str, OptOutState]:
    """Synchronous read of every school's latest state (CLI, aggregation, purge verification)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return {}
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        register = OptOutRegister(bootstrap, topic)
        import time

        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s}s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    register._apply(record.key, record.value)
        return register.states
    finally:
        consumer.close()


def publish_event(bootstrap: str, topic: str, event: OptOutEvent, timeout_s: float = 10.0) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                             max_block_ms=int(timeout_s * 1000))
    try:
        key, value = encode_event(event)
        producer.send(topic, key=key, value=value).get(timeout=timeout_s)
    finally:
        producer.close(timeout=5)
