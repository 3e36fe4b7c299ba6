"""Wiring of the feedback aggregation worker: `flywheel run feedback-aggregation` (or `python -m
services.feedback_aggregation`).

Two subscriptions (inferences, feedback), each in batches of up to FLYWHEEL_FEEDBACK_BATCH_MAX events
or what arrived within FLYWHEEL_FEEDBACK_BATCH_WITHIN_MS: the handler applies a batch in memory and
persists it, with its offsets, in one Redis write, and only then does the runtime acknowledge it. A tick
timer handles what only time triggers (cooldowns, publications to resume); the models persisted in
Redis are restored at start-up. Both topics are keyed by model name, so a model's events of one topic
arrive in order; the handler's per-model locks order the two topics' events of a model.
"""

from __future__ import annotations

import logging

from events import FEEDBACK_RECORDED, INFERENCES, FeedbackRecorded, InferenceRecorded
from services.feedback_aggregation.adapters.dataset_publisher import DatasetPublisher
from services.feedback_aggregation.adapters.mlflow_datasets import DatasetRegistry
from services.feedback_aggregation.adapters.store import FeedbackStore
from services.feedback_aggregation.handlers import FeedbackService
from services.feedback_aggregation.settings import FeedbackSettings
from services.shared.consumer import ConsumerRuntime, Subscription, Timer
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.mlflow_registry import RegistryAdapter
from services.shared.redis_store import RedisKeys, async_redis
from services.shared.service_main import run_consumer_worker

log = logging.getLogger(__name__)


def build_publisher(settings: FeedbackSettings) -> DatasetPublisher:
    registry = RegistryAdapter(settings.mlflow_tracking_uri)
    kafka = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        profile_named(settings.kafka_profile),
        client_id="flywheel-feedback-aggregation",
        timeout_s=10.0,
    )
    return DatasetPublisher(
        DatasetRegistry(settings.mlflow_tracking_uri, settings.feedback_experiment),
        kafka,
        settings.dataset_dir,
        champion_of=lambda model: registry.version_by_alias(model, settings.champion_alias),
    )


def build_service(settings: FeedbackSettings) -> FeedbackService:
    store = FeedbackStore(async_redis(settings.redis_url), RedisKeys(settings.redis_prefix))
    return FeedbackService(settings, store, build_publisher(settings))


def build_runtime(settings: FeedbackSettings, service: FeedbackService | None = None) -> ConsumerRuntime:
    svc = service or build_service(settings)
    batch_max, within_s = settings.feedback_batch_max, settings.feedback_batch_within_ms / 1000
    return ConsumerRuntime(
        worker="feedback-aggregation",
        settings=settings,
        group_id=settings.feedback_group_id,
        web_port=settings.feedback_web_port,
        web_bind=settings.feedback_metrics_host,
        subscriptions=[
            Subscription(INFERENCES, InferenceRecorded, svc.handle_batch, batch_max, within_s),
            Subscription(FEEDBACK_RECORDED, FeedbackRecorded, svc.handle_batch, batch_max, within_s),
        ],
        timers=[Timer(settings.feedback_tick_s, svc.tick, "tick")],
        startup=[svc.restore],
        on_stop=[svc.close],
        batched=True,
    )


def run() -> None:
    settings = FeedbackSettings()
    run_consumer_worker(
        settings,
        build_runtime,
        service="feedback-aggregation",
        log=log,
        metrics_port=settings.feedback_metrics_port,
        metrics_host=settings.feedback_metrics_host,
    )
