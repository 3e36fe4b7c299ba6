"""Keeps a replica in step with the resolution cache: reload notices plus periodic reconciliation.

Notices (Redis pub/sub) make a change visible within milliseconds, but pub/sub is fire-and-forget: a
replica that was disconnected, restarting or slow misses them. So the replica also reconciles: on every
(re)subscription and every `reconcile_interval_s` it reads the whole resolution cache and wants what it
says. A missed notice therefore costs at most one interval, never a permanently stale replica. While
Redis is down nothing changes: the replica keeps serving what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.gateway import metrics
from services.gateway.domain.serving_table import ServingTable
from services.gateway.reloader import Reloader
from services.shared.redis_store import RedisKeys
from services.shared.resolution import ReloadNotice, ResolutionReader
from services.shared.settings import FlywheelSettings

log = logging.getLogger(__name__)


class ReloadListener:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        reloader: Reloader,
        table: ServingTable,
        settings: FlywheelSettings,
        *,
        reconcile_interval_s: float = 5.0,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._reader = ResolutionReader(redis, keys)
        self._reloader = reloader
        self._table = table
        self._settings = settings
        self._interval = reconcile_interval_s
        self._tasks: list[asyncio.Task[None]] = []
        self.subscribed = asyncio.Event()
        self.last_reconcile_ok: float | None = None

    def _served_aliases(self, model: str) -> set[str]:
        """Aliases a replica keeps loaded: champion and challenger, plus any alias already requested."""
        return {self._settings.champion_alias, self._settings.challenger_alias} | set(
            self._table.aliases(model)
        )

    def apply(self, notice: ReloadNotice) -> None:
        if not self._settings.watches(notice.model):
            return
        if notice.alias in self._served_aliases(notice.model):
            self._reloader.want(notice.model, notice.alias, notice.version)

    async def reconcile(self) -> None:
        """Want exactly what the resolution cache says for every watched model."""
        models = [m for m in await self._reader.models() if self._settings.watches(m)]
        for model in sorted(models):
            entries = await self._reader.read(model)
            served = self._served_aliases(model)
            for alias, entry in entries.items():
                if alias in served and self._reloader.wanted(model, alias) != entry.version:
                    self._reloader.want(model, alias, entry.version)
                elif alias in served and entry.version is not None and self._table.get(model, alias) is None:
                    self._reloader.want(model, alias, entry.version)  # a failed first load: try again
        self.last_reconcile_ok = asyncio.get_running_loop().time()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._subscribe_forever(), name="reload-subscription"),
            loop.create_task(self._reconcile_forever(), name="reload-reconcile"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _subscribe_forever(self) -> None:
        delay = 0.2
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._keys.reload_channel())
                self.subscribed.set()
                await self._reconcile_logged("subscribed")
                delay = 0.2
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    metrics.NOTICES.inc()
                    try:
                        self.apply(ReloadNotice.model_validate_json(message["data"]))
                    except ValueError:
                        log.warning("ignoring malformed reload notice %r", message.get("data"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                metrics.REDIS_RECONNECTS.inc()
                log.warning(
                    "reload subscription lost (%s); serving current versions, retry in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._reconcile_logged("periodic")

    async def _reconcile_logged(self, why: str) -> None:
        try:
            await self.reconcile()
            metrics.RECONCILES.labels("ok").inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.RECONCILES.labels("failed").inc()
            log.warning("reconciliation (%s) failed: %s; serving current versions", why, exc)
