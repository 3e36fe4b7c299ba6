"""Reports this replica to the fleet (`services.shared.fleet`): every `FLEET_TTL_S / 3` seconds and right
after a swap or a failed load, what it serves per alias, since when, the reloads that fail, and its last
swap, written to Redis with a time to live. The console and `flywheel status` read it; nothing in the
serving path waits for it, and a Redis outage only makes the replica drop out of the fleet view until
Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from redis.asyncio import Redis

from services.gateway.domain.serving_table import ServingTable
from services.gateway.reloader import Reloader
from services.shared.fleet import FLEET_TTL_S, ReplicaStatus, ServedAlias
from services.shared.redis_store import RedisKeys

log = logging.getLogger(__name__)


class FleetHeartbeat:
    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        replica: str,
        url: str | None,
        table: ServingTable,
        reloader: Reloader,
        started: asyncio.Event,
    ) -> None:
        self._redis, self._keys = redis, keys
        self._replica, self._url = replica, url
        self._table, self._reloader, self._started = table, reloader, started
        self._started_at = datetime.now(UTC)
        self._task: asyncio.Task[None] | None = None

    def status(self) -> ReplicaStatus:
        serving = [
            ServedAlias(
                model=model,
                alias=alias,
                version=version,
                since=datetime.fromtimestamp(swapped, UTC) if swapped is not None else None,
            )
            for model, alias, version, swapped in self._table.serving_since()
        ]
        return ReplicaStatus(
            replica=self._replica,
            url=self._url,
            started_at=self._started_at,
            heartbeat_at=datetime.now(UTC),
            ready=self._started.is_set(),
            serving=serving,
            reload_errors=self._reloader.errors(),
            last_swap=self._reloader.last_swap,
            swaps=self._reloader.swaps,
            failed_loads=self._reloader.failed_loads,
        )

    async def beat(self) -> None:
        status = self.status()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(
                self._keys.fleet_replica(self._replica), status.model_dump_json(), px=int(FLEET_TTL_S * 1000)
            )
            pipe.zadd(self._keys.fleet_replicas(), {self._replica: time.time()})
            await pipe.execute()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fleet heartbeat")

    async def _run(self) -> None:
        """Beat every `FLEET_TTL_S / 3`, and within half a second of a swap or a failed load (the
        console shows a new version as soon as the replica serves it)."""
        failing, reported, last = False, (-1, -1), 0.0
        while True:
            changes = (self._reloader.swaps, self._reloader.failed_loads)
            if changes != reported or time.monotonic() - last >= FLEET_TTL_S / 3:
                try:
                    await self.beat()
                    failing, reported, last = False, changes, time.monotonic()
                except Exception as exc:  # Redis away: the replica serves on and reports again later
                    if not failing:
                        log.warning("fleet heartbeat failed (%s); retrying", exc)
                    failing, last = True, time.monotonic()
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        """Stop reporting and leave the fleet at once (a clean shutdown is not a lost replica)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._keys.fleet_replica(self._replica))
                pipe.zrem(self._keys.fleet_replicas(), self._replica)
                await pipe.execute()
