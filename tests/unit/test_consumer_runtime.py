"""The consumer runtime's rules on fakes (no broker): decode once, skip and count what is unreadable,
retry a failing handler until it succeeds, hand batches over in order, report consumer lag per assigned
partition — and the cache invalidation use case on a fake resolution writer (redelivery, staleness,
idempotency), cosmicpython-style."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from events import ALIAS_CHANGED, AliasAction, AliasChanged, AliasSource, encode
from services.cache_invalidation.adapters.resolution_writer import CasResult, CasStatus
from services.cache_invalidation.domain.apply import entry_of
from services.cache_invalidation.handlers import InvalidationHandler, Outcome
from services.cache_invalidation.settings import CacheInvalidationSettings
from services.shared.consumer import MESSAGES, ConsumerRuntime, Message, Subscription
from services.shared.consumer_lag import consumer_lag
from services.shared.resolution import ReloadNotice, ResolutionEntry
from services.shared.settings import FlywheelSettings

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def alias(model: str, version: str | None, at: datetime, event_id: str | None = None) -> AliasChanged:
    return AliasChanged(
        producer="tests",
        model=model,
        alias="champion",
        version=version,
        action=AliasAction.SET if version else AliasAction.DELETED,
        source=AliasSource.WEBHOOK,
        registry_uri="http://mlflow",
        occurred_at=at,
        **({"event_id": event_id} if event_id else {}),
    )


def runtime(handler: object, **sub: object) -> tuple[ConsumerRuntime, Subscription]:
    subscription = Subscription(ALIAS_CHANGED, AliasChanged, handler, **sub)  # type: ignore[arg-type]
    rt = ConsumerRuntime("tests", FlywheelSettings(), "g", 1, [subscription], retry_initial_s=0.01)
    return rt, subscription


async def test_unreadable_messages_are_skipped_counted_and_never_reach_the_handler() -> None:
    seen: list[list[Message]] = []

    async def handle(messages: list[Message]) -> None:
        seen.append(messages)

    rt, sub = runtime(handle)
    good = alias("m", "1", T0)
    before = MESSAGES.labels("tests", ALIAS_CHANGED, "undecodable")._value.get()
    await rt.handle_batch(sub, [(0, 1, None), (0, 2, b"not json"), (0, 3, encode(good)), (0, 4, b"{}")])
    assert [[(m.offset, m.event) for m in batch] for batch in seen] == [[(3, good)]]
    assert MESSAGES.labels("tests", ALIAS_CHANGED, "undecodable")._value.get() - before == 3


async def test_a_failing_handler_is_retried_until_it_succeeds_then_the_batch_counts_once() -> None:
    calls = 0

    async def flaky(messages: list[Message]) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("redis down")

    rt, sub = runtime(flaky)
    await asyncio.wait_for(rt.handle_batch(sub, [(0, 7, encode(alias("m", "1", T0)))]), 5)
    assert calls == 3


async def test_a_worker_stopping_mid_retry_leaves_the_batch_unacknowledged() -> None:
    async def down(messages: list[Message]) -> None:
        raise ConnectionError("down")

    rt, sub = runtime(down)
    task = asyncio.create_task(rt.handle_batch(sub, [(0, 1, encode(alias("m", "1", T0)))]))
    await asyncio.sleep(0.1)
    task.cancel()  # what a stopping worker does: the agent never acks, Kafka redelivers after a restart
    with pytest.raises(asyncio.CancelledError):
        await task


def test_subscriptions_refuse_nonsense_batches() -> None:
    with pytest.raises(ValueError, match="batch_max"):
        Subscription(ALIAS_CHANGED, AliasChanged, lambda m: asyncio.sleep(0), batch_max=0)  # type: ignore[arg-type,return-value]


def test_lag_is_the_end_offset_minus_the_next_offset_to_handle() -> None:
    a0, a1, a2, a3 = (TopicPartition("a", p) for p in range(4))
    ends = {a0: 10, a1: 5, a2: None, a3: 7}
    positions = {a0: 4, a1: 6, a2: 1}  # a1: end read just before the position moved; a3: no position
    assert consumer_lag(ends, positions) == {a0: 6, a1: 0}


class FakeOffsets:
    def __init__(self, ends: Mapping[TopicPartition, int], positions: Mapping[TopicPartition, int]) -> None:
        self.ends, self.positions = ends, positions

    async def end_offsets(self, partitions: list[TopicPartition]) -> Mapping[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in partitions}

    async def position(self, partition: TopicPartition) -> int | None:
        return self.positions.get(partition)


def lag_of(partition: int) -> float | None:
    labels = {"worker": "tests", "topic": ALIAS_CHANGED, "partition": str(partition)}
    return REGISTRY.get_sample_value("flywheel_consumer_lag_messages", labels)


async def test_lag_gauge_counts_from_handled_offsets_and_drops_revoked_partitions() -> None:
    async def handle(messages: list[Message]) -> None:
        pass

    rt, sub = runtime(handle)
    p0, p1, p2 = (TopicPartition(ALIAS_CHANGED, p) for p in range(3))
    rt._offset_reader = lambda: FakeOffsets({p0: 10, p1: 3, p2: 8}, {p0: 9, p1: 1})  # type: ignore[method-assign]
    await rt.partitions_assigned([p0, p1, p2], {ALIAS_CHANGED: 3})
    event = encode(alias("m", "1", T0))
    await rt.handle_batch(sub, [(0, 4, event), (0, 5, b"junk")])  # p0: handled up to 5, fetched up to 8
    await rt.refresh_lag()
    # p0 from what was handled, not from the fetch position; p1 from its position; p2 has none yet.
    assert (lag_of(0), lag_of(1), lag_of(2)) == (4, 2, None)

    rt.partitions_revoked([p1])
    assert lag_of(1) is None
    await rt.partitions_assigned([p0], {ALIAS_CHANGED: 3})  # p0 stayed ours: what was handled still counts
    await rt.refresh_lag()
    assert (lag_of(0), lag_of(1)) == (4, None)
    rt.partitions_revoked([p0])
    await rt.partitions_assigned([p0, p1], {})  # back after a revocation: another instance may have moved on
    await rt.refresh_lag()
    assert (lag_of(0), lag_of(1)) == (1, 2)
    await rt.partitions_assigned([], {})
    await rt.refresh_lag()
    assert (lag_of(0), lag_of(1)) == (None, None)


class FakeWriter:
    """The resolution writer's contract (compare-and-set per alias, cache drop, notice) in memory."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, ResolutionEntry]] = {}
        self.notices: list[ReloadNotice] = []
        self.dropped: list[str] = []
        self.fail_next = 0

    async def read(self, model: str) -> dict[str, ResolutionEntry]:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down")
        return dict(self.entries.get(model, {}))

    async def compare_and_set(self, model: str, alias: str, entry: ResolutionEntry) -> CasResult:
        stored = self.entries.setdefault(model, {}).get(alias)
        if stored is not None and stored.event_id == entry.event_id:
            return CasResult(CasStatus.ALREADY, stored)
        if stored is not None and (stored.occurred_at, stored.event_id) > (entry.occurred_at, entry.event_id):
            return CasResult(CasStatus.STALE, stored)
        self.entries[model][alias] = entry
        return CasResult(CasStatus.APPLIED, entry)

    async def drop_model_cache(self, model: str) -> int:
        self.dropped.append(model)
        return 1

    async def publish(self, notice: ReloadNotice) -> None:
        self.notices.append(notice)


