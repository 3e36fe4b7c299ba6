"""A lease in Redis: one holder at a time for a piece of work, renewed while it runs, expiring when the
holder dies (kill -9 included), so the work is never stuck and never done twice at once.

Used where two instances of a worker can meet the same work during a rebalance: Kafka hands a partition
to the new owner while the old one may still be finishing the message it read (at-least-once), so for
work that must not run twice concurrently (a retraining) the second instance waits for the lease, then
sees the first one's recorded outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import LockError

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def lease(redis: aioredis.Redis, key: str, ttl_s: float = 60.0) -> AsyncIterator[None]:
    """Hold `key` for the duration of the block (waiting as long as another holder has it)."""
    lock = redis.lock(key, timeout=ttl_s, blocking=True, blocking_timeout=None, sleep=0.5)
    await lock.acquire()

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl_s / 3)
            try:
                await lock.reacquire()
            except LockError:
                log.warning("lease %s was lost (expired or taken over)", key)
                return
            except Exception as exc:  # Redis down for a moment: try again at the next renewal
                log.warning("renewing lease %s failed: %r", key, exc)

    renewer = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        with contextlib.suppress(LockError, Exception):
            await lock.release()
