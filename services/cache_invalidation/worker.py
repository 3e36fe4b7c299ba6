"""The cache invalidation worker: a Faust agent on `flywheel.registry.alias-changed`.

For each message: decode -> skip models not watched -> read the model's entries -> decide (pure
`core.apply.decide`) -> compare-and-set in Redis, drop the model's cached data -> publish the reload
notice. The Kafka key is the model name, so events of one model arrive in order, and the agent runs
with concurrency 1 to keep that order.

Delivery is at least once: Faust commits an offset only after the agent moved past the event. So a
failing effect (Redis down, or a bug) is retried with back-off *inside* the handler and the agent never
moves on before the event is applied: an event is never skipped because Redis is unavailable. A
restart re-reads from the last committed offset; events already applied are recognised by their
event_id (notice sent again) or as stale (ignored). Only a message that is not a readable AliasChanged
is skipped, logged and counted: retrying it cannot help.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import faust
import redis.asyncio as aioredis
from faust.types import StreamT
from redis.exceptions import RedisError

from events import ALIAS_CHANGED, AliasChanged, EventDecodeError, UnknownEventSchema, decode
from events.codec import UnsupportedSchemaVersion
from services.cache_invalidation import metrics
from services.cache_invalidation.core.apply import (
    AlreadyApplied,
    Applied,
    Stale,
    decide,
    lag_seconds,
    notice_for,
)
from services.cache_invalidation.resolution_writer import CasStatus, ResolutionWriter
from services.cache_invalidation.settings import CacheInvalidationSettings
from services.shared.faust_app import event_topic, make_faust_app
from services.shared.redis_store import RedisKeys, async_redis
from services.shared.resolution import ResolutionEntry
from services.shared.retry import retry_forever

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    APPLIED = "applied"
    REDELIVERED = "redelivered"
    STALE = "stale"
    SKIPPED = "skipped"
    UNDECODABLE = "undecodable"


@dataclass(frozen=True)
class Handled:
    outcome: Outcome
    event: AliasChanged | None = None
    entry: ResolutionEntry | None = None  # the entry the notice announced (applied / redelivered)


def _decode_failure_reason(exc: EventDecodeError) -> str:
    if isinstance(exc, UnsupportedSchemaVersion):
        return "unsupported_version"
    if isinstance(exc, UnknownEventSchema):
        return "unknown_schema"
    return "invalid"


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

    async def handle(self, raw: bytes | None) -> Handled:
        try:
            if raw is None:
                raise EventDecodeError("empty message (null value)")
            event = decode(raw, AliasChanged)
        except EventDecodeError as exc:
            metrics.UNDECODABLE.labels(_decode_failure_reason(exc)).inc()
            log.error("skipping unreadable message on %s: %s", ALIAS_CHANGED, exc)
            return Handled(Outcome.UNDECODABLE)
        if not self._settings.watches(event.model):
            metrics.SKIPPED.inc()
            return Handled(Outcome.SKIPPED, event)
        return await retry_forever(
            lambda: self._apply(event),
            f"applying {event.event_id} ({event.model}@{event.alias})",
            initial_s=self._settings.invalidation_retry_initial_s,
            max_s=self._settings.invalidation_retry_max_s,
            on_error=_count_apply_error,
        )

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
            "applied %s %s@%s -> %s (%d cache keys dropped)",
            event.event_id,
            event.model,
            event.alias,
            entry.version,
            dropped,
        )
        return Handled(Outcome.APPLIED, event, entry)


def _count_apply_error(exc: BaseException) -> None:
    metrics.APPLY_ERRORS.labels("redis" if isinstance(exc, RedisError | OSError) else "unexpected").inc()


def create_app(settings: CacheInvalidationSettings, handler: InvalidationHandler | None = None) -> faust.App:
    """The Faust app of the worker, with its one agent registered."""
    app = make_faust_app(settings.invalidation_group_id, settings, web_port=settings.invalidation_web_port)
    topic = event_topic(app, ALIAS_CHANGED)
    the_handler = handler or InvalidationHandler(settings)

    async def invalidate(stream: StreamT[Any]) -> None:
        try:
            async for raw in stream:
                await the_handler.handle(raw)
        finally:
            await the_handler.close()

    app.agent(topic, name="cache-invalidation", concurrency=1)(invalidate)

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        log.info("partitions assigned: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    # mode's handler type (a generic callable union) does not accept a plain async def under mypy.
    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    return app
