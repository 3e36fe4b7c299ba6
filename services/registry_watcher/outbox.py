"""Draining the alias-state outbox to Kafka, in order, one model at a time.

Events leave the outbox only after Kafka acknowledged them (acks=all), so a crash or an unreachable
broker delays events but never loses them; a crash between the acknowledgement and the trim can publish
an event twice, which consumers absorb by `event_id`/state (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from events import ALIAS_CHANGED, AliasChanged, decode
from services.registry_watcher import metrics
from services.registry_watcher.alias_state import AliasStateStore
from services.shared.kafka.publisher import KafkaPublisher, PublishError, Record

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(self, state: AliasStateStore, publisher: KafkaPublisher, timeout_s: float = 5.0) -> None:
        self._state = state
        self._publisher = publisher
        self._timeout_s = timeout_s
        self._local_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def flush(self, model: str) -> list[AliasChanged]:
        """Publish everything pending for `model`; raises PublishError when Kafka does not ack."""
        published: list[AliasChanged] = []
        async with self._local_locks[model], self._state.lock(model, self._timeout_s):
            while True:
                raw = await self._state.outbox(model)
                if not raw:
                    return published
                records = [Record(ALIAS_CHANGED, model.encode("utf-8"), item.encode("utf-8")) for item in raw]
                try:
                    await self._publisher.publish(records)
                except PublishError:
                    metrics.PUBLISH_FAILURES.inc()
                    raise
                await self._state.ack(model, len(raw))
                for item in raw:
                    event = decode(item, AliasChanged)
                    metrics.PUBLISHED.labels(source=event.source.value).inc()
                    published.append(event)
                    log.info(
                        "published AliasChanged %s@%s %s -> %s (%s, %s)",
                        event.model,
                        event.alias,
                        event.previous_version,
                        event.version,
                        event.source.value,
                        event.event_id,
                    )

    async def flush_all(self) -> int:
        """Drain every model with pending events; returns the number published. Errors are logged."""
        count = 0
        for model in sorted(await self._state.pending_models()):
            try:
                count += len(await self.flush(model))
            except PublishError as exc:
                log.warning("outbox of %s not drained yet: %s", model, exc)
        return count

    async def run(self, interval_s: float = 1.0) -> None:
        """Background safety net: drain outboxes left by failed or interrupted deliveries."""
        while True:
            try:
                await self.flush_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay cycle failed")
            await asyncio.sleep(interval_s)
