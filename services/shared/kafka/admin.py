"""Topic administration: Flywheel's topics created when missing (idempotent), and checked at start.

Every topic is keyed by model name, so the partition count is the unit of scale-out: one partition is
consumed by one instance of a worker at a time, and a model's events stay in order on its partition.
`ensure_topics` creates what is missing with the configured partitions and replication factor and
reports existing topics that differ; `check_topics` (every service at start) only reports, clearly,
because an existing topic is never changed behind an operator's back (partitions can only be added, and
adding them moves keys to other partitions).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from events import ALL_TOPICS, TOPIC_CONFIGS
from services.shared.settings import FlywheelSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicShape:
    partitions: int
    replication_factor: int


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    # topic -> (as it is, as configured)
    differing: dict[str, tuple[TopicShape, TopicShape]] = field(default_factory=dict)
    shapes: dict[str, TopicShape] = field(default_factory=dict)  # of the topics that exist

    def problems(self) -> list[str]:
        lines = [f"topic {t} does not exist" for t in self.missing]
        for topic, (actual, wanted) in sorted(self.differing.items()):
            lines.append(
                f"topic {topic} has {actual.partitions} partitions and replication factor "
                f"{actual.replication_factor}; configured: {wanted.partitions} and "
                f"{wanted.replication_factor}"
            )
        return lines


def _admin(bootstrap_servers: str, timeout_s: float) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap_servers.split(","),
        client_id="flywheel-admin",
        request_timeout_ms=int(timeout_s * 1000),
    )


def group_has_committed(bootstrap_servers: str, group_id: str, timeout_s: float = 10.0) -> bool:
    """Has consumer group `group_id` committed any offset (it consumed before)? Blocking."""
    admin = _admin(bootstrap_servers, timeout_s)
    try:
        offsets = admin.list_group_offsets({group_id: None}).get(group_id) or {}
    finally:
        admin.close()
    return any(meta.offset >= 0 for meta in offsets.values())


def describe_topics(admin: KafkaAdminClient, topics: Iterable[str]) -> dict[str, TopicShape]:
    """The shape of the given topics that exist."""
    wanted = set(topics)
    existing = wanted & set(admin.list_topics())
    shapes = {}
    for described in admin.describe_topics(sorted(existing)) if existing else []:
        partitions = described.get("partitions") or []
        replicas = max((len(p.get("replica_nodes") or []) for p in partitions), default=0)
        shapes[described["name"]] = TopicShape(len(partitions), replicas)
    return shapes


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str] = ALL_TOPICS,
    partitions: int = 6,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
    *,
    shape: TopicShape | None = None,
) -> TopicReport:
    """Create the topics that do not exist yet; report the created ones and those that differ."""
    if shape is not None:
        partitions, replication_factor = shape.partitions, shape.replication_factor
    topics = list(topics)
    wanted = TopicShape(partitions, replication_factor)
    admin = _admin(bootstrap_servers, timeout_s)
    try:
        existing = describe_topics(admin, topics)
        report = TopicReport(created=[t for t in topics if t not in existing], shapes=existing)
        if report.created:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(
                            t,
                            num_partitions=partitions,
                            replication_factor=replication_factor,
                            topic_configs=TOPIC_CONFIGS.get(t, {}),
                        )
                        for t in report.created
                    ],
                    timeout_ms=int(timeout_s * 1000),
                )
            log.info(
                "created topics %s (%d partitions, replication factor %d)",
                report.created,
                partitions,
                replication_factor,
            )
        report.differing = {t: (shape, wanted) for t, shape in existing.items() if shape != wanted}
        for problem in report.problems():
            log.warning("%s", problem)
        return report
    finally:
        admin.close()


def topic_shape(env: Mapping[str, str]) -> TopicShape:
    """`partitions` and `replication_factor` from FLYWHEEL_KAFKA_PARTITIONS / _REPLICATION_FACTOR in
    `env` (defaults as in the settings), for tools that start a stack from an environment."""
    fields = FlywheelSettings.model_fields
    partitions = env.get("FLYWHEEL_KAFKA_PARTITIONS") or fields["kafka_partitions"].default
    replicas = env.get("FLYWHEEL_KAFKA_REPLICATION_FACTOR") or fields["kafka_replication_factor"].default
    return TopicShape(int(partitions), int(replicas))


def ensure_topics_for(settings: FlywheelSettings, topics: Iterable[str] = ALL_TOPICS) -> TopicReport:
    return ensure_topics(
        settings.kafka_bootstrap_servers, topics, settings.kafka_partitions, settings.kafka_replication_factor
    )


def check_topics(settings: FlywheelSettings, topics: Iterable[str], service: str) -> TopicReport:
    """At start: say clearly when the topics a service uses are missing or differ from the configuration
    (never fails the start: Kafka may be down now and the service retries on its own)."""
    topics = list(topics)
    wanted = TopicShape(settings.kafka_partitions, settings.kafka_replication_factor)
    report = TopicReport()
    try:
        admin = _admin(settings.kafka_bootstrap_servers, 5.0)
    except Exception as exc:
        log.warning("%s: cannot check topics %s now: %r", service, topics, exc)
        return report
    try:
        existing = describe_topics(admin, topics)
    except Exception as exc:
        log.warning("%s: cannot check topics %s now: %r", service, topics, exc)
        return report
    finally:
        admin.close()
    report.shapes = existing
    report.missing = [t for t in topics if t not in existing]
    report.differing = {t: (shape, wanted) for t, shape in existing.items() if shape != wanted}
    for problem in report.problems():
        log.warning(
            "%s: %s (FLYWHEEL_KAFKA_PARTITIONS / FLYWHEEL_KAFKA_REPLICATION_FACTOR)", service, problem
        )
    return report
