"""Redis keys are persistent data: a new release must find what the last one wrote under the same names.

The shared keys live in `RedisKeys`; each service's private ones are built by the adapter that owns them.
Both are pinned here, so a rename shows up as a failing test rather than as state silently left behind.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from services.canary_rollout.adapters.store import RolloutStore
from services.feedback_aggregation.adapters.store import FeedbackStore
from services.registry_watcher.adapters.alias_state import AliasStateStore
from services.shared.redis_store import RedisKeys

KEYS = RedisKeys("p")


def test_shared_keys() -> None:
    assert KEYS.resolution("m") == "p:resolution:m"
    assert KEYS.reload_channel() == "p:reload"
    assert KEYS.traffic_split("m") == "p:traffic:m"
    assert KEYS.rollout_state("m") == "p:canary:state:m"
    assert KEYS.feedback_summary("m") == "p:feedback:summary:m"
    assert KEYS.fleet_replica("g-1") == "p:fleet:replica:g-1"
    assert KEYS.key("gateway", "feedback-rate", "u", "7") == "p:gateway:feedback-rate:u:7"


def test_each_services_private_keys() -> None:
    client = aioredis.Redis()  # never connected: only the key names are read
    watcher = AliasStateStore(client, KEYS)
    assert watcher.key("aliases", "m") == "p:watcher:aliases:m"
    assert watcher.key("aliases", "") == "p:watcher:aliases:"  # the prefix the bind script scans
    assert watcher.key("outbox-pending") == "p:watcher:outbox-pending"
    assert watcher.key("delivery", "d1") == "p:watcher:delivery:d1"
    canary = RolloutStore(client, KEYS)
    assert canary.key("decisions", "m") == "p:canary:decisions:m"
    assert canary.key("commands-pending") == "p:canary:commands-pending"
    feedback = FeedbackStore(client, KEYS)
    assert feedback.key("journal", "m") == "p:feedback:journal:m"
    assert feedback.key("progress") == "p:feedback:progress"
    assert feedback.key("publication-lease", "m") == "p:feedback:publication-lease:m"
