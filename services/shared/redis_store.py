"""Redis connection factory, the naming rule of every key, and the keys more than one process reads."""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio as aioredis


def async_redis(url: str, *, timeout_s: float = 2.0) -> aioredis.Redis:
    """An asyncio client with bounded timeouts, so a dead Redis fails fast instead of hanging a request."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=15,
        decode_responses=True,
    )


def sync_redis(url: str, *, timeout_s: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=15,
        decode_responses=True,
    )


@dataclass(frozen=True)
class RedisKeys:
    """Keys more than one process reads, under one prefix (`FLYWHEEL_REDIS_PREFIX`): alias resolution
    and reload notices, the fleet, traffic splits, rollout states and feedback summaries (the console
    reads those). A key only one service uses is built where that service uses it, with `key`, and
    documented there (the watcher's alias state and outbox, the canary's commands, the feedback worker's
    journal, the gateway's request log, the retrainer's lease)."""

    prefix: str = "flywheel"

    def key(self, *parts: str) -> str:
        """`{prefix}:{part}:{part}...`: how every Flywheel key is named."""
        return ":".join((self.prefix, *parts))

    def resolution(self, model: str) -> str:
        """Hash alias -> JSON {version, event_id, occurred_at}: the alias resolution cache."""
        return self.key("resolution", model)

    def resolution_models(self) -> str:
        return self.key("resolution", "models")

    def resolution_epoch(self) -> str:
        """Set once the resolution cache is complete (rebuilt from the alias-changed topic); missing
        after Redis came back empty — the cache invalidation worker then rebuilds it."""
        return self.key("resolution-epoch")

    def reload_channel(self) -> str:
        return self.key("reload")

    def webhook_health(self) -> str:
        """WebhookHealth JSON the registry watcher rewrites every poll cycle (shared.webhook_health)."""
        return self.key("watcher", "webhook-health")

    def model_cache(self, model: str) -> str:
        """Hash of data cached for one model (anything that must not outlive an alias change): the cache
        invalidation worker deletes it before the reload notice. One key per model, so dropping it costs
        one command whatever the size of the database."""
        return self.key("cache", model)

    def fleet_replicas(self) -> str:
        """Sorted set of gateway replicas by last heartbeat (services.shared.fleet)."""
        return self.key("fleet", "replicas")

    def fleet_replica(self, replica: str) -> str:
        """ReplicaStatus JSON of one gateway replica, with a time to live (services.shared.fleet)."""
        return self.key("fleet", "replica", replica)

    def traffic_split(self, model: str) -> str:
        """TrafficSplit JSON of the model's canary rollout (services.shared.traffic)."""
        return self.key("traffic", model)

    def rollout_state(self, model: str) -> str:
        """CanaryState JSON of the model's rollout machine (persisted after every decision and tick)."""
        return self.key("canary", "state", model)

    def rollout_models(self) -> str:
        return self.key("canary", "models")

    def feedback_summary(self, model: str) -> str:
        """Summary JSON of the model's aggregates per version (`services.shared.feedback_summary`)."""
        return self.key("feedback", "summary", model)

    def feedback_models(self) -> str:
        return self.key("feedback", "models")
