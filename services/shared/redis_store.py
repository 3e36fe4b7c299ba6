"""Redis connection factory and the key layout shared by all services (one place for key names)."""

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
    """Every Redis key Flywheel writes, under one prefix (`FLYWHEEL_REDIS_PREFIX`)."""

    prefix: str = "flywheel"

    # registry watcher
    def alias_state(self, model: str) -> str:
        """Hash alias -> version: what the watcher last published for `model`."""
        return f"{self.prefix}:watcher:aliases:{model}"

    def registry_identity(self) -> str:
        """The identity of the MLflow registry the watcher's alias state belongs to."""
        return f"{self.prefix}:watcher:registry-id"

    def alias_state_models(self) -> str:
        return f"{self.prefix}:watcher:models"

    def outbox(self, model: str) -> str:
        """List of encoded AliasChanged events not yet acknowledged by Kafka, oldest first."""
        return f"{self.prefix}:watcher:outbox:{model}"

    def outbox_pending(self) -> str:
        """Set of models whose outbox is not empty."""
        return f"{self.prefix}:watcher:outbox-pending"

    def outbox_dead_letters(self, model: str) -> str:
        """List of outbox entries that were not readable events (set aside, never published)."""
        return f"{self.prefix}:watcher:outbox-dead-letters:{model}"

    def outbox_lock(self, model: str) -> str:
        return f"{self.prefix}:watcher:outbox-lock:{model}"

    def webhook_delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}:watcher:delivery:{delivery_id}"

    # cache invalidation / gateway
    def resolution(self, model: str) -> str:
        """Hash alias -> JSON {version, event_id, occurred_at}: the alias resolution cache."""
        return f"{self.prefix}:resolution:{model}"

    def resolution_models(self) -> str:
        return f"{self.prefix}:resolution:models"

    def reload_channel(self) -> str:
        return f"{self.prefix}:reload"

    def fleet_replicas(self) -> str:
        """Sorted set of gateway replicas by last heartbeat (services.shared.fleet)."""
        return f"{self.prefix}:fleet:replicas"

    def fleet_replica(self, replica: str) -> str:
        """ReplicaStatus JSON of one gateway replica, with a time to live (services.shared.fleet)."""
        return f"{self.prefix}:fleet:replica:{replica}"

    def traffic_split(self, model: str) -> str:
        """TrafficSplit JSON of the model's canary rollout (services.shared.traffic)."""
        return f"{self.prefix}:traffic:{model}"

    # canary rollout
    def rollout_state(self, model: str) -> str:
        """CanaryState JSON of the model's rollout machine (persisted after every decision and tick)."""
        return f"{self.prefix}:canary:state:{model}"

    def rollout_models(self) -> str:
        return f"{self.prefix}:canary:models"

    def rollout_decisions(self, model: str) -> str:
        """List of DecisionRecord JSON, oldest first (capped): the dashboard's history."""
        return f"{self.prefix}:canary:decisions:{model}"

    def rollout_commands(self, model: str) -> str:
        """Admin actions waiting for the canary instance that owns `model`."""
        return f"{self.prefix}:canary:commands:{model}"

    def rollout_commands_pending(self) -> str:
        return f"{self.prefix}:canary:commands-pending"

    def rollout_command_result(self, command_id: str) -> str:
        return f"{self.prefix}:canary:command-result:{command_id}"

    def rollout_aliases(self, model: str) -> str:
        """Hash alias -> version as seen on the alias-changed stream (champion at challenger time)."""
        return f"{self.prefix}:canary:aliases:{model}"

    def request_log(self, request_id: str) -> str:
        return f"{self.prefix}:request:{request_id}"

    def trace_request(self, trace_id: str) -> str:
        """trace id -> request id of a served prediction (feedback by trace id)."""
        return f"{self.prefix}:trace-request:{trace_id}"

    def feedback_rate(self, user_id: str, minute: int) -> str:
        """Counter of one user's ratings in one minute (the gateway's per-user rate limit)."""
        return f"{self.prefix}:gateway:feedback-rate:{user_id}:{minute}"

    def feedback_seen(self, request_id: str, user_id: str) -> str:
        return f"{self.prefix}:feedback-seen:{request_id}:{user_id}"

    def retraining_lease(self, request_event_id: str) -> str:
        """Held by the retrainer instance handling one request (two must never train it at once)."""
        return f"{self.prefix}:retrainer:lease:{request_event_id}"

    # feedback aggregation
    def feedback_state(self, model: str) -> str:
        """Hash of the model's aggregation state: `seq` (events applied), `snapshot` + `snapshot_seq`
        (aggregates as of that seq), `trigger` (TriggerState JSON), `pending` + `pending_id` (a dataset
        publication in progress), `last_publication` (JSON of the last one done)."""
        return f"{self.prefix}:feedback:state:{model}"

    def feedback_journal(self, model: str) -> str:
        """List of raw events applied after the snapshot, in the order they were applied."""
        return f"{self.prefix}:feedback:journal:{model}"

    def feedback_buffer(self, model: str) -> str:
        """List of raw FeedbackRecorded events not yet turned into a dataset (oldest first, capped)."""
        return f"{self.prefix}:feedback:buffer:{model}"

    def feedback_pending_buffer(self, model: str) -> str:
        """The buffer taken by the pending publication (frozen: its examples are rebuilt from it)."""
        return f"{self.prefix}:feedback:pending-buffer:{model}"

    def feedback_progress(self) -> str:
        """Hash `topic:partition` -> offset of the last event applied (written with the effect)."""
        return f"{self.prefix}:feedback:progress"

    def feedback_summary(self, model: str) -> str:
        """Summary JSON of the model's aggregates per version (read with `read_summary`)."""
        return f"{self.prefix}:feedback:summary:{model}"

    def feedback_models(self) -> str:
        return f"{self.prefix}:feedback:models"

    def feedback_pending_models(self) -> str:
        """Set of models with a dataset publication in progress (resumed after a restart)."""
        return f"{self.prefix}:feedback:pending-models"

    def feedback_publication_lease(self, model: str) -> str:
        """Lease of the worker running the model's publication (one at a time across workers)."""
        return f"{self.prefix}:feedback:publication-lease:{model}"
