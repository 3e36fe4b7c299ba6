"""Wiring of the registry watcher: `flywheel run registry-watcher` (or `python -m
services.registry_watcher`). Builds the watcher's parts once, runs the outbox relay and the poller in
the background, and serves the webhook router plus /healthz, /readyz (Redis and Kafka) and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

from services.registry_watcher.adapters.alias_state import AliasStateStore
from services.registry_watcher.adapters.outbox import OutboxRelay
from services.registry_watcher.entrypoints.deps import Watcher
from services.registry_watcher.entrypoints.http import router
from services.registry_watcher.entrypoints.poller import RegistryPoller
from services.registry_watcher.handlers import AliasChangeRecorder
from services.registry_watcher.settings import WatcherSettings
from services.shared import http_json
from services.shared.http_ops import ReadinessCheck, add_ops_routes
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.logging_setup import configure_logging
from services.shared.mlflow_registry import RegistryAdapter
from services.shared.redis_store import RedisKeys, async_redis
from services.shared.settings import redact_url
from services.shared.stages import StageAliases

log = logging.getLogger(__name__)


def build_watcher(settings: WatcherSettings) -> Watcher:
    redis = async_redis(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix)
    state = AliasStateStore(redis, keys)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        profile_named(settings.kafka_profile),
        client_id="flywheel-registry-watcher",
        timeout_s=settings.publish_timeout_s,
    )
    relay = OutboxRelay(state, publisher, timeout_s=settings.publish_timeout_s)
    recorder = AliasChangeRecorder(state, relay, registry_uri=redact_url(settings.mlflow_tracking_uri))
    poller = RegistryPoller(
        RegistryAdapter(settings.mlflow_tracking_uri),
        state,
        recorder,
        watched=settings.watches,
        models=settings.models,
        stage_mode=settings.poll_stages,
        stage_aliases=StageAliases(settings.champion_alias, settings.challenger_alias),
    )
    return Watcher(settings, redis, keys, state, publisher, relay, recorder, poller)


def create_app(settings: WatcherSettings | None = None, *, background: bool = True) -> FastAPI:
    """The watcher app; `background=False` skips the poller and outbox loops (unit/property tests)."""
    settings = settings or WatcherSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = build_watcher(settings)
        app.state.watcher = watcher
        if watcher.settings.webhook_secret is None:
            log.warning("FLYWHEEL_WEBHOOK_SECRET is not set: every webhook delivery will be refused (401)")
        tasks = []
        if background:
            tasks.append(asyncio.create_task(watcher.relay.run(settings.outbox_interval_s)))
            if settings.poll_interval_s > 0:
                tasks.append(asyncio.create_task(watcher.poller.run(settings.poll_interval_s)))
        log.info("registry watcher started with %s", settings.safe_summary())
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await asyncio.to_thread(watcher.publisher.close)
            await watcher.redis.aclose()

    app = FastAPI(title="Flywheel registry watcher", version="1", lifespan=lifespan)
    http_json.install(app)
    app.include_router(router)

    def readiness() -> dict[str, ReadinessCheck]:
        watcher: Watcher = app.state.watcher

        async def kafka() -> bool:
            return await asyncio.to_thread(watcher.publisher.connected)

        return {"redis": watcher.redis.ping, "kafka": kafka}

    add_ops_routes(app, readiness)
    return app


def run() -> None:
    settings = WatcherSettings()
    configure_logging(settings.log_level, "registry-watcher")
    uvicorn.run(
        create_app(settings),
        host=settings.watcher_host,
        port=settings.watcher_port,
        log_level="warning",
        access_log=False,
    )
