"""Retry an effect until it succeeds: the at-least-once rule for stream handlers.

A handler must not move past an event whose effect failed (its offset would be committed and the event
lost), so transient failures (Redis, MLflow, Kafka down) are retried with capped exponential back-off;
only cancellation (worker stopping) ends the loop, leaving the event to be delivered again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


async def retry_forever(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    *,
    initial_s: float = 0.2,
    max_s: float = 5.0,
    on_error: Callable[[BaseException], None] | None = None,
) -> T:
    delay = initial_s
    failures = 0
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            if on_error is not None:
                on_error(exc)
            log.warning("%s failed (attempt %d), retrying in %.1fs: %r", what, failures, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_s)
