"""The fleet: what each gateway replica serves right now, as the replica itself reports it.

Every replica writes its `ReplicaStatus` to Redis every few seconds with a time to live
(`services/gateway/adapters/fleet_heartbeat.py`); the console, the read API and `flywheel status` read it
here. A replica that stops reporting drops out once its entry expires, so the fleet is always the set
of replicas alive within the last `ttl_s`, never a registry someone must clean up. This module is the
contract between the writer and the readers: the key names, the JSON shape, and the read.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import cast

import redis
from pydantic import BaseModel, Field, ValidationError

from services.shared.redis_store import RedisKeys

#: A replica's entry lives this long after its last heartbeat (the heartbeat runs every third of it).
FLEET_TTL_S = 15.0


class ServedAlias(BaseModel):
    model: str
    alias: str
    version: str
    since: datetime | None = Field(description="When this replica began serving the version.")


class ReloadError(BaseModel):
    model: str
    alias: str
    wanted_version: str | None
    message: str


class Swap(BaseModel):
    model: str
    alias: str
    version: str
    previous_version: str | None
    at: datetime
    load_seconds: float = Field(ge=0, description="Time the preload of the new version took.")


class ReplicaStatus(BaseModel):
    """One gateway replica as it last reported itself."""

    replica: str
    url: str | None = Field(default=None, description="Where the replica answers HTTP, if it knows.")
    started_at: datetime
    heartbeat_at: datetime
    ready: bool = Field(description="Preloaded its aliases (its /readyz).")
    serving: list[ServedAlias] = Field(default_factory=list)
    reload_errors: list[ReloadError] = Field(default_factory=list)
    last_swap: Swap | None = None
    swaps: int = Field(default=0, ge=0, description="Swaps since the replica started.")
    failed_loads: int = Field(default=0, ge=0, description="Failed preloads since the replica started.")

    def version_of(self, model: str, alias: str) -> str | None:
        return next((s.version for s in self.serving if s.model == model and s.alias == alias), None)


def read_fleet(client: redis.Redis, keys: RedisKeys, now: float | None = None) -> list[ReplicaStatus]:
    """Every replica that reported within `FLEET_TTL_S`, by name. Unreadable entries are skipped (a
    newer replica's format is not this reader's failure), stale members are pruned."""
    members_key = keys.fleet_replicas()
    now = time.time() if now is None else now
    client.zremrangebyscore(members_key, "-inf", now - FLEET_TTL_S)
    names = cast(list[str], client.zrange(members_key, 0, -1))
    if not names:
        return []
    raw = cast(list[str | None], client.mget([keys.fleet_replica(n) for n in names]))
    fleet = []
    for value in raw:
        if value is None:
            continue
        try:
            fleet.append(ReplicaStatus.model_validate_json(value))
        except ValidationError:
            continue
    return sorted(fleet, key=lambda s: s.replica)
