"""Cache invalidation against the real stack: Redis, the Kafka-protocol broker, the worker as a subprocess.

Each test uses its own Redis prefix, model names and consumer group, so tests do not see each other's
state; a worker only watches the test's models (`FLYWHEEL_MODELS`), so the rest of the shared topic is
read and skipped.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from events import ALIAS_CHANGED
from services.cache_invalidation.adapters.resolution_writer import CasStatus, ResolutionWriter
from services.cache_invalidation.bootstrap import build_runtime
from services.cache_invalidation.domain.apply import entry_of, replay
from services.cache_invalidation.handlers import InvalidationHandler
from services.cache_invalidation.settings import CacheInvalidationSettings
from services.cli.devstack.process import free_port, port_open
from services.cli.devstack.servers import start_redis
from services.cli.devstack.stack import Endpoints
from services.shared.kafka.publisher import KafkaPublisher, Record
from services.shared.redis_store import RedisKeys, async_redis, sync_redis
from services.shared.resolution import ReloadNotice, ResolutionEntry, parse_entries
from tests.support import WorkerProcess, also_on_tansu, caught_up, unique, wait_until
from tests.support.events import alias_changed as alias_event

pytestmark = pytest.mark.integration

WAIT_S = 30.0  # the embedded broker's join alone takes ~3 s; a restart waits for the dead session (6 s)


class Clock:
    """Strictly increasing event times, so the order of events is the order they were made in."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def tick(self, seconds: float = 0.001) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class Notices:
    """Subscriber on the reload channel, collecting (notice, arrival time) in a thread."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self.received: list[tuple[ReloadNotice, float]] = []
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        wait_until(lambda: self._pubsub.subscribed, 5, "subscription")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.05)
            if message and message["type"] == "message":
                notice = ReloadNotice.model_validate_json(message["data"])
                with self._lock:
                    self.received.append((notice, time.monotonic()))

    def of(self, model: str) -> list[ReloadNotice]:
        with self._lock:
            return [n for n, _ in self.received if n.model == model]

    def wait_for(self, where: Callable[[ReloadNotice], bool], count: int = 1) -> list[ReloadNotice]:
        def found() -> list[ReloadNotice]:
            with self._lock:
                return [n for n, _ in self.received if where(n)]

        wait_until(lambda: len(found()) >= count, WAIT_S, f"{count} matching reload notice(s)")
        return found()

    def arrival_of(self, event_id: str) -> float:
        with self._lock:
            return next(t for n, t in self.received if n.event_id == event_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._pubsub.close()


class Worker(WorkerProcess):
    """`flywheel run cache-invalidation` as a subprocess."""

    service = "cache-invalidation"
    port_var = "FLYWHEEL_INVALIDATION_WEB_PORT"
    start_timeout_s = WAIT_S

    def __init__(
        self, stack: Endpoints, logdir: Path, prefix: str, models: Sequence[str], group_id: str
    ) -> None:
        env = {
            "FLYWHEEL_REDIS_PREFIX": prefix,
            "FLYWHEEL_MODELS": ",".join(models),
            "FLYWHEEL_INVALIDATION_GROUP_ID": group_id,
            "FLYWHEEL_INVALIDATION_WEB_PORT": str(free_port()),
            "FLYWHEEL_LOG_LEVEL": "INFO",
        }
        super().__init__(stack, logdir, env)

    def log_count(self, text: str) -> int:
        return self.log().count(text)


@pytest.fixture()
def notices(redis_client: redis.Redis, keys: RedisKeys) -> Iterator[Notices]:
    collector = Notices(redis_client, keys.reload_channel())
    yield collector
    collector.close()


@pytest.fixture()
def workers(stack: Endpoints, tmp_path: Path, keys: RedisKeys) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def make(models: Sequence[str], *, group_id: str | None = None, name: str = "w") -> Worker:
        worker = Worker(stack, tmp_path / name, keys.prefix, models, group_id or unique("ci-group"))
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


@dataclass
class Rig:
    """What the worker tests share: the publisher, Redis under the test's prefix, the reload notices
    collected from it, and the worker factory."""

    publisher: KafkaPublisher
    redis: redis.Redis
    keys: RedisKeys
    notices: Notices
    workers: Callable[..., Worker]

    def resolution(self, model: str) -> dict[str, ResolutionEntry]:
        return parse_entries(self.redis.hgetall(self.keys.resolution(model)))  # type: ignore[arg-type]

    def versions(self, model: str) -> dict[str, str | None]:
        return {alias: e.version for alias, e in self.resolution(model).items()}


@pytest.fixture()
def rig(
    publisher: KafkaPublisher,
    redis_client: redis.Redis,
    keys: RedisKeys,
    notices: Notices,
    workers: Callable[..., Worker],
) -> Rig:
    return Rig(publisher, redis_client, keys, notices, workers)


def test_changes_are_applied_notified_in_order_and_drop_model_cache(rig: Rig) -> None:
    model, other, probe = unique("ci_m"), unique("ci_o"), unique("ci_p")
    rig.redis.hset(rig.keys.model_cache(model), mapping={"champion:1": "cached", "challenger:2": "cached"})
    survivors = [rig.keys.model_cache(other), rig.keys.model_cache(f"{model}x")]
    for key in survivors:
        rig.redis.hset(key, "champion:1", "must stay")
    worker = rig.workers([model, other, probe]).start()
    clock = Clock()

    # Publish -> notice on a running worker, one change at a time (the first one right after the join).
    latencies_ms = []
    for i in range(11):
        probe_event = alias_event(probe, "champion", str(i + 1), clock.tick())
        sent = time.monotonic()
        rig.publisher.publish_sync([Record.of(probe_event)])
        rig.notices.wait_for(lambda n, e=probe_event: n.event_id == e.event_id)  # type: ignore[misc]
        latencies_ms.append((rig.notices.arrival_of(probe_event.event_id) - sent) * 1000)
    steady = sorted(latencies_ms[1:])
    print(
        f"\npublish -> reload notice: first after join {latencies_ms[0]:.0f} ms; "
        f"then p50 {steady[len(steady) // 2]:.0f} ms, max {steady[-1]:.0f} ms (n={len(steady)})"
    )
    assert rig.versions(probe) == {"champion": "11"}

    first = alias_event(model, "champion", "1", clock.tick())
    rig.publisher.publish_sync([Record.of(first)])
    rig.notices.wait_for(lambda n: n.event_id == first.event_id)
    assert not rig.redis.exists(rig.keys.model_cache(model))
    assert all(rig.redis.exists(key) for key in survivors)

    rest = [
        alias_event(model, "champion", "2", clock.tick()),
        alias_event(model, "challenger", "3", clock.tick()),
        alias_event(model, "champion", None, clock.tick()),
        alias_event(model, "challenger", "4", clock.tick()),
    ]
    # Not events, or events this consumer cannot read: logged, counted and skipped.
    junk = [
        Record(ALIAS_CHANGED, model.encode(), b"not json"),
        Record(ALIAS_CHANGED, model.encode(), json.dumps({"schema": "flywheel.alias-changed/v9"}).encode()),
        Record(ALIAS_CHANGED, model.encode(), json.dumps({"schema": "flywheel.nonsense/v1"}).encode()),
    ]
    rig.publisher.publish_sync([Record.of(rest[0]), *junk, *(Record.of(e) for e in rest[1:])])
    got = rig.notices.wait_for(lambda n: n.model == model, 5)
    assert [(n.alias, n.version, n.event_id) for n in got] == [
        (e.alias, e.version, e.event_id) for e in [first, *rest]
    ]
    assert rig.versions(model) == {"champion": None, "challenger": "4"}
    assert rig.resolution(model)["champion"] == entry_of(rest[2])
    assert model in rig.redis.smembers(rig.keys.resolution_models())  # type: ignore[operator]
    assert all(rig.redis.exists(key) for key in survivors)
    assert worker.log_count("skipping unreadable message") == len(junk)

    # Consumer lag on the worker's /metrics: one series per assigned partition, 0 once all is handled.
    lag = wait_until(lambda: caught_up(worker.lag()), WAIT_S, "flywheel_consumer_lag_messages at 0")
    assert all(topic == ALIAS_CHANGED for topic, _ in lag)


def test_set_older_than_a_tombstone_is_ignored(rig: Rig) -> None:
    model = unique("ci_t")
    clock = Clock()
    old_set = alias_event(model, "champion", "1", clock.tick())
    delete = alias_event(model, "champion", None, clock.tick())
    marker = alias_event(model, "challenger", "2", clock.tick())
    rig.workers([model]).start()
    # The delete arrives first; the older set is delivered late (e.g. the poller's catch-up).
    rig.publisher.publish_sync([Record.of(delete), Record.of(old_set), Record.of(marker)])
    rig.notices.wait_for(lambda n: n.event_id == marker.event_id)  # per-model order: old_set was handled
    assert [n.event_id for n in rig.notices.of(model)] == [delete.event_id, marker.event_id]
    assert rig.resolution(model)["champion"] == entry_of(delete)


@also_on_tansu
def test_kill_9_mid_stream_then_restart_loses_no_event(rig: Rig) -> None:
    model = unique("ci_k")
    clock = Clock()
    worker = rig.workers([model], name="crash").start()
    batch1 = [alias_event(model, "champion", str(1 + i % 2), clock.tick()) for i in range(50)]
    rig.publisher.publish_sync([Record.of(e) for e in batch1])
    rig.notices.wait_for(lambda n: n.model == model, 5)
    worker.kill()
    seen_at_kill = len(rig.notices.of(model))
    print(f"\nkilled after {seen_at_kill}/50 notices")

    restarted = time.monotonic()
    worker.start(timeout_s=60)
    print(f"restart -> partitions assigned again: {time.monotonic() - restarted:.1f} s")
    batch2 = [alias_event(model, "champion", str(3 + i % 2), clock.tick()) for i in range(10)]
    rig.publisher.publish_sync([Record.of(e) for e in batch2])
    last = batch2[-1]
    wait_until(
        lambda: rig.resolution(model).get("champion") == entry_of(last),
        WAIT_S,
        "last event applied after the restart",
    )
    rig.notices.wait_for(lambda n: n.event_id == last.event_id)

    assert rig.versions(model) == {"champion": last.version}
    got = rig.notices.of(model)
    # At least once: every event was announced; redelivery may repeat the newest applied one.
    assert {n.event_id for n in got} == {e.event_id for e in batch1 + batch2}
    # Never backwards: notices follow event order (a repeat is allowed, an older event is not).
    times = [n.occurred_at for n in got]
    assert times == sorted(times)
    redelivered = len(got) - 60
    print(f"notices: {len(got)} for 60 events ({redelivered} sent again after the crash)")


def test_replay_with_new_group_keeps_state_and_announces_no_stale_event(rig: Rig) -> None:
    model = unique("ci_r")
    clock = Clock()
    history = [
        alias_event(model, "champion", "1", clock.tick()),
        alias_event(model, "challenger", "2", clock.tick()),
        alias_event(model, "champion", "2", clock.tick()),
        alias_event(model, "challenger", None, clock.tick()),
        alias_event(model, "champion", "3", clock.tick()),
        alias_event(model, "staging", "1", clock.tick()),
    ]
    first = rig.workers([model], name="first").start()
    rig.publisher.publish_sync([Record.of(e) for e in history])
    rig.notices.wait_for(lambda n: n.event_id == history[-1].event_id)
    first.stop()
    state = rig.resolution(model)
    assert {a: e.version for a, e in state.items()} == {"champion": "3", "challenger": None, "staging": "1"}
    before = len(rig.notices.of(model))
    assert before == len(history)

    replayer = rig.workers([model], name="replay")
    replayer.start()
    marker = alias_event(model, "marker", "9", clock.tick())
    rig.publisher.publish_sync([Record.of(marker)])
    rig.notices.wait_for(lambda n: n.event_id == marker.event_id)  # the replay reached the end

    assert rig.resolution(model) == {**state, "marker": entry_of(marker)}
    during_replay = rig.notices.of(model)[before:]
    current_ids = {e.event_id for e in state.values()}
    # Only the events that *are* the current entries are announced again (at-least-once redelivery);
    # the stale ones (overtaken by newer events) are not.
    assert {n.event_id for n in during_replay} == current_ids | {marker.event_id}
    assert len(during_replay) == len(current_ids) + 1


async def test_compare_and_set_in_redis_matches_the_pure_decision(stack: Endpoints) -> None:
    """The Lua script and `core.apply` agree on every random, shuffled, duplicated history."""
    keys = RedisKeys(unique("cas"))
    client = async_redis(stack.redis_url)
    writer = ResolutionWriter(client, keys)
    rng = random.Random(20260101)
    try:
        for round_ in range(40):
            model = f"m{round_}"
            clock = Clock()
            events = []
            for _ in range(rng.randint(1, 25)):
                at = clock.now if rng.random() < 0.2 else clock.tick(rng.choice([0.000001, 0.5, 1.0]))
                version = rng.choice([None, "1", "2", "3"])
                events.append(alias_event(model, rng.choice(["champion", "challenger"]), version, at))
            delivered = events + rng.choices(events, k=len(events))
            rng.shuffle(delivered)
            for event in delivered:
                await writer.compare_and_set(model, event.alias, entry_of(event))
            assert await writer.read(model) == replay(events).get(model, {})
        # Entries written by someone else in another RFC 3339 spelling are compared by time too.
        await client.hset(
            keys.resolution("x"),
            "champion",
            json.dumps({"version": "5", "event_id": "zz", "occurred_at": "2026-01-01T00:00:05+00:00"}),
        )
        older = alias_event("x", "champion", "4", datetime(2026, 1, 1, 0, 0, 4, 500000, tzinfo=UTC))
        newer = alias_event("x", "champion", "6", datetime(2026, 1, 1, 0, 0, 5, 1, tzinfo=UTC))
        assert (await writer.compare_and_set("x", "champion", entry_of(older))).status is CasStatus.STALE
        assert (await writer.compare_and_set("x", "champion", entry_of(newer))).status is CasStatus.APPLIED
        again = await writer.compare_and_set("x", "champion", entry_of(newer))
        assert again.status is CasStatus.ALREADY and again.stored == entry_of(newer)
    finally:
        await client.aclose()


async def test_handler_waits_for_redis_instead_of_skipping_the_event(tmp_path: Path) -> None:
    """Redis down: the handler retries with back-off and applies the event once Redis is back."""
    port = free_port()
    settings = CacheInvalidationSettings(
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_prefix=unique("down"),
        invalidation_retry_initial_s=0.05,
        invalidation_retry_max_s=0.2,
    )
    handler = InvalidationHandler(
        settings, redis_factory=lambda: async_redis(settings.redis_url, timeout_s=0.5)
    )
    event = alias_event(unique("ci_d"), "champion", "1", datetime.now(UTC))
    runtime = build_runtime(settings, handler)
    subscription = runtime.subscriptions[0]
    task = asyncio.create_task(runtime.handle_batch(subscription, [(0, 0, Record.of(event).value)]))
    await asyncio.sleep(1.0)
    assert not task.done()  # still retrying: the event is neither applied nor dropped
    assert not port_open("127.0.0.1", port)
    server, url = await asyncio.to_thread(start_redis, tmp_path / "redis", port)
    try:
        await asyncio.wait_for(task, WAIT_S)
        client = sync_redis(url)
        stored = parse_entries(client.hgetall(RedisKeys(settings.redis_prefix).resolution(event.model)))  # type: ignore[arg-type]
        client.close()
        assert stored == {"champion": entry_of(event)}
    finally:
        await handler.close()
        server.stop()
