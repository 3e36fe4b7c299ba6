"""Entrypoint: `flywheel run cache-invalidation` (or `python -m services.cache_invalidation`)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from services.cache_invalidation.settings import CacheInvalidationSettings
from services.cache_invalidation.worker import create_app
from services.shared.faust_app import run_worker
from services.shared.logging_setup import configure_logging

log = logging.getLogger(__name__)


def run() -> None:
    settings = CacheInvalidationSettings()
    configure_logging(settings.log_level, "cache-invalidation")
    log.info("starting cache invalidation: %s", settings.safe_summary())
    if settings.invalidation_metrics_port:
        start_http_server(settings.invalidation_metrics_port, addr=settings.invalidation_metrics_host)
    run_worker(create_app(settings), settings.log_level)
