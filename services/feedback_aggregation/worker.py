"""The feedback aggregation worker: a Faust app with one agent per input topic (inferences, feedback),
a tick timer (cooldowns, publications to resume) and a start-up task restoring persisted models.

Each agent runs with concurrency 1 and handles its events in batches (`noack_take`: up to
FLYWHEEL_FEEDBACK_BATCH_MAX events, or what arrived within FLYWHEEL_FEEDBACK_BATCH_WITHIN_MS): the
service applies a batch in memory and persists it, with its offsets, in one Redis write; only then are
the batch's events acknowledged, so Faust commits an offset only after its effect is stored. Acks are
manual (`noack_take` acks nothing by itself): a batch interrupted by a crash or a stop is never
acknowledged, and is delivered again. Both topics are keyed by model name, so a model's events of one
topic arrive in order; the service's per-model locks order the two topics' events of a model.
"""

from __future__ import annotations

import asyncio
import logging
import time
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


async def _more_coming(queue: Any, deadline: float) -> bool:
    """Whether the batch should wait for the next event: yes when one is queued already; when none
    is, wait for one until `deadline` (the batch's linger) and say whether it came."""
    while queue.empty():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(remaining, 0.002))
    return True


def create_app(settings: FeedbackSettings, service: FeedbackService | None = None) -> faust.App:
    app = make_faust_app(settings.feedback_group_id, settings, web_port=settings.feedback_web_port)
    svc = service or build_service(settings)
    app.feedback_service = svc  # type: ignore[attr-defined]

    batch_max = settings.feedback_batch_max
    within_s = settings.feedback_batch_within_ms / 1000

    def agent_for(topic: str) -> None:
        async def consume(stream: Any) -> None:
            manual = stream.noack()  # acks only after the batch is persisted
            batch: list[Any] = []
            opened = 0.0
            async for event in manual.events():
                if not batch:
                    opened = time.monotonic()
                batch.append(event)
                if len(batch) < batch_max and await _more_coming(manual.channel.queue, opened + within_s):
                    continue
                await svc.handle_batch(
                    [(e.message.topic, e.message.partition, e.message.offset, e.value) for e in batch]
                )  # returns once the whole batch and its offsets are in Redis
                for done in batch:
                    await manual.ack(done)
                batch = []

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
