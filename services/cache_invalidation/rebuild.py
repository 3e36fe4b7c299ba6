"""The resolution cache comes back whole after Redis came back empty: rebuilt from the alias-changed topic.

The worker applies events as they arrive; the cache holds what they said. When Redis loses it (a restart
without persistence, a failover to an empty replica), the worker's Kafka offsets still say "applied", so
no event would ever write it again: the cache stays empty (first loads ask MLflow; a replica that missed a
notice is never corrected by its reconcile). So a timer checks the cache's epoch marker
(`RedisKeys.resolution_epoch`); when it is missing, every event of the topic is replayed into the cache
through the same newest-wins compare-and-set the live path uses (`domain.apply.replay`), then the marker
is set. Live events may be applied meanwhile: the newest entry wins either way. No reload notices: the
replicas serve what they served; their reconcile compares with the rebuilt cache.
"""

from __future__ import annotations

import asyncio
import logging

from events import ALIAS_CHANGED, AliasChanged
from services.cache_invalidation import metrics
from services.cache_invalidation.adapters.resolution_writer import CasStatus, ResolutionWriter
from services.cache_invalidation.domain.apply import replay
from services.cache_invalidation.settings import CacheInvalidationSettings
from services.shared.kafka.history_reader import read_events

log = logging.getLogger(__name__)


async def rebuild_if_lost(writer: ResolutionWriter, settings: CacheInvalidationSettings) -> int:
    """Rebuild the cache when its epoch marker is missing; returns the entries written (0: it was there)."""
    if await writer.complete():
        return 0
    events = await asyncio.to_thread(
        read_events,
        settings.kafka_bootstrap_servers,
        None,
        profile=settings.kafka_profile,
        topics=(ALIAS_CHANGED,),
    )
    watched = [e for e in events if isinstance(e, AliasChanged) and settings.watches(e.model)]
    written = 0
    for model, entries in replay(watched).items():
        for alias, entry in entries.items():
            written += (await writer.compare_and_set(model, alias, entry)).status is CasStatus.APPLIED
    await writer.mark_complete()
    if watched:
        metrics.REBUILDS.inc()
        log.warning(
            "the resolution cache was gone (Redis came back empty, or a new namespace): rebuilt from %d "
            "alias changes (%d entries written)",
            len(watched),
            written,
        )
    return written
