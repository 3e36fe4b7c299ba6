"""The feedback aggregation worker: a Faust app with one agent per input topic (inferences, feedback),
a tick timer (cooldowns, publications to resume) and a start-up task restoring persisted models.

Each agent runs with concurrency 1 and handles one event at a time: the event's effect (and its
offset) is in Redis before the agent moves on, and Faust commits an offset only after that. Both
topics are keyed by model name, so a model's events of one topic arrive in order; the service's
per-model lock orders the two topics' events of a model.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import faust

from events import FEEDBACK_RECORDED, INFERENCES
from services.feedback_aggregation import metrics
from services.feedback_aggregation.mlflow_datasets import DatasetRegistry
from services.feedback_aggregation.publication import DatasetPublisher
from services.feedback_aggregation.service import FeedbackService
from services.feedback_aggregation.settings import FeedbackSettings
from services.feedback_aggregation.store import FeedbackStore
from services.shared.faust_app import event_topic, make_faust_app
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.mlflow_registry import RegistryAdapter
from services.shared.redis_store import RedisKeys, async_redis
from services.shared.retry import retry_forever

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


def create_app(settings: FeedbackSettings, service: FeedbackService | None = None) -> faust.App:
    app = make_faust_app(settings.feedback_group_id, settings, web_port=settings.feedback_web_port)
    svc = service or build_service(settings)
    app.feedback_service = svc  # type: ignore[attr-defined]

    def agent_for(topic: str) -> None:
        async def consume(stream: Any) -> None:
            async for event in stream.events():
                message = event.message
                await svc.handle(message.topic, message.partition, message.offset, event.value)

        app.agent(event_topic(app, topic), name=f"feedback-{topic}", concurrency=1)(consume)

    agent_for(INFERENCES)
    agent_for(FEEDBACK_RECORDED)

    async def tick() -> None:
        try:
            await svc.tick()
        except Exception:
            metrics.ERRORS.labels("tick").inc()
            log.exception("feedback tick failed; retried at the next tick")

    app.timer(settings.feedback_tick_s, name="feedback-tick")(tick)

    async def restore() -> None:
        await retry_forever(svc.restore, "restoring feedback aggregates")

    app.task(restore)

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        log.info("partitions assigned: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    return app
