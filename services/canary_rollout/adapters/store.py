"""Redis persistence of the canary service: rollout state per model, the traffic split, decision history,
the alias view (champion/challenger versions as the alias-changed stream told us), and the admin
commands an instance hands to the instance that owns the model (with their results).

The rollout state, the model set and the traffic split are shared keys (`RedisKeys`: the gateways and
the console read them); the rest are this service's own, `{prefix}:canary:{kind}[:{id}]`:
`decisions:{model}` (DecisionRecord JSON, oldest first, capped: the decision history), `aliases:{model}`
(alias -> version as seen on the alias-changed stream), `commands:{model}` and the set `commands-pending`
(admin actions waiting for the instance that owns the model), `command-result:{id}` (their outcome).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, cast

import redis.asyncio as aioredis

from services.canary_rollout.domain import DecisionRecord, RolloutMachine, RolloutPolicy
from services.shared.redis_store import RedisKeys
from services.shared.traffic import TrafficSplit

HISTORY = 500  # decisions kept per model for the dashboard
RESULT_TTL_S = 120


OwnKey = Literal["decisions", "aliases", "commands", "commands-pending", "command-result"]


class RolloutStore:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    def key(self, kind: OwnKey, *of: str) -> str:
        """One of this service's own keys, `{prefix}:canary:{kind}[:{of}]` (layout above)."""
        return self.keys.key("canary", kind, *of)

    async def load(self, model: str, policy: RolloutPolicy) -> RolloutMachine:
        raw = await self.redis.get(self.keys.rollout_state(model))
        if raw:
            return RolloutMachine.from_json(raw, policy)
        return RolloutMachine(model, policy)

    async def save(self, machine: RolloutMachine) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.rollout_state(machine.model), machine.to_json())
            pipe.sadd(self.keys.rollout_models(), machine.model)
            await pipe.execute()

    async def models(self) -> set[str]:
        return cast(set[str], await self.redis.smembers(self.keys.rollout_models()))

    async def set_split(
        self,
        model: str,
        rollout_id: str,
        weight: float,
        champion: str | None,
        challenger: str | None,
        shadow_share: float = 0.0,
    ) -> None:
        split = TrafficSplit(
            model=model,
            rollout_id=rollout_id,
            weight=weight,
            champion_version=champion,
            challenger_version=challenger,
            shadow_share=shadow_share,
            updated_at=datetime.now(UTC),
        )
        await self.redis.set(self.keys.traffic_split(model), split.model_dump_json())

    async def split(self, model: str) -> TrafficSplit | None:
        raw = await self.redis.get(self.keys.traffic_split(model))
        return TrafficSplit.model_validate_json(raw) if raw else None

    async def append_decision(self, record: DecisionRecord) -> None:
        key = self.key("decisions", record.model)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, record.model_dump_json())
            pipe.ltrim(key, -HISTORY, -1)
            await pipe.execute()

    async def decisions(self, model: str) -> list[DecisionRecord]:
        raw = cast(list[str], await self.redis.lrange(self.key("decisions", model), 0, -1))
        return [DecisionRecord.model_validate_json(r) for r in raw]

    async def aliases(self, model: str) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(self.key("aliases", model)))

    async def set_alias(self, model: str, alias: str, version: str | None) -> None:
        key = self.key("aliases", model)
        if version is None:
            await self.redis.hdel(key, alias)
        else:
            await self.redis.hset(key, alias, version)

    # --- admin commands for the owning instance ---------------------------------------------------------
    async def enqueue_command(self, model: str, command: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.key("commands", model), command)
            pipe.sadd(self.key("commands-pending"), model)
            await pipe.execute()

    async def models_with_commands(self) -> set[str]:
        return cast(set[str], await self.redis.smembers(self.key("commands-pending")))

    async def take_commands(self, model: str) -> list[str]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self.key("commands", model), 0, -1)
            pipe.delete(self.key("commands", model))
            pipe.srem(self.key("commands-pending"), model)
            raw, _, _ = await pipe.execute()
        return cast(list[str], raw)

    async def set_command_result(self, command_id: str, result: str) -> None:
        await self.redis.set(self.key("command-result", command_id), result, ex=RESULT_TTL_S)

    async def command_result(self, command_id: str) -> str | None:
        return cast(str | None, await self.redis.get(self.key("command-result", command_id)))
