"""Redis persistence of feedback aggregation: every write that matters is one Lua script, so an effect
and the progress that records it are stored together or not at all.

Per model (this worker's own keys, `FeedbackStore.key`; only the summary and the model set are in the
shared `RedisKeys`, because the console reads them):
- `feedback:state:{model}` hash: `seq` = events applied so far; `snapshot` (aggregates JSON) taken at
  `snapshot_seq`; `trigger` (TriggerState JSON); `pending_id` + `pending` (publication in progress);
  `last_publication`.
- `feedback:journal:{model}` list: the raw events applied after the snapshot, in order. State =
  snapshot + replay of the journal through the pure `core.aggregates.apply` (deterministic), so a
  snapshot (hundreds of KB with the dedup ids) is written every `snapshot_every` events, not per event.
- `feedback:buffer:{model}` list: raw feedback for the next dataset; renamed to
  `feedback:pending-buffer:{model}` when a publication starts, so its examples can be rebuilt identically.
- `feedback:summary:{model}`: the summary JSON readers use (`services.shared.feedback_summary.read_summary`).
- `feedback:publication-lease:{model}`: the worker running the model's publication (one at a time).
Global: `feedback:progress` hash `topic:partition` -> offset of the last applied event;
`feedback:pending-models` set: models with a publication in progress (resumed after a restart);
`feedback:epoch`: since when the counts count (`counts_epoch.py`).

`append_batch` persists one batch of applied events in one step: for every model of the batch it
appends the raw events to the journal (and the feedback ones to the buffer), bumps `seq` by their number
and (optionally) writes the summary; for every partition of the batch it records the offset of the
batch's last event. It refuses the whole batch when a model's `seq` is not the writer's (another worker
wrote the model meanwhile: reload) or when a partition's recorded offset reaches the batch's first
offset there (some events were applied already: a redelivery). All the models of a batch go in one
script because the offsets are per partition, not per model: a partition interleaves several models'
events, so a per-model write recording "offset N done" would also mark another model's unwritten events
before N as done. The summary goes with the batch or, at most `summary_interval` later, alone
(`write_summary_if`, only while `seq` is still the one it describes).

Layout note: the scripts touch several keys; on Redis Cluster they would need one hash slot (a
`{...}` hash tag in the prefix). Flywheel runs on one Redis.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, cast

import redis.asyncio as aioredis

from services.shared.redis_store import RedisKeys

# KEYS: 1 progress hash, 2 models set, then per model m (1-based) 4 keys from 3 + 4 * (m - 1):
#       state hash, journal, buffer, summary
# ARGV: 1 number of models, 2 number of partitions, 3 buffer max,
#       then per partition: progress field, first offset of the batch, last offset of the batch,
#       then per model: name, expected seq, number of events n, buffer flags ('1' = also buffer the
#       event; one character per event), summary JSON ('' = leave it), then its n raw events
_APPEND_BATCH = """
local nmodels, nparts, bmax = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a = 4
for i = 1, nparts do
  local done = redis.call('HGET', KEYS[1], ARGV[a])
  if done and tonumber(done) >= tonumber(ARGV[a + 1]) then return {'done', ARGV[a]} end
  a = a + 3
end
local models = {}
for m = 1, nmodels do
  local k = 3 + 4 * (m - 1)
  local seq = tonumber(redis.call('HGET', KEYS[k], 'seq') or '0')
  if seq ~= tonumber(ARGV[a + 1]) then return {'conflict', ARGV[a]} end
  models[m] = {k, a, seq}
  a = a + 5 + tonumber(ARGV[a + 2])
