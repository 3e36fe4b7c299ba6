"""Wiring of the retrainer: `flywheel run retrainer` (or `python -m services.retrainer`).

One subscription, RetrainingRequested, one request at a time per worker (training is CPU- and
memory-heavy, and requests of one model must not race for its `challenger` alias). The handler returns
only once the request's outcome is recorded in MLflow and its RetrainingFinished acknowledged, so the
runtime commits a request's offset only after that (a redelivery is recognised and not trained twice).
"""

from __future__ import annotations

import logging
import os

from events import RETRAINING_REQUESTED, RetrainingRequested
from services.retrainer.handlers import RetrainHandler
from services.retrainer.settings import RetrainerSettings
from services.shared.consumer import ConsumerRuntime, Subscription
from services.shared.redis_store import async_redis
from services.shared.service_main import run_consumer_worker

log = logging.getLogger(__name__)


def build_runtime(settings: RetrainerSettings, handler: RetrainHandler | None = None) -> ConsumerRuntime:
    handler = handler or RetrainHandler(settings, redis=async_redis(settings.redis_url))
    return ConsumerRuntime(
        worker="retrainer",
        settings=settings,
        group_id=settings.retrainer_group_id,
        web_port=settings.retrainer_web_port,
        web_bind=settings.retrainer_metrics_host,
        subscriptions=[Subscription(RETRAINING_REQUESTED, RetrainingRequested, handler.handle)],
    )


def run() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in service logs
    settings = RetrainerSettings()
    run_consumer_worker(
        settings,
        build_runtime,
        service="retrainer",
        log=log,
        metrics_port=settings.retrainer_metrics_port,
        metrics_host=settings.retrainer_metrics_host,
    )
