"""Wiring of the canary rollout worker: `flywheel run canary-rollout` (or `python -m
services.canary_rollout`).

Three subscriptions (alias changes, inferences, feedback; one event at a time, in order per model), a
tick timer for the analysis, and the control API served by uvicorn on the same event loop once the
rollouts are restored from Redis (so admin actions and analysis share one RolloutService).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import uvicorn

from events import (
    ALIAS_CHANGED,
    FEEDBACK_RECORDED,
    INFERENCES,
    AliasChanged,
    FeedbackRecorded,
    InferenceRecorded,
)
from services.canary_rollout.adapters.executor import CommandExecutor
from services.canary_rollout.adapters.store import RolloutStore
from services.canary_rollout.entrypoints.http import create_api
from services.canary_rollout.handlers import RolloutService
from services.canary_rollout.settings import CanarySettings
from services.shared.consumer import ConsumerRuntime, Message, Subscription, Timer
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.mlflow_registry import RegistryAdapter
from services.shared.redis_store import RedisKeys, async_redis
from services.shared.service_main import run_consumer_worker

log = logging.getLogger(__name__)


def build_service(settings: CanarySettings) -> RolloutService:
    store = RolloutStore(async_redis(settings.redis_url), RedisKeys(settings.redis_prefix))
    registry = RegistryAdapter(settings.mlflow_tracking_uri)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers, profile_named(settings.kafka_profile), client_id="flywheel-canary"
    )
    return RolloutService(settings, store, CommandExecutor(settings, store, registry, publisher), registry)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the Faust worker: Faust owns the signals, uvicorn must not install its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def each(handle: Callable[[Any], Awaitable[object]]) -> Callable[[list[Message]], Awaitable[None]]:
    """A per-event use case as the runtime's (batch) handler."""

    async def handle_all(messages: list[Message]) -> None:
        for message in messages:
            await handle(message.event)

    return handle_all


def build_runtime(settings: CanarySettings, service: RolloutService | None = None) -> ConsumerRuntime:
    svc = service or build_service(settings)
    runtime: ConsumerRuntime

    async def serve_api() -> None:
        config = uvicorn.Config(
            create_api(svc, ready=lambda: runtime.ready),
            host=settings.canary_host,
            port=settings.canary_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        await _EmbeddedServer(config).serve()

    runtime = ConsumerRuntime(
        worker="canary-rollout",
        settings=settings,
        group_id=settings.canary_group_id,
        web_port=settings.canary_web_port,
        subscriptions=[
            Subscription(ALIAS_CHANGED, AliasChanged, each(svc.on_alias_changed)),
            Subscription(INFERENCES, InferenceRecorded, each(svc.on_inference)),
            Subscription(FEEDBACK_RECORDED, FeedbackRecorded, each(svc.on_feedback)),
        ],
        timers=[Timer(settings.canary_tick_s, svc.tick, "tick")],
        startup=[svc.restore],
        after_startup=[serve_api],
        on_assignment=[svc.restore],
    )
    svc.owns = lambda model: runtime.owns(ALIAS_CHANGED, model)
    return runtime


def run() -> None:
    run_consumer_worker(CanarySettings(), build_runtime, service="canary-rollout", log=log)
