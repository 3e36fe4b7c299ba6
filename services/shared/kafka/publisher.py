"""Publishing events to Kafka with acknowledgement: kafka-python's idempotent producer (acks=all).

The callers that must not answer before Kafka has the event (the registry watcher's webhook endpoint,
the outbox relay) await `publish`, which resolves only when every record was acknowledged, and raises
`PublishError` when the broker cannot be reached in time. kafka-python is used because its idempotent
producer works on both Apache Kafka and the embedded broker (aiokafka's InitProducerId does not).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError

from events import TOPIC_OF, Event, encode, event_key
from services.shared.kafka.profile import BrokerProfile

log = logging.getLogger(__name__)


def broker_reachable(server: str, timeout_s: float = 1.0) -> bool:
    host, _, port = server.strip().rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


class PublishError(RuntimeError):
    """Kafka did not acknowledge the records in time (unreachable, timeout, fatal producer error)."""


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes
    value: bytes

    @classmethod
    def of(cls, event: Event) -> Record:
        return cls(topic=TOPIC_OF[type(event)], key=event_key(event), value=encode(event))


@dataclass(frozen=True)
class Acked:
    topic: str
    partition: int
    offset: int


class KafkaPublisher:
    """Thread-safe, lazily connected idempotent producer; re-created after a fatal error."""

    def __init__(
        self,
        bootstrap_servers: str,
        profile: BrokerProfile,
        client_id: str,
        timeout_s: float = 5.0,
        *,
        bulk: bool = False,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._profile = profile
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._bulk = bulk
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _get(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                timeout_ms = int(self._timeout_s * 1000)
                config = {
                    "bootstrap_servers": self._bootstrap.split(","),
                    "client_id": self._client_id,
                    "acks": "all",
                    "enable_idempotence": True,
                    "max_block_ms": timeout_ms,
                    "bootstrap_timeout_ms": timeout_ms,
                    "request_timeout_ms": max(timeout_ms, 1000),
                    "delivery_timeout_ms": max(timeout_ms, 1000) + 1000,
                    "reconnect_backoff_max_ms": 1000,
                    **(
                        self._profile.kafka_python_bulk_producer
                        if self._bulk
                        else self._profile.kafka_python_producer
                    ),
                }
                try:
                    self._producer = KafkaProducer(**config)
                except KafkaError as exc:
                    raise PublishError(f"cannot connect to Kafka at {self._bootstrap}: {exc}") from exc
            return self._producer

    def _reset(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=1)
            except Exception:  # closing a broken producer must not mask the original error
                log.debug("closing producer failed", exc_info=True)

    def publish_sync(self, records: Sequence[Record]) -> list[Acked]:
        """Send all records in order and wait until each one is acknowledged."""
        if not records:
            return []
        try:
            producer = self._get()
            futures = [producer.send(r.topic, value=r.value, key=r.key) for r in records]
            producer.flush(timeout=self._timeout_s)
            acked = []
            for future in futures:
                md = future.get(timeout=self._timeout_s)
                acked.append(Acked(md.topic, md.partition, md.offset))
            return acked
        except PublishError:
            raise
        except Exception as exc:
            self._reset()
            raise PublishError(f"Kafka did not acknowledge {len(records)} record(s): {exc!r}") from exc

    async def publish(self, records: Sequence[Record]) -> list[Acked]:
        return await asyncio.to_thread(self.publish_sync, records)

    async def publish_events(self, events: Sequence[Event]) -> list[Acked]:
        return await self.publish([Record.of(e) for e in events])

    def connected(self) -> bool:
        """Readiness probe: a bootstrap broker accepts TCP connections."""
        return any(broker_reachable(server) for server in self._bootstrap.split(","))

    def close(self) -> None:
        self._reset()
