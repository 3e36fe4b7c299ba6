"""Redis persistence of feedback aggregation: every write that matters is one Lua script, so an effect
and the progress that records it are stored together or not at all.

Per model (keys in `RedisKeys`, "feedback aggregation" section):
- `feedback_state(model)` hash: `seq` = events applied so far; `snapshot` (aggregates JSON) taken at
  `snapshot_seq`; `trigger` (TriggerState JSON); `pending_id` + `pending` (publication in progress);
  `last_publication`.
- `feedback_journal(model)` list: the raw events applied after the snapshot, in order. State =
  snapshot + replay of the journal through the pure `core.aggregates.apply` (deterministic), so a
  snapshot (hundreds of KB with the dedup ids) is written every `snapshot_every` events, not per event.
- `feedback_buffer(model)` list: raw feedback for the next dataset; renamed to
  `feedback_pending_buffer(model)` when a publication starts, so its examples can be rebuilt identically.
- `feedback_summary(model)`: the summary JSON readers use (`read_summary`).
Global: `feedback_progress()` hash `topic:partition` -> offset of the last applied event.

`append_event` checks, appends to the journal (and buffer), advances the offset, bumps `seq` and
writes the summary in one step. It refuses when `seq` is not the writer's (another worker wrote the
model meanwhile: reload) or when the offset is already recorded (the event was applied: a redelivery).

Layout note: the scripts touch several keys; on Redis Cluster they would need one hash slot (a
`{...}` hash tag in the prefix). Flywheel runs on one Redis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from services.shared.redis_store import RedisKeys

# KEYS: 1 state hash, 2 journal, 3 buffer, 4 progress hash, 5 summary, 6 models set
# ARGV: 1 expected seq, 2 progress field, 3 offset, 4 raw event, 5 '1' = also buffer it, 6 buffer max,
#       7 summary JSON, 8 model
_APPEND = """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if seq ~= tonumber(ARGV[1]) then return {'conflict', tostring(seq)} end
local done = redis.call('HGET', KEYS[4], ARGV[2])
if done and tonumber(done) >= tonumber(ARGV[3]) then return {'done', tostring(seq)} end
redis.call('RPUSH', KEYS[2], ARGV[4])
if ARGV[5] == '1' then
  redis.call('RPUSH', KEYS[3], ARGV[4])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[6]), -1)
end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[1], 'seq', tostring(seq + 1))
redis.call('SET', KEYS[5], ARGV[7])
redis.call('SADD', KEYS[6], ARGV[8])
return {'ok', tostring(seq + 1)}
"""

# KEYS: 1 state hash, 2 journal. ARGV: 1 expected seq, 2 snapshot JSON
_SNAPSHOT = """
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'snapshot', ARGV[2], 'snapshot_seq', ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: 1 state hash, 2 buffer, 3 pending buffer, 4 pending models, 5 summary
# ARGV: 1 expected seq, 2 expected trigger JSON ('' = none), 3 new trigger JSON, 4 pending id,
#       5 pending JSON, 6 model, 7 summary JSON
_BEGIN = """
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') ~= tonumber(ARGV[1]) then return 'conflict' end
if redis.call('HEXISTS', KEYS[1], 'pending_id') == 1 then return 'pending' end
if (redis.call('HGET', KEYS[1], 'trigger') or '') ~= ARGV[2] then return 'conflict' end
redis.call('DEL', KEYS[3])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[3]) end
redis.call('HSET', KEYS[1], 'trigger', ARGV[3], 'pending_id', ARGV[4], 'pending', ARGV[5])
redis.call('SADD', KEYS[4], ARGV[6])
redis.call('SET', KEYS[5], ARGV[7])
return 'ok'
"""

