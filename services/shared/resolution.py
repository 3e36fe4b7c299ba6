"""The alias resolution cache in Redis and the reload notice: the contract between cache invalidation
(the only writer) and the gateway replicas (readers and subscribers).

Layout (key names in `RedisKeys`):
- `resolution(model)`: hash `alias -> ResolutionEntry JSON`. A deleted alias stays as an entry with
  `version = null` (a tombstone), so replaying an older `set` event cannot resurrect it.
- `resolution_models()`: set of models that have entries (gateways reconcile from it).
- `reload_channel()`: pub/sub channel carrying `ReloadNotice` JSON, one per applied alias change.

An entry is replaced only by an event that is newer (`occurred_at`, then `event_id` to break ties), so a
replay of the topic from the start leaves the same state.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict

from services.shared.redis_store import RedisKeys


class ResolutionEntry(BaseModel):
    """What `models:/{model}@{alias}` resolves to, and which event said so."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: str | None
    event_id: str
    occurred_at: datetime

    def order_key(self) -> tuple[datetime, str]:
        return (self.occurred_at, self.event_id)


class ReloadNotice(BaseModel):
    """Published on `reload_channel()` after an alias change was applied to the resolution cache."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str
    alias: str
    version: str | None
    event_id: str
    occurred_at: datetime


def parse_entries(raw: dict[str, str]) -> dict[str, ResolutionEntry]:
    """Hash fields -> entries; a corrupt field is skipped (it will be rewritten by the next event)."""
    entries: dict[str, ResolutionEntry] = {}
    for alias, value in raw.items():
        try:
            entries[alias] = ResolutionEntry.model_validate_json(value)
        except ValueError:
            continue
    return entries


class ResolutionReader:
    """Read side used by gateways: current alias -> version of one or all models."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def models(self) -> set[str]:
        return cast(set[str], await self._redis.smembers(self._keys.resolution_models()))

    async def read(self, model: str) -> dict[str, ResolutionEntry]:
        raw = cast(dict[str, str], await self._redis.hgetall(self._keys.resolution(model)))
        return parse_entries(raw)
