"""Since when the counts count: after Redis came back empty, the summary says so instead of passing the
counts since then off as the whole history.

The counts live in Redis; the consumer group's offsets live in Kafka and move only after an effect was
stored. When Redis loses the counts, the offsets still say "applied": the worker counts on from zero, and
nothing double-counts (only the uncommitted tail comes again, and its effect was lost too) — but what was
counted before is gone. A marker, `feedback:epoch` (`{"since": <time>, "earlier_lost": <bool>}`), records
when the counts began: written once for a fresh namespace (the group has committed nothing yet: nothing
was lost), or when it is found missing while the group has committed offsets (Redis came back empty:
`earlier_lost`). Every summary carries it (`counts_since`, `earlier_counts_lost`); `flywheel status` and
the console show it. Rebuilding the counts needs the topics from their start (their retention bounds it):
a new `FLYWHEEL_FEEDBACK_GROUP_ID` replays them into a fresh namespace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from services.feedback_aggregation import metrics
from services.feedback_aggregation.adapters.store import FeedbackStore
from services.shared.kafka.admin import group_has_committed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CountsEpoch:
    since: float  # epoch seconds: when the counts began
    earlier_lost: bool  # counted events before `since` were lost with Redis


class EpochKeeper:
    def __init__(self, store: FeedbackStore, bootstrap_servers: str, group_id: str) -> None:
        self._store = store
        self._bootstrap = bootstrap_servers
        self._group = group_id
        self.epoch: CountsEpoch | None = None

    async def check(self) -> CountsEpoch:
        """The marker, written first when missing (at start, and on every tick)."""
        key = self._store.key("epoch")
        raw = await self._store.redis.get(key)
        if raw is None:
            lost = await asyncio.to_thread(group_has_committed, self._bootstrap, self._group)
            fresh = json.dumps({"since": time.time(), "earlier_lost": lost})
            await self._store.redis.set(key, fresh, nx=True)
            raw = await self._store.redis.get(key) or fresh
            if lost:
                metrics.STATE_LOST.inc()
                log.warning(
                    "the feedback counts were gone (Redis came back empty) while group %s had committed "
                    "offsets: counting on from now; summaries say counts_since and earlier_counts_lost",
                    self._group,
                )
        value = json.loads(raw)
        self.epoch = CountsEpoch(float(value["since"]), bool(value["earlier_lost"]))
        return self.epoch
