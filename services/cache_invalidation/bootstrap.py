"""Wiring of the cache invalidation worker: `flywheel run cache-invalidation` (or `python -m
services.cache_invalidation`). One subscription: AliasChanged, one event at a time (order per model)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from events import ALIAS_CHANGED, AliasChanged
from services.cache_invalidation.handlers import InvalidationHandler
from services.cache_invalidation.settings import CacheInvalidationSettings
from services.shared.consumer import ConsumerRuntime, Subscription
from services.shared.faust_app import run_worker
from services.shared.logging_setup import configure_logging

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
        on_stop=[handler.close],
        retry_initial_s=settings.invalidation_retry_initial_s,
        retry_max_s=settings.invalidation_retry_max_s,
    )


def run() -> None:
    settings = CacheInvalidationSettings()
    configure_logging(settings.log_level, "cache-invalidation")
    log.info("starting cache invalidation: %s", settings.safe_summary())
    if settings.invalidation_metrics_port:
        start_http_server(settings.invalidation_metrics_port, addr=settings.invalidation_metrics_host)
    run_worker(build_runtime(settings).build(), settings.log_level)
