"""Entrypoint: `flywheel run feedback-aggregation` (or `python -m services.feedback_aggregation`)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from services.feedback_aggregation.settings import FeedbackSettings
from services.feedback_aggregation.worker import create_app
from services.shared.faust_app import run_worker
from services.shared.logging_setup import configure_logging

log = logging.getLogger(__name__)


def run() -> None:
    settings = FeedbackSettings()
    configure_logging(settings.log_level, "feedback-aggregation")
    log.info("starting feedback aggregation: %s", settings.safe_summary())
    if settings.feedback_metrics_port:
        start_http_server(settings.feedback_metrics_port, addr=settings.feedback_metrics_host)
    run_worker(create_app(settings), settings.log_level)
