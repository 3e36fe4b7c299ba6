"""Flywheel's alias state in Redis, changed only by an atomic compare-and-set that also fills the outbox.

Per model, a hash holds `alias -> version`, a revision counter `__rev`, and per alias the time of the
observation that set it (`__at:<alias>`, epoch seconds; kept when the alias is deleted, so a stale
retried delivery cannot bring it back). A writer (webhook or poller)
reads a snapshot, decides what changed and commits *conditionally on the revision it read*: a Lua
script checks the revision, applies the alias changes, appends the encoded events to the model's outbox
list and bumps the revision in one atomic step. So a change seen by both the webhook and the poller is
committed once, `previous_version` is exactly the value it replaced, and no event is lost between the
state write and Kafka (the outbox is drained to Kafka by `outbox.OutboxRelay`).

Keys (the watcher's own, `AliasStateStore.key`): `watcher:aliases:{model}` (the hash above),
`watcher:models` (models with alias state), `watcher:registry-id` (the registry the state belongs to,
see `registry_identity.py`), `watcher:outbox:{model}` (encoded AliasChanged events not yet acknowledged by
Kafka, oldest first), `watcher:outbox-pending` (models whose outbox is not empty),
`watcher:outbox-dead-letters:{model}` (entries that were not readable events, set aside),
`watcher:outbox-lock:{model}` (one relay drains a model at a time), `watcher:delivery:{id}` (webhook
deliveries already handled, for a while).

`watcher:registry-id` doubles as the state's epoch marker: the commit script refuses (`StateLost`) while
it is missing — Redis came back empty, and a diff against nothing would announce every alias anew — until
the state is restored from the alias-changed topic (`restore`, `domain/state_seed.py`) and the registry
bound again (`state_restore.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import redis.asyncio as aioredis

from events import AliasChanged, encode
from services.registry_watcher.domain.state_seed import SeedEntry
from services.shared.redis_store import RedisKeys

REV_FIELD = "__rev"
AT_PREFIX = "__at:"

_COMMIT_LUA = """
if redis.call('EXISTS', KEYS[5]) == 0 then return -2 end
local current = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if current ~= ARGV[2] then return -1 end
local i = 4
while i <= #ARGV do
  local alias, version, event, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if version == '' then redis.call('HDEL', KEYS[1], alias)
  else redis.call('HSET', KEYS[1], alias, version) end
  if at ~= '' then redis.call('HSET', KEYS[1], '__at:' .. alias, at) end
  redis.call('RPUSH', KEYS[2], event)
  i = i + 4
end
local rev = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[3])
return rev
"""

# KEYS: identity key, models set. ARGV: identity, adopt ("1"/"0"), alias-state key prefix.
# Returns {status, stored identity}: bound (was empty), same, adopted (old state dropped), refused.
_BIND_LUA = """
local stored = redis.call('GET', KEYS[1])
if not stored then
  redis.call('SET', KEYS[1], ARGV[1])
  return {'bound', ARGV[1]}
end
if stored == ARGV[1] then return {'same', stored} end
if ARGV[2] ~= '1' then return {'refused', stored} end
for _, model in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('DEL', ARGV[3] .. model)
end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1])
return {'adopted', stored}
"""

# KEYS: alias-state hash, models set. ARGV: model, rev, then (alias, version or '', at) triples.
# Writes a restored model only when no writer got there first (the hash does not exist).
_RESTORE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local i = 3
while i <= #ARGV do
  if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  redis.call('HSET', KEYS[1], '__at:' .. ARGV[i], ARGV[i + 2])
  i = i + 3
end
redis.call('HSET', KEYS[1], '__rev', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

_ACK_LUA = """
redis.call('LTRIM', KEYS[1], tonumber(ARGV[1]), -1)
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return redis.call('LLEN', KEYS[1])
"""


class StateLost(RuntimeError):
    """The alias state is gone (its epoch marker `watcher:registry-id` is missing): restore it first."""


@dataclass(frozen=True)
class AliasSnapshot:
    model: str
    rev: str
    aliases: dict[str, str] = field(default_factory=dict)
    observed_at: dict[str, float] = field(default_factory=dict)  # alias -> time of its last observation

    def is_stale(self, alias: str, observed_at: float | None) -> bool:
        """An observation older than the one that set the alias's current state."""
        held = self.observed_at.get(alias)
        return observed_at is not None and held is not None and observed_at < held


OwnKey = Literal[
    "aliases",
    "models",
    "registry-id",
    "outbox",
    "outbox-pending",
    "outbox-dead-letters",
    "outbox-lock",
    "delivery",
]


