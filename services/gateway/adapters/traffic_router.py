"""Weighted, sticky champion/challenger routing from the traffic split the canary service writes.

Splits are read from Redis and cached per model for `refresh_s`, refreshed in the background so the
request path never waits on Redis after the first request of a model. If Redis is down the last known
split stays in force (and with none known, everything goes to the champion).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.shared.redis_store import RedisKeys
from services.shared.traffic import TrafficSplit, choose_variant

log = logging.getLogger(__name__)

Variant = Literal["champion", "challenger"]


@dataclass(frozen=True)
class Route:
    variant: Variant
    rollout_id: str | None
    weight: float


def routing_key(user_id: str | None, inputs: Any) -> str:
    """The user when known; else the request content, so identical requests land on the same variant."""
    if user_id:
        return f"user:{user_id}"
    payload = json.dumps(inputs, sort_keys=True, default=str).encode()
    return "inputs:" + hashlib.sha256(payload).hexdigest()


class TrafficRouter:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, refresh_s: float = 0.5) -> None:
        self._redis = redis
        self._keys = keys
        self._refresh_s = refresh_s
        self._splits: dict[str, tuple[float, TrafficSplit | None]] = {}
        self._refreshing: set[str] = set()

    def split(self, model: str) -> TrafficSplit | None:
        cached = self._splits.get(model)
        return cached[1] if cached else None

    async def _load(self, model: str) -> None:
        try:
            raw = await self._redis.get(self._keys.traffic_split(model))
            split = TrafficSplit.model_validate_json(raw) if raw else None
            self._splits[model] = (time.monotonic(), split)
        except (RedisError, OSError, ValueError) as exc:
            log.debug("traffic split of %s not refreshed: %s", model, exc)
            if model in self._splits:  # keep the last known split, retry after refresh_s
                self._splits[model] = (time.monotonic(), self._splits[model][1])
        finally:
            self._refreshing.discard(model)

    async def route(self, model: str, user_id: str | None, inputs: Any) -> Route:
        """The variant for this request; its routing key (`routing_key`) is only computed while a
        challenger takes traffic (hashing the inputs of every request would cost each one)."""
        cached = self._splits.get(model)
        if cached is None:
            await self._load(model)
        elif time.monotonic() - cached[0] > self._refresh_s and model not in self._refreshing:
            self._refreshing.add(model)
            asyncio.get_running_loop().create_task(self._load(model))
        split = self.split(model)
        if split is None or split.weight <= 0 or not split.challenger_version:
            return Route("champion", split.rollout_id if split else None, 0.0)
        key = routing_key(user_id, inputs)
        return Route(choose_variant(split.rollout_id, key, split.weight), split.rollout_id, split.weight)
