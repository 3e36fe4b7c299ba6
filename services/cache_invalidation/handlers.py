"""The use case of the cache invalidation worker: apply one AliasChanged to the resolution cache.

For each event: skip models not watched -> read the model's entries -> decide (pure
`domain.apply.decide`) -> compare-and-set in Redis, drop the model's cached data -> publish the reload
notice. The Kafka key is the model name, so events of one model arrive in order; the consumer runtime
(`services.shared.consumer`) hands them over one at a time.

Delivery is at least once: the runtime commits an offset only after `handle` returned. An effect that
fails (Redis down, or a bug) raises, and the runtime retries it with back-off: an event is never
skipped because Redis is unavailable. A restart re-reads from the last committed offset; events already
applied are recognised by their event_id (notice sent again) or as stale (ignored). A message that is
not a readable AliasChanged never reaches this module: the runtime skips, logs and counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from events import AliasChanged
from services.cache_invalidation import metrics
from services.cache_invalidation.adapters.resolution_writer import CasStatus, ResolutionWriter
from services.cache_invalidation.domain.apply import (
    AlreadyApplied,
    Applied,
    Stale,
    decide,
    lag_seconds,
    notice_for,
)
from services.cache_invalidation.rebuild import rebuild_if_lost
from services.cache_invalidation.settings import CacheInvalidationSettings
from services.shared.consumer import Message
from services.shared.redis_store import RedisKeys, async_redis
from services.shared.resolution import ResolutionEntry

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    APPLIED = "applied"  # newer than the resolution entry: caches invalidated, replicas told to reload
    REDELIVERED = "redelivered"  # the entry's own event again: caches dropped and the notice sent again
    STALE = "stale"  # older than the entry (a late or replayed event): ignored
    SKIPPED = "skipped"  # a model this instance does not watch


@dataclass(frozen=True)
class Handled:
    outcome: Outcome
    event: AliasChanged | None = None
    entry: ResolutionEntry | None = None  # the entry the notice announced (applied / redelivered)


class InvalidationHandler:
    """Applies one raw message; owns the Redis client (created on first use, on the running loop)."""

    def __init__(
        self,
        settings: CacheInvalidationSettings,
        *,
        redis_factory: Callable[[], aioredis.Redis] | None = None,
    ) -> None:
        self._settings = settings
        self._keys = RedisKeys(settings.redis_prefix)
        self._redis_factory = redis_factory or (lambda: async_redis(settings.redis_url))
        self._redis: aioredis.Redis | None = None
        self._writer: ResolutionWriter | None = None

    def _get_writer(self) -> ResolutionWriter:
        if self._writer is None:
            self._redis = self._redis_factory()
            self._writer = ResolutionWriter(self._redis, self._keys)
        return self._writer

    async def close(self) -> None:
        redis, self._redis, self._writer = self._redis, None, None
        if redis is not None:
            await redis.aclose()

    async def rebuild_if_lost(self) -> int:
        """The timer's task: rebuild the cache from the topic when Redis came back empty (`rebuild.py`)."""
        return await rebuild_if_lost(self._get_writer(), self._settings)

    async def handle(self, messages: list[Message]) -> list[Handled]:
        """The runtime's handler: apply each event in order (raises on a failed effect: retried)."""
        return [await self.handle_event(cast(AliasChanged, m.event)) for m in messages]

    async def handle_event(self, event: AliasChanged) -> Handled:
        if not self._settings.watches(event.model):
            metrics.SKIPPED.inc()
            return Handled(Outcome.SKIPPED, event)
        try:
            return await self._apply(event)
        except Exception as exc:
            _count_apply_error(exc)
            raise

    async def _apply(self, event: AliasChanged) -> Handled:
        writer = self._get_writer()
        decision = decide(await writer.read(event.model), event)
        if isinstance(decision, Applied):
            result = await writer.compare_and_set(event.model, event.alias, decision.entry)
            if result.status is CasStatus.STALE:  # a newer entry was written since we read
                decision = Stale(result.stored or decision.entry)
            elif result.status is CasStatus.ALREADY:
                decision = AlreadyApplied(result.stored or decision.entry)
        if isinstance(decision, Stale):
            metrics.STALE.inc()
            log.debug(
                "stale %s %s@%s -> %s (stored event %s is newer)",
                event.event_id,
                event.model,
                event.alias,
                event.version,
                decision.current.event_id,
            )
            return Handled(Outcome.STALE, event, decision.current)

        entry = decision.entry
        dropped = await writer.drop_model_cache(event.model)
        metrics.CACHE_KEYS_DROPPED.inc(dropped)
        await writer.publish(notice_for(event, entry))
        metrics.NOTICES.inc()
        if isinstance(decision, AlreadyApplied):
            metrics.REDELIVERED.inc()
            log.info(
                "redelivered %s %s@%s -> %s: notice sent again",
                event.event_id,
                event.model,
                event.alias,
                entry.version,
            )
            return Handled(Outcome.REDELIVERED, event, entry)
        metrics.APPLIED.inc()
        metrics.LAST_APPLIED_LAG.set(lag_seconds(event, datetime.now(UTC)))
        log.info(
            "applied %s %s@%s -> %s (%d cache entries dropped)",
            event.event_id,
            event.model,
            event.alias,
            entry.version,
            dropped,
        )
        return Handled(Outcome.APPLIED, event, entry)


def _count_apply_error(exc: BaseException) -> None:
    metrics.APPLY_ERRORS.labels("redis" if isinstance(exc, RedisError | OSError) else "unexpected").inc()
