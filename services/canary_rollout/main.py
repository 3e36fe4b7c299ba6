"""Entrypoint: `flywheel run canary-rollout` (or `python -m services.canary_rollout`)."""

from __future__ import annotations

import logging

from services.canary_rollout.settings import CanarySettings
from services.canary_rollout.worker import create_app
from services.shared.faust_app import run_worker
from services.shared.logging_setup import configure_logging

log = logging.getLogger(__name__)


def run() -> None:
    settings = CanarySettings()
    configure_logging(settings.log_level, "canary-rollout")
    log.info("starting canary rollout: %s", settings.safe_summary())
    run_worker(create_app(settings), settings.log_level)
