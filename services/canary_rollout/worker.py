"""The canary rollout worker: a Faust app with one agent per input topic, a tick timer, and the control
API served by uvicorn on the same event loop (so admin actions and analysis share one RolloutService).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import faust
import uvicorn

from events import (
    ALIAS_CHANGED,
    FEEDBACK_RECORDED,
    INFERENCES,
    AliasChanged,
    Event,
    EventDecodeError,
    FeedbackRecorded,
    InferenceRecorded,
    decode,
)
from services.canary_rollout import metrics
from services.canary_rollout.api import create_api
from services.canary_rollout.executor import CommandExecutor
from services.canary_rollout.service import RolloutService
from services.canary_rollout.settings import CanarySettings
from services.canary_rollout.store import RolloutStore
from services.shared.faust_app import event_topic, make_faust_app
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.mlflow_registry import RegistryAdapter
from services.shared.redis_store import RedisKeys, async_redis
from services.shared.retry import retry_forever

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


def create_app(settings: CanarySettings, service: RolloutService | None = None) -> faust.App:
    app = make_faust_app(settings.canary_group_id, settings, web_port=settings.canary_web_port)
    svc = service or build_service(settings)
    app.canary_service = svc  # type: ignore[attr-defined]

    def agent_for(topic: str, kind: type[Event], handle: Callable[[Any], Awaitable[None]]) -> None:
        async def consume(stream: Any) -> None:
            async for raw in stream:
                try:
                    event = decode(raw, kind) if raw is not None else None
                except EventDecodeError as exc:
                    log.error("skipping unreadable message on %s: %s", topic, exc)
                    continue
                if event is None:
                    continue

                def attempt(event: Event = event) -> Awaitable[None]:
                    return handle(event)

                await retry_forever(
                    attempt,
                    f"{topic} {event.event_id}",
                    on_error=lambda exc: metrics.ERRORS.labels(topic).inc(),
                )

        app.agent(event_topic(app, topic), name=f"canary-{topic}", concurrency=1)(consume)

    agent_for(ALIAS_CHANGED, AliasChanged, svc.on_alias_changed)
    agent_for(INFERENCES, InferenceRecorded, svc.on_inference)
    agent_for(FEEDBACK_RECORDED, FeedbackRecorded, svc.on_feedback)

    async def tick() -> None:
        try:
            await svc.tick()
        except Exception:
            metrics.ERRORS.labels("tick").inc()
            log.exception("rollout tick failed; retried at the next tick")

    app.timer(settings.canary_tick_s, name="canary-tick")(tick)

    async def serve_api() -> None:
        await retry_forever(svc.restore, "restoring rollouts")
        config = uvicorn.Config(
            create_api(svc),
            host=settings.canary_host,
            port=settings.canary_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        await _EmbeddedServer(config).serve()

    app.task(serve_api)
    return app
