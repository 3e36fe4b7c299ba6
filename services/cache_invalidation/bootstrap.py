"""Wiring of the cache invalidation worker: `flywheel run cache-invalidation` (or `python -m
services.cache_invalidation`). One subscription: AliasChanged, one event at a time (order per model)."""

from __future__ import annotations

import logging

from events import ALIAS_CHANGED, AliasChanged
from services.cache_invalidation.handlers import InvalidationHandler
from services.cache_invalidation.settings import CacheInvalidationSettings
from services.shared.consumer import ConsumerRuntime, Subscription, Timer
from services.shared.service_main import run_consumer_worker

log = logging.getLogger(__name__)


def build_runtime(
    settings: CacheInvalidationSettings, handler: InvalidationHandler | None = None
) -> ConsumerRuntime:
    handler = handler or InvalidationHandler(settings)
    return ConsumerRuntime(
        worker="cache-invalidation",
        settings=settings,
        group_id=settings.invalidation_group_id,
        web_port=settings.invalidation_web_port,
        web_bind=settings.invalidation_metrics_host,
        subscriptions=[Subscription(ALIAS_CHANGED, AliasChanged, handler.handle)],
        timers=[Timer(settings.invalidation_rebuild_check_s, handler.rebuild_if_lost, "rebuild-if-lost")],
        on_stop=[handler.close],
        retry_initial_s=settings.invalidation_retry_initial_s,
        retry_max_s=settings.invalidation_retry_max_s,
    )


def run() -> None:
    settings = CacheInvalidationSettings()
    run_consumer_worker(
        settings,
        build_runtime,
        service="cache-invalidation",
        log=log,
        metrics_port=settings.invalidation_metrics_port,
        metrics_host=settings.invalidation_metrics_host,
    )
