"""Draining the alias-state outbox to Kafka, in order, one model at a time.

Events leave the outbox only after Kafka acknowledged them (acks=all), so a crash or an unreachable
broker delays events but never loses them; a crash between the acknowledgement and the trim can publish
an event twice, which consumers absorb by `event_id`/state (at-least-once). An outbox entry that is not
a readable AliasChanged (a poison record: nothing Flywheel writes, but Redis is shared ground) is moved
to the model's dead-letter list, logged and counted, and the events behind it go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from events import ALIAS_CHANGED, AliasChanged, decode
from services.registry_watcher import metrics
from services.registry_watcher.adapters.alias_state import AliasStateStore
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
                readable, poison = _split_poison(raw)
                if poison and not readable:  # the head of the outbox is poison: set it aside, go on
                    await self._state.dead_letter(model, poison)
                    metrics.POISON.inc(len(poison))
                    log.error("outbox of %s: %d unreadable entries moved to dead letters", model, len(poison))
                    continue
                records = [
                    Record(ALIAS_CHANGED, model.encode("utf-8"), item.encode("utf-8")) for item, _ in readable
                ]
                try:
                    await self._publisher.publish(records)
                except PublishError:
                    metrics.PUBLISH_FAILURES.inc()
                    raise
                await self._state.ack(model, len(readable))
                for _, event in readable:
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
            except Exception:  # one model's trouble must not hold up the others
                log.exception("outbox of %s could not be drained", model)
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


def _split_poison(raw: list[str]) -> tuple[list[tuple[str, AliasChanged]], list[str]]:
    """(the readable entries at the head of the outbox, or the unreadable ones at its head): the
    outbox is processed in order, so a run of good entries stops at the first bad one and vice versa."""
    readable: list[tuple[str, AliasChanged]] = []
    poison: list[str] = []
    for item in raw:
        try:
            item.encode("utf-8")
            event = decode(item, AliasChanged)
        except Exception:
            if readable:
                break
            poison.append(item)
            continue
        if poison:
            break
        readable.append((item, event))
    return readable, poison
