"""Wiring of the registry watcher: `flywheel run registry-watcher` (or `python -m
services.registry_watcher`). Builds the watcher's parts once, runs the outbox relay and the poller in
the background, and serves the webhook router plus /healthz, /readyz (Redis and Kafka) and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI
from mlflow import MlflowClient

from events import ALIAS_CHANGED
from services.registry_watcher.adapters.alias_state import AliasStateStore
from services.registry_watcher.adapters.health_report import HealthReporter
from services.registry_watcher.adapters.outbox import OutboxRelay
from services.registry_watcher.adapters.registry_identity import registry_identity
from services.registry_watcher.domain.delivery_health import DeliveryHealth
from services.registry_watcher.entrypoints.deps import Binding, Watcher
from services.registry_watcher.entrypoints.http import router
from services.registry_watcher.entrypoints.poller import RegistryPoller
from services.registry_watcher.handlers import AliasChangeRecorder
from services.registry_watcher.settings import WatcherSettings
from services.registry_watcher.state_restore import StateKeeper
from services.shared.http_ops import ReadinessCheck, add_ops_routes, service_app
from services.shared.kafka.admin import check_topics
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.logging_setup import configure_logging
from services.shared.mlflow_registry import RegistryAdapter
from services.shared.redis_store import RedisKeys, async_redis
from services.shared.retry import retry_forever
from services.shared.service_main import serve_http
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
    health = DeliveryHealth(
        time.time(), grace_s=settings.webhook_health_grace_s, window_s=settings.webhook_health_window_s
    )
    poller = RegistryPoller(
        RegistryAdapter(settings.mlflow_tracking_uri),
        state,
        recorder,
        watched=settings.watches,
        models=settings.models,
        stage_mode=settings.poll_stages,
        stage_aliases=StageAliases(settings.champion_alias, settings.challenger_alias),
        health=health,
        reporter=HealthReporter(redis, keys, health, settings.poll_interval_s),
    )
    watcher = Watcher(settings, redis, keys, state, publisher, relay, recorder, poller, Binding(), health)
    watcher.keeper = StateKeeper(
        state,
        lambda: bind_registry(watcher),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        kafka_profile=settings.kafka_profile,
        watched=settings.watches,
        registry_uri=redact_url(settings.mlflow_tracking_uri),
    )
    poller.ensure_state = watcher.keeper.ensure
    return watcher


async def bind_registry(watcher: Watcher) -> bool:
    """Check (and record) which registry the alias state belongs to; see adapters/registry_identity."""
    settings = watcher.settings
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    identity = await asyncio.to_thread(registry_identity, client)
    status, stored = await watcher.state.bind(identity, adopt=settings.registry_adopt)
    registry = redact_url(settings.mlflow_tracking_uri)
    if status == "refused":
        watcher.binding = Binding(
            "refused",
            f"the alias state in Redis namespace {settings.redis_prefix!r} belongs to registry {stored}, "
            f"not to {registry} ({identity}): nothing is published. Use another FLYWHEEL_REDIS_PREFIX, or "
            "set FLYWHEEL_REGISTRY_ADOPT=true to drop that state and publish this registry's aliases.",
        )
        log.error("%s", watcher.binding.detail)
        return False
    watcher.binding = Binding(status, f"registry {registry} ({identity})")
    if status == "adopted":
        log.warning("adopted namespace %r from registry %s for %s", settings.redis_prefix, stored, identity)
    return True


async def _run_when_bound(watcher: Watcher, loops: list[Callable[[], Awaitable[None]]]) -> None:
    """Restore the alias state if it is gone, bind (retrying while MLflow, Redis or Kafka is down), then
    run the publishing loops; never when refused."""
    assert watcher.keeper is not None
    keeper = watcher.keeper
    what = "checking the alias state and the registry identity"
    bound = await retry_forever(lambda: keeper.ensure(check_identity=True), what, max_s=10.0)
    if bound:
        await asyncio.gather(*(loop() for loop in loops))


def create_app(settings: WatcherSettings | None = None, *, background: bool = True) -> FastAPI:
    """The watcher app; `background=False` skips the poller and outbox loops (unit/property tests)."""
    settings = settings or WatcherSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = build_watcher(settings)
        app.state.watcher = watcher
        if background:
            await asyncio.to_thread(check_topics, settings, [ALIAS_CHANGED], "registry-watcher")
        if watcher.settings.webhook_secret is None:
            log.warning("FLYWHEEL_WEBHOOK_SECRET is not set: every webhook delivery will be refused (401)")
        tasks = []
        if not background:  # in-process tests: one check, no loops
            with contextlib.suppress(Exception):
                await bind_registry(watcher)  # no topic to restore from: these tests start empty
        else:
            loops: list[Callable[[], Awaitable[None]]] = [
                lambda: watcher.relay.run(settings.outbox_interval_s)
            ]
            if settings.poll_interval_s > 0:
                loops.append(lambda: watcher.poller.run(settings.poll_interval_s))
            tasks.append(asyncio.create_task(_run_when_bound(watcher, loops)))
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

    app = service_app("Flywheel registry watcher", "1", lifespan=lifespan)
    app.include_router(router)

    def readiness() -> dict[str, ReadinessCheck]:
        watcher: Watcher = app.state.watcher

        async def kafka() -> bool:
            return await asyncio.to_thread(watcher.publisher.connected)

        async def registry() -> bool:
            return watcher.binding.ok

        return {"redis": watcher.redis.ping, "kafka": kafka, "registry": registry}

    add_ops_routes(app, readiness)
    return app


def run() -> None:
    settings = WatcherSettings()
    configure_logging(settings.log_level, "registry-watcher")
    serve_http(create_app(settings), settings.watcher_host, settings.watcher_port)
