"""The feed's Kafka topics and their deliberate configurations (documented in docs/topics.md)."""

from __future__ import annotations

from dataclasses import dataclass

from attendance.broker import bootstrap_servers
from attendance.errors import UserFacingError
from attendance.settings import Settings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    why: str


def topic_specs(settings: Settings) -> list[TopicSpec]:
    return [
        TopicSpec(
            settings.topic_extracts,
            settings.extracts_partitions,
            {
                "cleanup.policy": "delete",
                "retention.ms": str(settings.extracts_retention_days * DAY_MS),
                "retention.bytes": "-1",
                "max.message.bytes": str(max(settings.max_message_bytes + 48_576, 1_048_588)),
                "compression.type": "producer",
                "min.insync.replicas": "1",
            },
            "Every school's daily extract chunks, keyed by URN so one school's chunks stay in order on one "
            "partition. Several partitions let workers share the load; retention covers a week's replay.",
        ),
        TopicSpec(
            settings.topic_optouts,
            1,
            {
                "cleanup.policy": "compact",
                "min.compaction.lag.ms": "0",
                "segment.ms": str(3600 * 1000),
                "min.cleanable.dirty.ratio": "0.1",
            },
            "Each school's latest opt-out state, keyed by URN, compacted so the topic is the register of "
            "opt-outs forever. One partition: every worker reads all of it, in one order.",
        ),
        TopicSpec(
            settings.topic_deadletter,
            1,
            {
                "cleanup.policy": "delete",
                "retention.ms": str(settings.deadletter_retention_days * DAY_MS),
                "max.message.bytes": str(max(settings.max_message_bytes + 48_576, 1_048_588) * 11),
            },
            "Raw bytes of messages that could not be read at all (not UTF-8, not JSON), for the contractor "
            "to inspect; kept a month.",
        ),
    ]


def create_topics(settings: Settings) -> dict[str, str]:
    """Create missing topics; report existing ones. Idempotent."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings),
                                 request_timeout_ms=int(settings.connect_timeout_s * 1000))
    except KafkaError as exc:
        raise UserFacingError(f"cannot reach Kafka at {bootstrap_servers(settings)}: {exc}") from exc
    outcome: dict[str, str] = {}
    try:
        existing = set(admin.list_topics())
        for spec in topic_specs(settings):
            if spec.name in existing:
                outcome[spec.name] = "exists"
                continue
            try:
                admin.create_topics([NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.config)])
                outcome[spec.name] = f"created ({spec.partitions} partitions)"
            except TopicAlreadyExistsError:
                outcome[spec.name] = "exists"
    finally:
        admin.close()
    return outcome
