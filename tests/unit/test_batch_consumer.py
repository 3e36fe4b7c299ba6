"""The batch consumer's rules on fakes (no broker): one handler call per topic and chunk in partition
and offset order, the commit only after every handler call returned (a failing handler is retried and
nothing is committed meanwhile), and a commit refused after a rebalance does not stop the worker."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from events import FEEDBACK_RECORDED, INFERENCES, FeedbackRating, FeedbackRecorded, InferenceRecorded, encode
from services.shared.batch_consumer import BatchConsumer
from services.shared.consumer import ConsumerRuntime, Message, Subscription
from services.shared.settings import FlywheelSettings

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@dataclass
class Record:
    partition: int
    offset: int
    value: bytes


ABOUT: dict[str, Any] = {"producer": "tests", "model": "m", "version": "1"}


def feedback(i: int) -> bytes:
    rating = FeedbackRating.THUMBS_UP
    return encode(
        FeedbackRecorded(**ABOUT, feedback_id=f"f{i}", request_id=f"r{i}", rating=rating, served_at=T0)
    )


def inference(i: int) -> bytes:
    return encode(InferenceRecorded(**ABOUT, request_id=f"r{i}", replica="g", status="ok", latency_ms=1.0))


class FakeConsumer:
    def __init__(self, refuse: bool = False) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.refuse = refuse

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refuse:
            raise CommitFailedError("rebalanced")
        self.commits.append(dict(offsets))


def consumer_of(handler: object, batch_max: int = 3) -> tuple[BatchConsumer, list[list[Message]]]:
    calls: list[list[Message]] = []

    async def handle(messages: list[Message]) -> None:
        calls.append(messages)
        await handler(messages)  # type: ignore[operator]

    subs = [
        Subscription(FEEDBACK_RECORDED, FeedbackRecorded, handle, batch_max),
        Subscription(INFERENCES, InferenceRecorded, handle, batch_max),
    ]
    rt = ConsumerRuntime("tests", FlywheelSettings(), "g", 1, subs, retry_initial_s=0.01, batched=True)
    return BatchConsumer(rt), calls


async def ok(messages: list[Message]) -> None:
    return None


async def test_one_call_per_topic_and_chunk_in_partition_then_offset_order_then_one_commit() -> None:
    batches, calls = consumer_of(ok, batch_max=3)
    fb1, fb0, inf = (
        TopicPartition(FEEDBACK_RECORDED, 1),
        TopicPartition(FEEDBACK_RECORDED, 0),
        TopicPartition(INFERENCES, 2),
    )
    fetched = {
        fb1: [Record(1, 10, feedback(10)), Record(1, 11, feedback(11))],
        inf: [Record(2, 5, inference(5))],
        fb0: [Record(0, 7, feedback(7)), Record(0, 8, feedback(8))],
    }
    fake = FakeConsumer()
    await batches.handle(fake, fetched)  # type: ignore[arg-type]
    assert [[(m.topic, m.partition, m.offset) for m in call] for call in calls] == [
        [(FEEDBACK_RECORDED, 0, 7), (FEEDBACK_RECORDED, 0, 8), (FEEDBACK_RECORDED, 1, 10)],
        [(FEEDBACK_RECORDED, 1, 11)],
        [(INFERENCES, 2, 5)],
    ]
    assert fake.commits == [{fb1: 12, fb0: 9, inf: 6}]  # the next offset of each fetched partition


async def test_nothing_is_committed_before_a_failing_handler_succeeds() -> None:
    attempts = 0
    fake = FakeConsumer()

    async def flaky(messages: list[Message]) -> None:
        nonlocal attempts
        attempts += 1
        assert fake.commits == []  # the effect comes first
        if attempts < 3:
            raise ConnectionError("redis down")

    batches, _ = consumer_of(flaky)
    tp = TopicPartition(FEEDBACK_RECORDED, 0)
    await asyncio.wait_for(batches.handle(fake, {tp: [Record(0, 4, feedback(4))]}), 5)  # type: ignore[arg-type]
    assert attempts == 3
    assert fake.commits == [{tp: 5}]


async def test_a_commit_refused_after_a_rebalance_is_survived() -> None:
    batches, calls = consumer_of(ok)
    tp = TopicPartition(FEEDBACK_RECORDED, 0)
    await batches.handle(FakeConsumer(refuse=True), {tp: [Record(0, 1, feedback(1))]})  # type: ignore[arg-type]
    assert len(calls) == 1  # handled; the new owner will see it again and recognise it by offset


async def test_the_assignment_reported_by_the_listener_decides_ownership() -> None:
    batches, _ = consumer_of(ok)
    rt = batches.runtime
    assert not rt.ready and not rt.owns(FEEDBACK_RECORDED, "m")
    rt.started = True
    await rt.partitions_assigned(
        {TopicPartition(FEEDBACK_RECORDED, p) for p in range(6)}, {FEEDBACK_RECORDED: 6}
    )
    assert rt.ready and rt.owns(FEEDBACK_RECORDED, "m")
    rt.partitions_revoked({TopicPartition(FEEDBACK_RECORDED, p) for p in range(6)})
    assert not rt.owns(FEEDBACK_RECORDED, "m")
