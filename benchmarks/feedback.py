"""`flywheel bench feedback`: feedback events aggregated end to end vs the broker's bare ceiling.

Per broker (Apache Kafka with the `standard` production client settings; Tansu with its `embedded`
workarounds), on that broker, with the same N FeedbackRecorded messages:
- ceiling: a bare aiokafka producer writes them to a fresh topic and a bare aiokafka consumer reads them
  back (produce start -> last message consumed);
- flywheel: the same messages produced (aiokafka, same profile) to `flywheel.feedback.recorded` while the
  feedback aggregation worker (a subprocess, as deployed) runs; the clock stops when its Redis summary has
  applied all N (each one an exact, idempotent, persisted count).
Target: flywheel >= 0.5x the ceiling. Also reports the dataset writer's rows/s (Parquet target 100k).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from benchmarks.common import run_on_brokers
from events import FEEDBACK_RECORDED, FeedbackRating, FeedbackRecorded, encode, event_key
from services.cli.devstack.process import free_port
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import StackRunner
from services.feedback_aggregation.adapters.store import read_summary_sync
from services.shared.kafka.profile import profile_named
from services.shared.redis_store import RedisKeys


def _messages(model: str, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    now = datetime.now(UTC)
    for i in range(n):
        event = FeedbackRecorded(
            producer="bench",
            feedback_id=uuid.uuid4().hex,
            model=model,
            version=str(1 + i % 2),
            request_id=f"req-{i}",
            rating=FeedbackRating.THUMBS_UP if i % 3 else FeedbackRating.THUMBS_DOWN,
            corrected_output=1 if i % 7 == 0 else None,
            user_id=f"user-{i}",
            inputs={"alcohol": 13.1, "ash": 2.3},
            outputs=0,
            served_at=now,
        )
        out.append((event_key(event), encode(event)))
    return out


async def _produce(
    endpoints: Endpoints, profile: str, topic: str, messages: list[tuple[bytes, bytes]]
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=endpoints.kafka_bootstrap_servers,
        acks="all",
        **profile_named(profile).aiokafka_producer,
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _ceiling(endpoints: Endpoints, profile: str, messages: list[tuple[bytes, bytes]]) -> float:
    topic = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=endpoints.kafka_bootstrap_servers)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=endpoints.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        **{k: v for k, v in profile_named(profile).aiokafka_consumer.items() if k == "fetch_max_wait_ms"},
    )
    await consumer.start()
    try:
        started = time.perf_counter()
        produce = asyncio.create_task(_produce(endpoints, profile, topic, messages))
        seen = 0
        while seen < len(messages):
            batch = await consumer.getmany(timeout_ms=200)
            seen += sum(len(records) for records in batch.values())
        elapsed = time.perf_counter() - started
        await produce
    finally:
        await consumer.stop()
    return len(messages) / elapsed


def _flywheel(runner: StackRunner, endpoints: Endpoints, profile: str, n: int) -> dict[str, Any]:
    model = f"bench_feedback_{uuid.uuid4().hex[:8]}"
    keys = RedisKeys(f"bench-{uuid.uuid4().hex[:8]}")
    worker = runner.start_service(
        "feedback-aggregation",
        instance=f"feedback-aggregation-{profile}",
        extra_env={
            "FLYWHEEL_KAFKA_PROFILE": profile,
            "FLYWHEEL_REDIS_PREFIX": keys.prefix,
            "FLYWHEEL_MODELS": model,
            "FLYWHEEL_FEEDBACK_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}",
            "FLYWHEEL_FEEDBACK_WEB_PORT": str(free_port()),
            "FLYWHEEL_FEEDBACK_MIN_CORRECTIONS": str(10 * n),  # measure aggregation, not publication
            "FLYWHEEL_FEEDBACK_MIN_SAMPLE": str(10 * n),
        },
    )
    r = redis.Redis.from_url(endpoints.redis_url, decode_responses=True)

    def applied() -> int:
        summary = read_summary_sync(r, keys, model)
        return int(summary.get("applied_events", 0)) if summary else 0

    try:
        warmup = _messages(model, 1)
        asyncio.run(_produce(endpoints, profile, FEEDBACK_RECORDED, warmup))
        deadline = time.time() + 90
        while applied() < 1:  # the worker joined its group and applied the first event
            if time.time() > deadline:
                raise RuntimeError(f"feedback aggregation did not start: {worker.process.tail()}")
            time.sleep(0.2)
        messages = _messages(model, n + 1)[1:]
        messages = [(k, v) for k, v in messages]
        started = time.perf_counter()
        asyncio.run(_produce(endpoints, profile, FEEDBACK_RECORDED, messages))
        produced = time.perf_counter() - started
        deadline = time.time() + 600
        while applied() < n + 1:
            if time.time() > deadline:
                raise RuntimeError(f"only {applied()} of {n + 1} applied")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        worker.process.stop()
        runner.services.pop(worker.name, None)
        r.close()
    return {
        "events_per_s": round(n / elapsed, 1),
        "seconds": round(elapsed, 2),
        "produce_s": round(produced, 2),
    }


def run(events: int, workdir: Path, brokers: list[str]) -> dict[str, Any]:
    from benchmarks.dataset_writer import run as dataset_bench

    def measure(runner: StackRunner) -> dict[str, Any]:
        endpoints = runner.endpoints
        assert endpoints is not None
        profile = endpoints.kafka_profile
        ceiling = asyncio.run(_ceiling(endpoints, profile, _messages("ceiling", events)))
        flywheel = _flywheel(runner, endpoints, profile, events)
        return {
            "bare_aiokafka_produce_consume_events_per_s": round(ceiling, 1),
            "flywheel_aggregation": flywheel,
            "ratio": round(flywheel["events_per_s"] / ceiling, 3),
            "meets_target_0_5": flywheel["events_per_s"] / ceiling >= 0.5,
        }

    return {
        "events": events,
        **run_on_brokers("feedback", brokers, workdir, measure),
        "dataset_writer": dataset_bench(100_000, 3),
    }
