"""Reading the feedback worker's per-model summary (counts per version, trigger verdict, publications).

The worker writes it under the shared key `RedisKeys.feedback_summary` (see
`services/feedback_aggregation/summaries.py` for its format); the console, `flywheel status`, the
benchmarks and the tests read it back here, so there is one reader for one contract.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from services.shared.redis_store import RedisKeys


def _parsed(raw: object) -> dict[str, Any] | None:
    return cast(dict[str, Any], json.loads(cast(str, raw))) if raw else None


def read_summary_sync(client: redis.Redis, keys: RedisKeys, model: str) -> dict[str, Any] | None:
    """The model's summary, or None before its first event was aggregated."""
    return _parsed(client.get(keys.feedback_summary(model)))


async def read_summary(client: aioredis.Redis, keys: RedisKeys, model: str) -> dict[str, Any] | None:
    """`read_summary_sync` for asyncio callers."""
    return _parsed(await client.get(keys.feedback_summary(model)))
