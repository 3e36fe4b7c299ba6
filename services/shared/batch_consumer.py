"""Batch consumption below Faust: one aiokafka consumer reading with `getmany`, for workers whose
handlers take batches (feedback aggregation: the product's high-volume stream, one event per prediction).

Why not a Faust agent: Faust hands every message on its own through its fetcher, conductor, channel
queue and stream (measured: ~46% of the worker's main thread went to that per-message delivery, against
~20% in the handler; `benchmarks/RESULTS.md`). Here a fetch of up to `max_records` messages becomes one
handler call per topic, so the per-message cost is the decode and the handler's own work.

The guarantees stay those of `services.shared.consumer`:
- **commit after effect**: offsets are committed (synchronously, per fetched batch) only after the
  handler returned for every message of the batch; a crash before that redelivers the batch, and the
  handlers recognise redelivered messages by their offsets (the feedback store keeps them with counts);
- **order**: messages of one partition reach the handler in offset order, one batch at a time;
- **rebalance safety**: a revocation waits for the batch in flight to be handled and committed (the
  lock below, the pattern of aiokafka's "local state" example), so no partition changes hands mid-batch;
  a commit refused because the group moved on is logged and the new owner handles those messages again.

Group membership, the assignment the runtime reports (`owns`, `/readyz`) and the assignment hooks come
from this consumer's rebalance listener. The worker's Faust app still runs the process, its timers and
its web pages, under its own group id (it consumes nothing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from services.shared.kafka.profile import profile_named
from services.shared.settings import FlywheelSettings

log = logging.getLogger(__name__)

Deliveries = list[tuple[int, int, bytes | None]]


class Subscription(Protocol):
    """What this module reads of a `services.shared.consumer.Subscription`."""

    @property
    def topic(self) -> str: ...
    @property
    def batch_max(self) -> int: ...


class BatchRuntime(Protocol):
    """What this module needs of the runtime it consumes for (`services.shared.consumer.ConsumerRuntime`,
    which imports this module: a protocol here keeps the dependency one way)."""

    worker: str
    settings: FlywheelSettings
    group_id: str

    @property
    def subscriptions(self) -> Sequence[Any]: ...
    async def handle_batch(self, sub: Any, deliveries: Deliveries) -> None: ...
    async def partitions_assigned(self, assigned: Iterable[Any], counts: dict[str, int]) -> None: ...
    def partitions_revoked(self, revoked: Iterable[Any]) -> None: ...


class _Listener(ConsumerRebalanceListener):
    def __init__(
        self,
        lock: asyncio.Lock,
        assigned: Callable[[set[TopicPartition]], Awaitable[None]],
        revoked: Callable[[set[TopicPartition]], None],
    ) -> None:
        self._lock, self._assigned, self._revoked = lock, assigned, revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:  # the batch in flight is handled and committed first
            self._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._assigned(assigned)


class BatchConsumer:
    """Consumes a runtime's subscriptions in fetched batches and commits each batch after its effect."""

    def __init__(self, runtime: BatchRuntime, poll_ms: int = 500) -> None:
        self.runtime = runtime
        self.by_topic: dict[str, Subscription] = {s.topic: s for s in runtime.subscriptions}
        self.max_records = max(s.batch_max for s in runtime.subscriptions)
        self.poll_ms = poll_ms
        self._lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None

    def _make_consumer(self) -> AIOKafkaConsumer:
        settings = self.runtime.settings
        return AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            group_id=self.runtime.group_id,
            client_id=f"{self.runtime.worker}-batch",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **profile_named(settings.kafka_profile).aiokafka_consumer,
        )

    async def run(self) -> None:
        """Join the group and consume until cancelled (the runtime starts this after its start-up tasks)."""
        consumer = self.consumer = self._make_consumer()
        consumer.subscribe(
            sorted(self.by_topic),
            listener=_Listener(self._lock, self._assigned, self.runtime.partitions_revoked),
        )
        await consumer.start()
        try:
            while True:
                fetched = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
                if fetched:
                    async with self._lock:
                        await self.handle(consumer, fetched)
        finally:
            await consumer.stop()

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self.consumer
        counts = {
            topic: len(consumer.partitions_for_topic(topic) or ()) if consumer is not None else 0
            for topic in self.by_topic
        }
        await self.runtime.partitions_assigned(assigned, counts)

    async def handle(self, consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, list[Any]]) -> None:
        """One handler call per topic (its partitions in order, in chunks of the subscription's
        `batch_max`), then one commit of every fetched partition's next offset."""
        for topic, chunks in _per_topic(fetched, self.by_topic).items():
            for chunk in chunks:
                await self.runtime.handle_batch(self.by_topic[topic], chunk)
        offsets = {tp: records[-1].offset + 1 for tp, records in fetched.items() if records}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced while the batch was handled: the effect is stored, the new owner
            # reads these messages again and recognises them by offset.
            log.warning(
                "%s: commit refused after a rebalance (%r); redelivery is idempotent",
                self.runtime.worker,
                exc,
            )
        except KafkaError:
            log.exception("%s: offset commit failed; the batch will be delivered again", self.runtime.worker)


def _per_topic(
    fetched: dict[TopicPartition, list[Any]], subscriptions: dict[str, Subscription]
) -> dict[str, list[Deliveries]]:
    out: dict[str, list[Deliveries]] = {}
    for tp in sorted(fetched, key=lambda t: (t.topic, t.partition)):
        deliveries = [(r.partition, r.offset, r.value) for r in fetched[tp]]
        out.setdefault(tp.topic, [[]])
        size = subscriptions[tp.topic].batch_max
        for delivery in deliveries:
            if len(out[tp.topic][-1]) >= size:
                out[tp.topic].append([])
            out[tp.topic][-1].append(delivery)
    return out
