"""Background writers against real Redis, Kafka and MLflow: one poison record is counted and set aside,
and the good record behind it still arrives (request log, outbox relay, trace export)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from events import ALIAS_CHANGED, AliasChanged, AliasSource
from services.cli.devstack.stack import Endpoints
from services.gateway.adapters.child_loop import ChildLimits
from services.gateway.adapters.request_log import RequestLog
from services.gateway.adapters.trace_export import TraceExportProcess
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
        await state.bind("registry-of-this-test", adopt=False)  # the state's epoch marker
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
        stack.mlflow_tracking_uri, unique("tests/poison-traces"), ChildLimits(drain_s=5)
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


def test_inference_events_reach_kafka_through_the_relay_past_a_poison_event(stack: Endpoints) -> None:
    from events import INFERENCES, InferenceRecorded
    from services.gateway.adapters.event_relay import KafkaTarget
    from services.gateway.adapters.inference_events import InferenceEmitter

    model = unique("relay")
    emitter = InferenceEmitter(
        KafkaTarget(stack.kafka_bootstrap_servers, stack.kafka_profile, client_id="tests-relay"), linger_ms=5
    )
    reader = TopicReader(stack, INFERENCES)

    def event(request_id: str, inputs: Any) -> InferenceRecorded:
        return InferenceRecorded(
            producer="tests",
            model=model,
            version="1",
            request_id=request_id,
            replica="r1",
            status="ok",
            latency_ms=1.0,
            inputs=inputs,
        )

    try:
        emitter.start()
        emitter.emit(event("before", {"a": 1}))
        emitter.emit(event("poison", {"a": "\ud800"}))  # cannot be encoded as UTF-8
        emitter.emit(event("after", {"a": 2}))
        assert emitter.flush(60), "the relay did not finish what it was handed"
        got = reader.wait_for(lambda e: isinstance(e, InferenceRecorded) and e.model == model, 2)
    finally:
        emitter.stop()
        reader.close()
    assert [e.request_id for e in got if isinstance(e, InferenceRecorded)] == ["before", "after"]
    assert emitter.counts == {"sent": 2, "dropped": 0, "poison": 1}