# KEYS: 1 state hash, 2 pending buffer, 3 pending models, 4 summary
# ARGV: 1 pending id, 2 last publication JSON, 3 model, 4 summary JSON
_FINISH = """
if redis.call('HGET', KEYS[1], 'pending_id') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'pending_id', 'pending')
redis.call('HSET', KEYS[1], 'last_publication', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('SET', KEYS[4], ARGV[4])
return 1
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class AppendStatus(StrEnum):
    OK = "ok"
    CONFLICT = "conflict"  # the model's seq is not the writer's: another worker wrote it
    DONE = "done"  # the offset is already recorded: the event was applied before


class BeginStatus(StrEnum):
    OK = "ok"
    CONFLICT = "conflict"
    PENDING = "pending"  # a publication is already in progress


@dataclass(frozen=True)
class StoredModel:
    """What Redis holds for one model, read in one transaction."""

    seq: int
    snapshot: dict[str, Any] | None
    snapshot_seq: int
    journal: list[str]
    trigger: str  # raw JSON ('' when never triggered): compared as is by `begin_publication`
    pending: dict[str, Any] | None
    last_publication: dict[str, Any] | None


def progress_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class FeedbackStore:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._append = redis.register_script(_APPEND)
        self._snapshot = redis.register_script(_SNAPSHOT)
        self._begin = redis.register_script(_BEGIN)
        self._finish = redis.register_script(_FINISH)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def load(self, model: str) -> StoredModel:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.feedback_state(model))
            pipe.lrange(self.keys.feedback_journal(model), 0, -1)
            fields, journal = cast(tuple[dict[str, str], list[str]], await pipe.execute())
        return StoredModel(
            seq=int(fields.get("seq", 0)),
            snapshot=json.loads(fields["snapshot"]) if fields.get("snapshot") else None,
            snapshot_seq=int(fields.get("snapshot_seq", 0)),
            journal=journal,
            trigger=fields.get("trigger", ""),
            pending=json.loads(fields["pending"]) if fields.get("pending") else None,
            last_publication=json.loads(fields["last_publication"])
            if fields.get("last_publication")
            else None,
        )

    async def progress(self, topic: str, partition: int) -> int:
        """Offset of the last applied event of a partition; -1 when none."""
        raw = await self.redis.hget(self.keys.feedback_progress(), progress_field(topic, partition))
        return int(raw) if raw is not None else -1

    async def append_event(
        self,
        model: str,
        *,
        expected_seq: int,
        topic: str,
        partition: int,
        offset: int,
        raw: str,
        buffer: bool,
        buffer_max: int,
        summary: str,
    ) -> tuple[AppendStatus, int]:
        status, seq = await self._append(
            keys=[
                self.keys.feedback_state(model),
                self.keys.feedback_journal(model),
                self.keys.feedback_buffer(model),
                self.keys.feedback_progress(),
                self.keys.feedback_summary(model),
                self.keys.feedback_models(),
            ],
            args=[
                expected_seq,
                progress_field(topic, partition),
                offset,
                raw,
                "1" if buffer else "0",
                buffer_max,
                summary,
                model,
            ],
        )
        return AppendStatus(status), int(seq)

    async def snapshot(self, model: str, seq: int, snapshot: str) -> bool:
        keys = [self.keys.feedback_state(model), self.keys.feedback_journal(model)]
        return bool(await self._snapshot(keys=keys, args=[seq, snapshot]))

    async def begin_publication(
        self,
        model: str,
        *,
        expected_seq: int,
        expected_trigger: str,
        trigger: str,
        pending_id: str,
        pending: str,
        summary: str,
    ) -> BeginStatus:
        status = await self._begin(
            keys=[
                self.keys.feedback_state(model),
                self.keys.feedback_buffer(model),
                self.keys.feedback_pending_buffer(model),
                self.keys.feedback_pending_models(),
                self.keys.feedback_summary(model),
            ],
            args=[expected_seq, expected_trigger, trigger, pending_id, pending, model, summary],
        )
        return BeginStatus(status)

    async def pending_feedback(self, model: str) -> list[str]:
        return cast(list[str], await self.redis.lrange(self.keys.feedback_pending_buffer(model), 0, -1))

    async def finish_publication(self, model: str, pending_id: str, last: str, summary: str) -> bool:
        done = await self._finish(
            keys=[
                self.keys.feedback_state(model),
                self.keys.feedback_pending_buffer(model),
                self.keys.feedback_pending_models(),
                self.keys.feedback_summary(model),
            ],
            args=[pending_id, last, model, summary],
        )
        return bool(done)

    async def models(self) -> set[str]:
        return cast(set[str], await self.redis.smembers(self.keys.feedback_models()))

    async def pending_models(self) -> set[str]:
        return cast(set[str], await self.redis.smembers(self.keys.feedback_pending_models()))

    async def write_summary(self, model: str, summary: str) -> None:
        await self.redis.set(self.keys.feedback_summary(model), summary)

    # --- publication lease --------------------------------------------------------------------------
    async def acquire_lease(self, model: str, token: str, ttl_s: float) -> bool:
        key = self.keys.feedback_publication_lease(model)
        return bool(await self.redis.set(key, token, nx=True, px=int(ttl_s * 1000)))

    async def renew_lease(self, model: str, token: str, ttl_s: float) -> bool:
        key = self.keys.feedback_publication_lease(model)
        return bool(await self._renew(keys=[key], args=[token, int(ttl_s * 1000)]))

    async def release_lease(self, model: str, token: str) -> None:
        await self._release(keys=[self.keys.feedback_publication_lease(model)], args=[token])


# --- readers ------------------------------------------------------------------------------------------


async def read_summary(redis: aioredis.Redis, keys: RedisKeys, model: str) -> dict[str, Any] | None:
    """The model's feedback summary (see `service.SUMMARY_FORMAT`), or None before its first event."""
    raw = await redis.get(keys.feedback_summary(model))
    return cast(dict[str, Any], json.loads(raw)) if raw else None


def read_summary_sync(redis: SyncRedis, keys: RedisKeys, model: str) -> dict[str, Any] | None:
    """`read_summary` for synchronous callers (`flywheel status`)."""
    raw = redis.get(keys.feedback_summary(model))
    return cast(dict[str, Any], json.loads(cast(str, raw))) if raw else None


async def summarised_models(redis: aioredis.Redis, keys: RedisKeys) -> set[str]:
    return cast(set[str], await redis.smembers(keys.feedback_models()))
