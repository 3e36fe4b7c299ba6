"""Entrypoint: `flywheel run retrainer` (or `python -m services.retrainer`)."""

from __future__ import annotations

import logging
import os

from prometheus_client import start_http_server

from services.retrainer.settings import RetrainerSettings
from services.retrainer.worker import create_app
from services.shared.faust_app import run_worker
from services.shared.logging_setup import configure_logging

log = logging.getLogger(__name__)


def run() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in service logs
    settings = RetrainerSettings()
    configure_logging(settings.log_level, "retrainer")
    log.info("starting retrainer: %s", settings.safe_summary())
    if settings.retrainer_metrics_port:
        start_http_server(settings.retrainer_metrics_port, addr=settings.retrainer_metrics_host)
    run_worker(create_app(settings), settings.log_level)
