"""The watcher's webhook delivery health, published: Redis for `flywheel status`, `/v1/status` and the
console (`services.shared.webhook_health`), and the `flywheel_watcher_webhook_deliveries_failing` gauge.

Written after every poll cycle with a time to live of three cycles (at least 30 s): when no watcher polls,
the record expires and readers say `unknown`. A Redis outage costs the record, never the poll.
"""

from __future__ import annotations

import logging
import socket
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.registry_watcher import metrics
from services.registry_watcher.domain.delivery_health import DeliveryHealth
from services.shared.redis_store import RedisKeys
from services.shared.webhook_health import WebhookHealth

log = logging.getLogger(__name__)


class HealthReporter:
    def __init__(
        self, redis: aioredis.Redis, keys: RedisKeys, health: DeliveryHealth, poll_interval_s: float
    ) -> None:
        self._redis, self._keys, self._health = redis, keys, health
        self._ttl_s = max(30, int(3 * poll_interval_s))
        self._name = socket.gethostname()
        self._was: str | None = None

    def now(self) -> WebhookHealth:
        report = self._health.report(time.time(), self._name)
        metrics.WEBHOOK_FAILING.set(1 if report.status == "failing" else 0)
        if report.status != self._was and report.status == "failing":
            log.error(
                "webhook deliveries failing since %s: the poller repaired %d alias change(s) no webhook "
                "delivered; likely: %s",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.failing_since or 0)),
                report.repaired_changes,
                report.causes[0] if report.causes else "unknown",
            )
        self._was = report.status
        return report

    async def publish(self) -> WebhookHealth:
        report = self.now()
        try:
            await self._redis.set(self._keys.webhook_health(), report.model_dump_json(), ex=self._ttl_s)
        except (RedisError, OSError) as exc:
            log.debug("webhook health not written: %s", exc)
        return report
