"""Retry an effect with capped exponential back-off: the at-least-once rule for stream handlers.

A handler must not move past an event whose effect failed (its offset would be committed and the event
lost), so transient failures (Redis, MLflow, Kafka down) are retried (`retry_forever`); only
cancellation (worker stopping) ends the loop, leaving the event to be delivered again. Where a failure
can also be permanent in ways no code can tell apart (a retraining that keeps failing), `retry` gives
up after a number of attempts and hands the last error to the caller, who records it as the outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


async def retry(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    *,
    attempts: int | None,
    initial_s: float = 0.2,
    max_s: float = 5.0,
    on_error: Callable[[BaseException], None] | None = None,
) -> T:
    """`attempt()` until it succeeds, at most `attempts` times (None: forever); the last error is raised."""
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
            if attempts is not None and failures >= attempts:
                raise
            limit = f" of {attempts}" if attempts is not None else ""
            log.warning("%s failed (attempt %d%s), retrying in %.1fs: %r", what, failures, limit, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_s)


async def retry_forever(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    *,
    initial_s: float = 0.2,
    max_s: float = 5.0,
    on_error: Callable[[BaseException], None] | None = None,
) -> T:
    return await retry(attempt, what, attempts=None, initial_s=initial_s, max_s=max_s, on_error=on_error)
