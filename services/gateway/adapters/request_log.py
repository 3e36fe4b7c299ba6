"""What was served for each request, kept in Redis for a while so feedback can find it.

Written fire-and-forget after each prediction (a Redis outage costs the log entry, never the request);
read by the feedback endpoint, which also writes a rated prediction's MLflow trace from its entry when the
trace was not written as it was served. When the entry expired or was never written, MLflow's trace
(`tr-` + the request id, its facts in tags `flywheel.*`) is looked up instead — which exists for the sampled
and rated ones.

Keys (the gateway's own): `{prefix}:request:{request_id}` (the ServedRequest JSON), with the TTL. A trace id
is `tr-` + its request id (`domain/served.trace_id_of`), so feedback given by trace id needs no mapping;
`{prefix}:trace-request:{trace_id}` (a trace id's request id) is still read for entries written before.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.gateway import metrics
from services.gateway.domain.served import ServedRequest
from services.shared.redis_store import RedisKeys

log = logging.getLogger(__name__)

# One command for a whole batch: a pipeline of SETs costs the gateway's event loop a packed command and a
# parsed reply per entry (redis-py, in Python); the script costs one of each per batch.
_SET_ALL = """
for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1]) end
return #KEYS
"""


class RequestLog:
    """Entries are buffered and written in one script call every `flush_ms` (one Redis round trip for many
    requests instead of one per request); `by_request` flushes first, so feedback always finds them."""

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, ttl_s: int, flush_ms: int = 20) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._flush_s = flush_ms / 1000
        self._pending: list[ServedRequest] = []
        self._flusher: asyncio.Task[None] | None = None
        self._set_all = redis.register_script(_SET_ALL)

    def remember(self, served: ServedRequest) -> None:
        self._pending.append(served)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_s)
        await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        encoded = []
        for served in batch:  # one entry that cannot be serialised must not cost the others
            try:
                encoded.append((served, served.model_dump_json().encode("utf-8")))
            except Exception as exc:
                metrics.REQUEST_LOG.labels("poison").inc()
                log.error("request %s cannot be logged, skipped: %r", served.request_id, exc)
        keys = [self._keys.key("request", served.request_id) for served, _ in encoded]
        try:
            await self._set_all(keys=keys, args=[self._ttl_s, *(raw for _, raw in encoded)])
        except (RedisError, OSError) as exc:
            metrics.REQUEST_LOG.labels("unavailable").inc(len(encoded))
            log.debug("%d requests not logged: %s", len(encoded), exc)
            return
        metrics.REQUEST_LOG.labels("written").inc(len(encoded))

    async def by_request(self, request_id: str) -> ServedRequest | None:
        await self.flush()
        raw = await self._redis.get(self._keys.key("request", request_id))
        return ServedRequest.model_validate_json(raw) if raw else None

    async def wait_for(
        self, request_id: str, timeout_s: float, every_s: float = 0.02
    ) -> ServedRequest | None:
        """The entry of `request_id`, waiting up to `timeout_s` for it to land (another replica writes its
        entries in batches every `flush_ms`); None when it did not. Raises what Redis raises."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            found = await self.by_request(request_id)
            if found is not None or asyncio.get_running_loop().time() >= deadline:
                return found
            await asyncio.sleep(every_s)

    async def request_of_trace(self, trace_id: str) -> str | None:
        """The request id of a trace id made before trace ids were derived from request ids."""
        found = await self._redis.get(self._keys.key("trace-request", trace_id))
        return found.decode() if isinstance(found, bytes) else found
