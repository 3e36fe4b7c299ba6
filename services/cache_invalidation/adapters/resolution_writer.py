"""Write side of the resolution cache (`services.shared.resolution`): compare-and-set of one alias
entry, dropping the model's cached data, and the reload notice.

The compare-and-set is one Lua script, so two writers (e.g. an old and a new worker during a
rebalance) cannot interleave between the check and the write: the entry is replaced only by a newer
event, by `(occurred_at, event_id)`, and the model is added to `resolution_models()` in the same step.
Entries are written with `occurred_at` in fixed-width UTC (`canonical_time`), so the script compares
order keys byte-wise; it also reads other RFC 3339 UTC spellings (`...:00Z`, `...:00.5+00:00`).
An entry the script cannot read (not JSON, no event_id, non-UTC offset) counts as absent and is
replaced, like `parse_entries` skips it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis.asyncio as aioredis

from services.cache_invalidation.domain.apply import canonical_time
from services.shared.redis_store import RedisKeys
from services.shared.resolution import ReloadNotice, ResolutionEntry, parse_entries

# KEYS[1] resolution hash of the model, KEYS[2] resolution_models set
# ARGV[1] alias, ARGV[2] entry JSON, ARGV[3] canonical occurred_at, ARGV[4] event_id, ARGV[5] model
# Returns {status, stored entry JSON}; status is "applied", "already" (same event_id) or "stale".
# Strings are compared byte by byte: Lua's `<` uses strcoll, and Redis sets LC_COLLATE from its
# environment, which would make the order depend on the server's locale.
_CAS_SCRIPT = """
local function canonical(ts)
  if type(ts) ~= 'string' then return nil end
  local base, frac, tz = string.match(ts, '^(%d%d%d%d%-%d%d%-%d%d[Tt ]%d%d:%d%d:%d%d)%.?(%d*)(.*)$')
  if not base then return nil end
  if tz ~= 'Z' and tz ~= 'z' and tz ~= '+00:00' and tz ~= '-00:00' then return nil end
  base = string.sub(base, 1, 10) .. 'T' .. string.sub(base, 12)
  return base .. '.' .. string.sub(frac .. '000000', 1, 6) .. 'Z'
end
local function less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and type(doc['event_id']) == 'string' then
    local cur_ts = canonical(doc['occurred_at'])
    if cur_ts then
      if doc['event_id'] == ARGV[4] then return {'already', current} end
      if less(ARGV[3], cur_ts) or (cur_ts == ARGV[3] and less(ARGV[4], doc['event_id'])) then
        return {'stale', current}
      end
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[5])
return {'applied', ARGV[2]}
"""


def entry_json(entry: ResolutionEntry) -> str:
    """Stored form of an entry: `ResolutionEntry` JSON with `occurred_at` in fixed-width UTC."""
    return json.dumps(
        {
            "version": entry.version,
            "event_id": entry.event_id,
            "occurred_at": canonical_time(entry.occurred_at),
        },
        separators=(",", ":"),
    )


class CasStatus(StrEnum):
    APPLIED = "applied"
    ALREADY = "already"
    STALE = "stale"


@dataclass(frozen=True)
class CasResult:
    status: CasStatus
    stored: ResolutionEntry | None  # what the hash holds for the alias after the call


class ResolutionWriter:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._cas = redis.register_script(_CAS_SCRIPT)

    async def read(self, model: str) -> dict[str, ResolutionEntry]:
        raw = cast(dict[str, str], await self._redis.hgetall(self._keys.resolution(model)))
        return parse_entries(raw)

    async def compare_and_set(self, model: str, alias: str, entry: ResolutionEntry) -> CasResult:
        """Store `entry` for `alias` unless the stored entry is the same event or newer."""
        status, stored = cast(
            list[Any],
            await self._cas(
                keys=[self._keys.resolution(model), self._keys.resolution_models()],
                args=[alias, entry_json(entry), canonical_time(entry.occurred_at), entry.event_id, model],
            ),
        )
        try:
            stored_entry: ResolutionEntry | None = ResolutionEntry.model_validate_json(stored)
        except ValueError:
            stored_entry = None
        return CasResult(CasStatus(status), stored_entry)

    async def complete(self) -> bool:
        """Is the cache whole (its epoch marker set)? False after Redis came back empty (`rebuild.py`)."""
        return bool(await self._redis.exists(self._keys.resolution_epoch()))

    async def mark_complete(self) -> None:
        await self._redis.set(self._keys.resolution_epoch(), "1")

    async def drop_model_cache(self, model: str) -> int:
        """Delete the model's cached data (`RedisKeys.model_cache`); returns how many fields it held.

        One hash per model, not a key pattern: a SCAN for `cache:{model}:*` walked every key of the
        database on each alias change — the request log alone holds one per prediction."""
        key = self._keys.model_cache(model)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hlen(key)
            pipe.unlink(key)
            fields, _ = await pipe.execute()
        return int(fields)

    async def publish(self, notice: ReloadNotice) -> int:
        """Send the notice on the reload channel; returns the number of subscribers that got it."""
        return int(await self._redis.publish(self._keys.reload_channel(), notice.model_dump_json()))
