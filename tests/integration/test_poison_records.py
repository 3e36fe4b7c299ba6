"""Background writers against real Redis, Kafka and MLflow: one poison record is counted and set aside,
and the good record behind it still arrives (request log, outbox relay, trace export)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from events import ALIAS_CHANGED, AliasChanged, AliasSource
from services.cli.devstack.stack import Endpoints
from services.gateway.adapters.request_log import RequestLog
from services.gateway.adapters.trace_export import TraceExportProcess
from services.gateway.adapters.trace_writer import ExportLimits
from services.gateway.domain.served import ServedRequest
from services.registry_watcher.adapters.alias_state import AliasStateStore
from services.registry_watcher.adapters.outbox import OutboxRelay
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.redis_store import RedisKeys, async_redis
from tests.support import TopicReader, unique

pytestmark = pytest.mark.integration


def served(request_id: str, inputs: Any) -> ServedRequest:
    return ServedRequest(request_id=request_id, model="wine", version="1", inputs=inputs)


async def test_request_log_writes_the_good_entries_of_a_batch_with_a_poison_one(stack: Endpoints) -> None:
    redis = async_redis(stack.redis_url)
    log = RequestLog(redis, RedisKeys(unique("poison")), ttl_s=60)
    try:
        poison, good = uuid.uuid4().hex, uuid.uuid4().hex
        log.remember(served(poison, {"text": "\ud800"}))
        log.remember(served(good, {"text": "fine"}))
        assert await log.by_request(good) == served(good, {"text": "fine"})  # flushes first; no exception
        assert await log.by_request(poison) is None
    finally:
        await redis.aclose()


async def test_outbox_relay_sets_poison_aside_and_publishes_what_follows(stack: Endpoints) -> None:
    redis = async_redis(stack.redis_url)
    keys = RedisKeys(unique("poison"))
    state = AliasStateStore(redis, keys)
    publisher = KafkaPublisher(stack.kafka_bootstrap_servers, profile_named(stack.kafka_profile), "tests")
    reader = TopicReader(stack, ALIAS_CHANGED)
    model = unique("poison")
    try:
        await redis.rpush(
            state.key("outbox", model), "not an event", '{"schema": "flywheel.alias-changed/v9"}'
        )
        await redis.sadd(state.key("outbox-pending"), model)
        good = AliasChanged(
            producer="tests",
            model=model,
            alias="champion",
            version="1",
            action="set",
            source=AliasSource.WEBHOOK,
            registry_uri="http://mlflow",
        )
        assert await state.commit(await state.snapshot(model), [good])

        assert await OutboxRelay(state, publisher).flush_all() == 1

        arrived = await asyncio.to_thread(reader.wait_for, lambda e: e.event_id == good.event_id, 1)
        assert [e.event_id for e in arrived] == [good.event_id]
        assert await redis.lrange(state.key("outbox-dead-letters", model), 0, -1) == [
            "not an event",
            '{"schema": "flywheel.alias-changed/v9"}',
        ]
        assert await redis.llen(state.key("outbox", model)) == 0
    finally:
        reader.close()
        publisher.close()
        await redis.aclose()


def test_trace_export_writer_outlives_an_unserialisable_trace(stack: Endpoints) -> None:
    channel = TraceExportProcess(
        stack.mlflow_tracking_uri, unique("tests/poison-traces"), ExportLimits(drain_s=5)
    )
    try:
        channel.start()
        poison = served("ab" * 16, {"text": "\ud800"}).model_copy(update={"trace_id": "tr-" + "cd" * 16})
        assert channel.submit(poison)  # encoding it fails: the poison
        assert channel.submit(served("ef" * 16, {"a": 1}))  # no trace id: the export process counts it
        assert channel.submit(served("01" * 16, {"a": 1}).model_copy(update={"trace_id": "tr-" + "23" * 16}))
        assert channel.flush(timeout_s=60), "the writer stopped at the poison trace"
        assert channel._writer is not None and channel._writer.is_alive()
        import mlflow

        mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
        assert mlflow.get_trace("tr-" + "23" * 16) is not None  # the good one behind them
    finally:
        channel.close()