class AliasStateStore:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._commit = redis.register_script(_COMMIT_LUA)
        self._ack = redis.register_script(_ACK_LUA)
        self._bind = redis.register_script(_BIND_LUA)
        self._restore = redis.register_script(_RESTORE_LUA)

    def key(self, kind: OwnKey, *of: str) -> str:
        """One of the watcher's own keys, `{prefix}:watcher:{kind}[:{of}]` (no other service reads them)."""
        return self._keys.key("watcher", kind, *of)

    async def bind(self, registry_id: str, *, adopt: bool) -> tuple[str, str]:
        """(status, identity stored before) — see `adapters/registry_identity.py`."""
        keys = [self.key("registry-id"), self.key("models")]
        status, stored = await self._bind(
            keys=keys, args=[registry_id, "1" if adopt else "0", self.key("aliases", "")]
        )
        return str(status), str(stored)

    async def bound(self) -> bool:
        """Is the state there (its epoch marker set)? False after Redis came back empty."""
        return bool(await self._redis.exists(self.key("registry-id")))

    async def restore(self, seed: Mapping[str, Mapping[str, SeedEntry]]) -> int:
        """Write the rebuilt state of each model that has none yet; returns how many were written."""
        written = 0
        for model, aliases in sorted(seed.items()):
            args: list[str] = [model, "1"]
            for alias, entry in sorted(aliases.items()):
                args += [alias, entry.version or "", repr(float(entry.at))]
            keys = [self.key("aliases", model), self.key("models")]
            written += int(await self._restore(keys=keys, args=args))
        return written

    async def snapshot(self, model: str) -> AliasSnapshot:
        raw = cast(dict[str, str], await self._redis.hgetall(self.key("aliases", model)))
        return self._to_snapshot(model, raw)

    async def snapshots(self, models: Iterable[str]) -> dict[str, AliasSnapshot]:
        names = sorted(set(models))
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.key("aliases", name))
            raws = await pipe.execute()
        return {name: self._to_snapshot(name, raw) for name, raw in zip(names, raws, strict=True)}

    @staticmethod
    def _to_snapshot(model: str, raw: dict[str, str]) -> AliasSnapshot:
        rev = raw.pop(REV_FIELD, "0")
        stamps = {k[len(AT_PREFIX) :]: float(v) for k, v in raw.items() if k.startswith(AT_PREFIX)}
        aliases = {k: v for k, v in raw.items() if not k.startswith(AT_PREFIX)}
        return AliasSnapshot(model=model, rev=rev, aliases=aliases, observed_at=stamps)

    async def known_models(self) -> set[str]:
        return cast(set[str], await self._redis.smembers(self.key("models")))

    async def commit(
        self,
        snapshot: AliasSnapshot,
        events: Sequence[AliasChanged],
        observed_at: Sequence[float | None] | None = None,
    ) -> bool:
        """Apply `events` iff the state is still at `snapshot.rev`; False when someone else won.
        `observed_at[i]` is when the change of `events[i]` was observed (None: unknown). StateLost when
        the state is gone (Redis came back empty)."""
        if not events:
            return True
        stamps = list(observed_at) if observed_at is not None else [None] * len(events)
        if len(stamps) != len(events):
            raise ValueError("one observation time per event")
        args: list[str] = [REV_FIELD, snapshot.rev, snapshot.model]
        for event, at in zip(events, stamps, strict=True):
            if event.model != snapshot.model:
                raise ValueError("all events of one commit must belong to the snapshot's model")
            args += [
                event.alias,
                event.version or "",
                encode(event).decode("utf-8"),
                "" if at is None else repr(float(at)),
            ]
        keys = [
            self.key("aliases", snapshot.model),
            self.key("outbox", snapshot.model),
            self.key("outbox-pending"),
            self.key("models"),
            self.key("registry-id"),
        ]
        result = int(await self._commit(keys=keys, args=args))
        if result == -2:
            raise StateLost("the alias state is gone (Redis came back empty); restoring it")
        return result >= 0

    # --- outbox --------------------------------------------------------------------------------
    async def pending_models(self) -> set[str]:
        return cast(set[str], await self._redis.smembers(self.key("outbox-pending")))

    async def outbox(self, model: str, limit: int = 500) -> list[str]:
        return cast(list[str], await self._redis.lrange(self.key("outbox", model), 0, limit - 1))

    async def ack(self, model: str, count: int) -> int:
        """Drop the `count` oldest outbox entries (published); returns how many remain."""
        keys = [self.key("outbox", model), self.key("outbox-pending")]
        return int(await self._ack(keys=keys, args=[count, model]))

    async def dead_letter(self, model: str, entries: Sequence[str]) -> None:
        """Move the `len(entries)` oldest outbox entries (unreadable) to the model's dead-letter list."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.key("outbox-dead-letters", model), *entries)
            pipe.ltrim(self.key("outbox", model), len(entries), -1)
            await pipe.execute()

    def lock(self, model: str, timeout_s: float) -> aioredis.lock.Lock:
        return self._redis.lock(
            self.key("outbox-lock", model), timeout=timeout_s * 2, blocking_timeout=timeout_s
        )