end
local out = {'ok'}
for m = 1, nmodels do
  local k, b, seq = models[m][1], models[m][2], models[m][3]
  local n, flags, first = tonumber(ARGV[b + 2]), ARGV[b + 3], b + 5
  local last = first + n - 1
  for j = first, last, 1000 do
    redis.call('RPUSH', KEYS[k + 1], unpack(ARGV, j, math.min(j + 999, last)))
  end
  local buffered = {}
  for j = 1, n do
    if string.byte(flags, j) == 49 then
      buffered[#buffered + 1] = ARGV[first + j - 1]
      if #buffered == 1000 then
        redis.call('RPUSH', KEYS[k + 2], unpack(buffered))
        buffered = {}
      end
    end
  end
  if #buffered > 0 then redis.call('RPUSH', KEYS[k + 2], unpack(buffered)) end
  if string.find(flags, '1', 1, true) then redis.call('LTRIM', KEYS[k + 2], -bmax, -1) end
  redis.call('HSET', KEYS[k], 'seq', tostring(seq + n))
  if ARGV[b + 4] ~= '' then redis.call('SET', KEYS[k + 3], ARGV[b + 4]) end
  redis.call('SADD', KEYS[2], ARGV[b])
  out[#out + 1] = tostring(seq + n)
end
a = 4
for i = 1, nparts do
  redis.call('HSET', KEYS[1], ARGV[a], ARGV[a + 2])
  a = a + 3
end
return out
"""

# KEYS: 1 state hash, 2 summary. ARGV: 1 expected seq, 2 summary JSON
_SUMMARY = """
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
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
    CONFLICT = "conflict"  # a model's seq is not the writer's: another worker wrote it
    DONE = "done"  # an offset is already recorded: events of the batch were applied before


class BeginStatus(StrEnum):
    OK = "ok"
    CONFLICT = "conflict"
    PENDING = "pending"  # a publication is already in progress


@dataclass(frozen=True)
class ModelAppend:
    """One model's part of a batch write: its raw events in order, applied on top of `expected_seq`."""

    model: str
    expected_seq: int
    events: list[bytes | str]
    buffered: str  # one character per event: '1' = also append it to the feedback buffer
    summary: str  # the summary JSON after the batch; '' = leave the stored one (written later)


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


OwnKey = Literal[
    "state",
    "journal",
    "buffer",
    "pending-buffer",
    "progress",
    "pending-models",
    "publication-lease",
    "epoch",
]


class FeedbackStore:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._append_batch = redis.register_script(_APPEND_BATCH)
        self._summary = redis.register_script(_SUMMARY)
        self._snapshot = redis.register_script(_SNAPSHOT)
        self._begin = redis.register_script(_BEGIN)
        self._finish = redis.register_script(_FINISH)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def key(self, kind: OwnKey, *model: str) -> str:
        """One of this worker's own keys, `{prefix}:feedback:{kind}[:{model}]` (layout above)."""
        return self.keys.key("feedback", kind, *model)

    async def load(self, model: str) -> StoredModel:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.key("state", model))
            pipe.lrange(self.key("journal", model), 0, -1)
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
        return await self.progress_of(progress_field(topic, partition))

    async def progress_of(self, key: str) -> int:
        """`progress` by progress field (`progress_field(topic, partition)`)."""
        raw = await self.redis.hget(self.key("progress"), key)
        return int(raw) if raw is not None else -1

    async def append_batch(
        self,
        appends: Sequence[ModelAppend],
        progress: Mapping[str, tuple[int, int]],
        *,
        buffer_max: int,
    ) -> tuple[AppendStatus, str, dict[str, int]]:
        """Persist a batch (see the module docstring). `progress`: progress field -> (first, last)
        offset of the batch's applied events in that partition. Returns the status, the model or
        partition that refused (conflict/done) and, when OK, each model's new `seq`."""
        keys: list[str] = [self.key("progress"), self.keys.feedback_models()]
        args: list[Any] = [len(appends), len(progress), buffer_max]
        for key, (first, last) in progress.items():
            args += (key, first, last)
        for append in appends:
            if not append.events or len(append.buffered) != len(append.events):
                raise ValueError(f"{append.model}: a batch write needs events and one flag per event")
            keys += (
                self.key("state", append.model),
                self.key("journal", append.model),
                self.key("buffer", append.model),
                self.keys.feedback_summary(append.model),
            )
            args += (append.model, append.expected_seq, len(append.events), append.buffered, append.summary)
            args += append.events
        result = await self._append_batch(keys=keys, args=args)
        status = AppendStatus(result[0])
        if status is not AppendStatus.OK:
            return status, str(result[1]), {}
        return status, "", {a.model: int(seq) for a, seq in zip(appends, result[1:], strict=True)}

    async def write_summary_if(self, model: str, seq: int, summary: str) -> bool:
        """Write the summary unless the model moved past `seq` (its writer writes a newer one)."""
        keys = [self.key("state", model), self.keys.feedback_summary(model)]
        return bool(await self._summary(keys=keys, args=[seq, summary]))

    async def snapshot(self, model: str, seq: int, snapshot: str) -> bool:
        keys = [self.key("state", model), self.key("journal", model)]
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
                self.key("state", model),
                self.key("buffer", model),
                self.key("pending-buffer", model),
                self.key("pending-models"),
                self.keys.feedback_summary(model),
            ],
            args=[expected_seq, expected_trigger, trigger, pending_id, pending, model, summary],
        )
        return BeginStatus(status)

    async def pending_feedback(self, model: str) -> list[str]:
        return cast(list[str], await self.redis.lrange(self.key("pending-buffer", model), 0, -1))

    async def finish_publication(self, model: str, pending_id: str, last: str, summary: str) -> bool:
        done = await self._finish(
            keys=[
                self.key("state", model),
                self.key("pending-buffer", model),
                self.key("pending-models"),
                self.keys.feedback_summary(model),
            ],
            args=[pending_id, last, model, summary],
        )
        return bool(done)

    async def models(self) -> set[str]:
        return cast(set[str], await self.redis.smembers(self.keys.feedback_models()))

    async def pending_models(self) -> set[str]:
        return cast(set[str], await self.redis.smembers(self.key("pending-models")))

    async def write_summary(self, model: str, summary: str) -> None:
        await self.redis.set(self.keys.feedback_summary(model), summary)

    # --- publication lease --------------------------------------------------------------------------
    async def acquire_lease(self, model: str, token: str, ttl_s: float) -> bool:
        key = self.key("publication-lease", model)
        return bool(await self.redis.set(key, token, nx=True, px=int(ttl_s * 1000)))

    async def renew_lease(self, model: str, token: str, ttl_s: float) -> bool:
        key = self.key("publication-lease", model)
        return bool(await self._renew(keys=[key], args=[token, int(ttl_s * 1000)]))

    async def release_lease(self, model: str, token: str) -> None:
        await self._release(keys=[self.key("publication-lease", model)], args=[token])
