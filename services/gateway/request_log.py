"""What was served for each request, kept in Redis for a while so feedback can find it.

Written fire-and-forget after each prediction (a Redis outage costs the log entry, never the request);
read by the feedback endpoint. MLflow's trace (metadata `flywheel.request_id`) stays the source of truth
when the log entry expired or was never written.
"""

from __future__ import annotations

import logging
from datetime import datetime

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, JsonValue
from redis.exceptions import RedisError

from services.shared.redis_store import RedisKeys

log = logging.getLogger(__name__)


class ServedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request_id: str
    model: str
    version: str
    variant: str | None = None
    rollout_id: str | None = None
    trace_id: str | None = None
    user_id: str | None = None
    inputs: JsonValue = None
    outputs: JsonValue = None
    served_at: datetime | None = None


class RequestLog:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, ttl_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s

    async def remember(self, served: ServedRequest) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._keys.request_log(served.request_id), served.model_dump_json(), ex=self._ttl_s)
                if served.trace_id:
                    pipe.set(self._keys.trace_request(served.trace_id), served.request_id, ex=self._ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("request %s not logged: %s", served.request_id, exc)

    async def by_request(self, request_id: str) -> ServedRequest | None:
        raw = await self._redis.get(self._keys.request_log(request_id))
        return ServedRequest.model_validate_json(raw) if raw else None

    async def by_trace(self, trace_id: str) -> ServedRequest | None:
        request_id = await self._redis.get(self._keys.trace_request(trace_id))
        return await self.by_request(str(request_id)) if request_id else None