def invalidation(writer: FakeWriter) -> InvalidationHandler:
    handler = InvalidationHandler(CacheInvalidationSettings(models="m"))
    handler._writer = writer  # type: ignore[assignment]
    return handler


async def test_redelivery_resends_the_notice_and_an_older_event_changes_nothing() -> None:
    writer = FakeWriter()
    handler = invalidation(writer)
    newer, older = alias("m", "2", T0 + timedelta(seconds=1)), alias("m", "1", T0)
    assert (await handler.handle_event(newer)).outcome is Outcome.APPLIED
    assert (await handler.handle_event(newer)).outcome is Outcome.REDELIVERED  # at least once: notice again
    assert (await handler.handle_event(older)).outcome is Outcome.STALE
    assert writer.entries["m"]["champion"] == entry_of(newer)
    assert [n.event_id for n in writer.notices] == [newer.event_id, newer.event_id]


async def test_unwatched_models_are_skipped_and_a_failed_effect_raises_for_the_runtime() -> None:
    writer = FakeWriter()
    handler = invalidation(writer)
    assert (await handler.handle_event(alias("other", "1", T0))).outcome is Outcome.SKIPPED
    writer.fail_next = 1
    event = alias("m", "1", T0)
    with pytest.raises(ConnectionError):
        await handler.handle_event(event)
    assert writer.notices == []
    rt, sub = runtime(handler.handle)
    writer.fail_next = 2  # the runtime retries until Redis is back, then the event is applied once
    await asyncio.wait_for(rt.handle_batch(sub, [(0, 0, encode(event))]), 5)
    assert writer.entries["m"]["champion"] == entry_of(event) and len(writer.notices) == 1


async def test_a_tombstone_wins_over_an_older_set_delivered_late() -> None:
    writer = FakeWriter()
    handler = invalidation(writer)
    deleted = alias("m", None, T0 + timedelta(seconds=5))
    late_set = alias("m", "3", T0, event_id="zzz")
    await handler.handle_event(deleted)
    assert (await handler.handle_event(late_set)).outcome is Outcome.STALE
    assert writer.entries["m"]["champion"].version is None
