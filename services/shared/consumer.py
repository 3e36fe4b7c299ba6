"""The one consumer runtime every Flywheel worker runs on (cache invalidation, canary rollout, feedback
aggregation, retrainer): a table `{topic: (event type, handler)}` and everything around it, once.

What a worker gets, so that its own code is only the use case:
- **decode**: every message goes through `events.decode` with the subscription's event type; one that
  is not a readable event of that type (null, not JSON, unknown schema or major version) is skipped,
  logged ("skipping unreadable message on <topic>: ...") and counted — retrying it cannot help;
- **batches**: a handler takes a list of messages. With `batch_max=1` it sees one event at a time; with
  more, the runtime collects what is already queued (or arrives within `batch_within_s`) up to
  `batch_max`, in partition order, so a handler can make one atomic write per batch;
- **retry**: a handler that raises is retried with capped exponential back-off until it succeeds (the
  at-least-once rule: the stream never moves past an event whose effect failed); only a stopping worker
  ends the retries, and the batch is then delivered again after a restart;
- **commit after effect**: the stream is consumed without automatic acknowledgement; the runtime
  acknowledges a batch's messages only once its handler returned, so Faust commits an offset only after
  the effect is stored;
- **metrics**: `flywheel_consumer_messages_total{worker,topic,outcome}` (handled, undecodable),
  `flywheel_consumer_handler_errors_total{worker,topic}`, `flywheel_consumer_batch_seconds{worker,topic}`,
  and `flywheel_consumer_lag_messages{worker,topic,partition}`: for each partition assigned to this
  instance, the high watermark (the broker's end offset, read every `lag_interval_s`) minus the next offset
  to handle (the one after the last message a handler finished, or, before the first since the
  assignment, the consumer's fetch position). A partition that is revoked loses its series;
- **readiness over HTTP** on the worker's web port: `/healthz` (the process answers), `/readyz` (200 once
  the consumer group assigned this worker its partitions and the start-up tasks finished; 503 before),
  `/metrics` (Prometheus). Tests and orchestrators wait for `/readyz`, never for a log line.

Timers (periodic work that only time can trigger), start-up tasks (restoring state; retried until they
succeed) and tasks that run once start-up is done (an HTTP API) are declared beside the subscriptions; a
timer that fails is logged, counted and runs again at its next tick.
Faust is used through `services.shared.faust_app` (settings, topics, worker process) and only there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from aiokafka import TopicPartition
from kafka.partitioner.default import murmur2
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from events import Event, EventDecodeError, decode
from services.shared.batch_consumer import BatchConsumer
from services.shared.consumer_lag import FaustOffsets, LagGauge, OffsetReader, consumer_lag, position_of
from services.shared.faust_app import event_topic, make_faust_app
from services.shared.kafka.admin import check_topics
from services.shared.retry import retry_forever
from services.shared.settings import FlywheelSettings

log = logging.getLogger(__name__)

MESSAGES = Counter(
    "flywheel_consumer_messages_total",
    "Messages consumed, by outcome (handled, undecodable)",
    ["worker", "topic", "outcome"],
)
HANDLER_ERRORS = Counter(
    "flywheel_consumer_handler_errors_total", "Handler attempts that raised (retried)", ["worker", "topic"]
)
BATCH_SECONDS = Histogram(
    "flywheel_consumer_batch_seconds",
    "Time a handler took for one batch, retries included",
    ["worker", "topic"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)


@dataclass(frozen=True)
class Message:
    """One consumed event with where it came from (`value` is the raw bytes as on the topic)."""

    topic: str
    partition: int
    offset: int
    value: bytes
    event: Event


Handler = Callable[[list[Message]], Awaitable[object]]


@dataclass(frozen=True)
class Subscription:
    topic: str
    event_type: type[Event]
    handle: Handler
    batch_max: int = 1
    batch_within_s: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_max < 1 or self.batch_within_s < 0:
            raise ValueError("batch_max must be >= 1 and batch_within_s >= 0")


@dataclass(frozen=True)
class Timer:
    interval_s: float
    run: Callable[[], Awaitable[object]]
    name: str


@dataclass
class ConsumerRuntime:
    """A worker's consumer group, subscriptions, timers and start-up tasks on one Faust app."""

    worker: str
    settings: FlywheelSettings
    group_id: str
    web_port: int
    subscriptions: Sequence[Subscription]
    timers: Sequence[Timer] = ()
    startup: Sequence[Callable[[], Awaitable[object]]] = ()
    after_startup: Sequence[Callable[[], Awaitable[object]]] = ()
    on_stop: Sequence[Callable[[], Awaitable[object]]] = ()
    web_bind: str = "127.0.0.1"
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    faust_overrides: dict[str, Any] = field(default_factory=dict)
    on_assignment: Sequence[Callable[[], Awaitable[object]]] = ()
    # Consume every subscription in fetched batches with one aiokafka consumer instead of Faust agents
    # (`services.shared.batch_consumer`): for batch handlers on high-volume topics.
    batched: bool = False
    assigned: bool = False
    started: bool = False
    # What this instance consumes now (topic -> partitions) and how many partitions each topic has.
    partitions: dict[str, set[int]] = field(default_factory=dict)
    topic_partitions: dict[str, int] = field(default_factory=dict)
    # How often `flywheel_consumer_lag_messages` is refreshed.
    lag_interval_s: float = 5.0
    _app: faust.App | None = field(default=None, init=False, repr=False)
    _batch: BatchConsumer | None = field(default=None, init=False, repr=False)
    # Partition -> the offset after the last message handled there since it was assigned.
    _next_offsets: dict[TopicPartition, int] = field(default_factory=dict, init=False, repr=False)
    _lag: LagGauge = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lag = LagGauge(self.worker)

    def owns(self, topic: str, key: str) -> bool:
        """Whether events keyed `key` on `topic` come to this instance now (Kafka's default partitioner:
        murmur2 of the key). Nothing is owned before the first assignment; with the partition count
        unknown (the broker did not say), a single instance is assumed."""
        if not self.assigned:
            return False
        count = self.topic_partitions.get(topic)
        if not count:
            return True
        return partition_of(key, count) in self.partitions.get(topic, set())

    @property
    def ready(self) -> bool:
        return self.assigned and self.started

    def build(self) -> faust.App:
        app = self._app = make_faust_app(
            self.group_id,
            self.settings,
            web_port=self.web_port,
            web_enabled=True,
            web_bind=self.web_bind,
            **self.faust_overrides,
        )
        if self.batched:
            # The consumer group is the batch consumer's (`_start` runs it once start-up is done): Faust's
            # own consumer must not start, it would join the same group with no topics.
            app.boot_strategy = faust.app.base.BootStrategy(app, enable_kafka_consumer=False)
        else:
            for sub in self.subscriptions:
                self._agent(app, sub)
        for timer in [*self.timers, Timer(self.lag_interval_s, self.refresh_lag, "consumer-lag")]:
            app.timer(timer.interval_s, name=f"{self.worker}-{timer.name}")(self._guarded(timer))
        app.task(self._start)
        self._web(app)

        async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
            # Faust hands over the whole new assignment (what is not in it has been revoked).
            assigned = args[0] if args else kwargs.get("assigned", ())
            counts = {sub.topic: app.consumer.topic_partitions(sub.topic) or 0 for sub in self.subscriptions}
            await self.partitions_assigned(assigned, counts)

        async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
            self.partitions_revoked(args[0] if args else kwargs.get("revoked", ()))

        if not self.batched:  # batched, the batch consumer's listener reports the assignment
            # mode's handler type (a generic callable union) does not accept a plain async def under mypy.
            app.on_partitions_assigned.connect(cast(Any, on_assigned))
            app.on_partitions_revoked.connect(cast(Any, on_revoked))

        async def stop(*_: Any, **__: Any) -> None:
            for hook in self.on_stop:
                try:
                    await hook()
                except Exception:
                    log.exception("stop hook of %s failed", self.worker)

        app.on_before_shutdown.connect(cast(Any, stop))
        return app

    async def partitions_assigned(self, assigned: Iterable[Any], counts: dict[str, int]) -> None:
        """The whole new assignment (topic-partitions; what is not in it has been revoked) and the
        partition count of each subscribed topic as the broker told it (0: unknown)."""
        assigned = list(assigned)
        partitions: dict[str, set[int]] = {}
        for tp in assigned:
            partitions.setdefault(tp.topic, set()).add(tp.partition)
        self.topic_partitions.update({topic: n for topic, n in counts.items() if n})
        # What was handled of a partition counts only while it stays ours: another instance may have
        # moved on while it was not (and a batch finished after its revocation must not count).
        kept = _partitions(self.partitions) & _partitions(partitions)
        self._forget((self._next_offsets.keys() | self._lag.shown) - kept)
        self.partitions = partitions
        self.assigned = True
        log.info("partitions assigned: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
        if self.started:  # before that, start-up restores what is ours
            await self._assignment_changed()

    def partitions_revoked(self, revoked: Iterable[Any]) -> None:
        """Until the next assignment, a revoked partition is nobody's here: no decision about its keys."""
        revoked = list(revoked)
        for tp in revoked:
            self.partitions.get(tp.topic, set()).discard(tp.partition)
        self._forget({TopicPartition(tp.topic, tp.partition) for tp in revoked})

    def _forget(self, partitions: set[TopicPartition]) -> None:
        """Drop what is known of partitions that are no longer (or not yet again) ours, and their lag."""
        for tp in partitions:
            self._next_offsets.pop(tp, None)
        self._lag.forget(partitions)

    async def refresh_lag(self) -> None:
        """Set `flywheel_consumer_lag_messages` for every assigned partition (a timer every
        `lag_interval_s`): end offsets from the broker, next offsets from what was handled (or, for a
        partition with nothing handled since its assignment, the consumer's position)."""
        reader = self._offset_reader()
        assigned = sorted(_partitions(self.partitions))
        if reader is None or not assigned:
            self._lag.show({})
            return
        ends = await asyncio.wait_for(reader.end_offsets(assigned), self.lag_interval_s * 2)
        positions = {tp: self._next_offsets.get(tp) for tp in assigned}
        unknown = [tp for tp, position in positions.items() if position is None]
        asked = await asyncio.gather(*(position_of(reader, tp, self.lag_interval_s) for tp in unknown))
        positions.update(zip(unknown, asked, strict=True))
        self._lag.show(consumer_lag(ends, positions))

    def _offset_reader(self) -> OffsetReader | None:
        if self.batched:
            return self._batch.consumer if self._batch is not None else None
        return FaustOffsets(self._app.consumer) if self._app is not None and self.assigned else None

    async def _assignment_changed(self) -> None:
        for hook in self.on_assignment:
            try:
                await hook()
            except Exception:
                log.exception("%s: reacting to the new partition assignment failed", self.worker)

    async def _start(self) -> None:
        """Start-up tasks in order (each retried until it succeeds), then the long-running tasks that
        need them (e.g. an HTTP API over restored state) side by side."""
        report = await asyncio.to_thread(
            check_topics, self.settings, [s.topic for s in self.subscriptions], self.worker
        )
        for topic, shape in report.shapes.items():
            self.topic_partitions.setdefault(topic, shape.partitions)
        for task in self.startup:
            await retry_forever(task, f"{self.worker} start-up ({getattr(task, '__name__', task)})")
        self.started = True
        running = [task() for task in self.after_startup]
        if self.batched:
            self._batch = BatchConsumer(self)
            running.append(self._batch.run())
        if running:
            await asyncio.gather(*running)

    def _guarded(self, timer: Timer) -> Callable[[], Awaitable[None]]:
        async def tick() -> None:
            try:
                await timer.run()
            except Exception:
                HANDLER_ERRORS.labels(self.worker, f"timer:{timer.name}").inc()
                log.exception("%s %s failed; it runs again at the next tick", self.worker, timer.name)

        return tick

    def _agent(self, app: faust.App, sub: Subscription) -> None:
        worker, topic = self.worker, sub.topic

        async def consume(stream: Any) -> None:
            manual = stream.noack()  # acknowledged below, once the batch's effect is stored
            batch: list[Any] = []
            opened = 0.0
            async for delivered in manual.events():
                if not batch:
                    opened = time.monotonic()
                batch.append(delivered)
                if len(batch) < sub.batch_max and await _more_coming(
                    manual.channel.queue, opened + sub.batch_within_s
                ):
                    continue
                await self.handle_batch(sub, [_delivery(d) for d in batch])
                for done in batch:
                    await manual.ack(done)
                batch = []

        app.agent(event_topic(app, topic), name=f"{worker}-{topic}", concurrency=1)(consume)

    async def handle_batch(self, sub: Subscription, deliveries: list[tuple[int, int, bytes | None]]) -> None:
        """Decode, skip what is unreadable, then run the handler until it succeeds (also used by tests)."""
        messages: list[Message] = []
        for partition, offset, raw in deliveries:
            try:
                if raw is None:
                    raise EventDecodeError("empty message (null value)")
                event = decode(raw, sub.event_type)
            except EventDecodeError as exc:
                MESSAGES.labels(self.worker, sub.topic, "undecodable").inc()
                log.error("skipping unreadable message on %s: %s", sub.topic, exc)
                continue
            messages.append(Message(sub.topic, partition, offset, raw, event))
        if not messages:
            self._handled(sub.topic, deliveries)
            return
        started = time.perf_counter()

        def attempt() -> Awaitable[object]:
            return sub.handle(messages)

        await retry_forever(
            attempt,
            f"{self.worker}: {len(messages)} message(s) of {sub.topic} from offset {messages[0].offset}",
            initial_s=self.retry_initial_s,
            max_s=self.retry_max_s,
            on_error=lambda _: HANDLER_ERRORS.labels(self.worker, sub.topic).inc(),
        )
        BATCH_SECONDS.labels(self.worker, sub.topic).observe(time.perf_counter() - started)
        MESSAGES.labels(self.worker, sub.topic, "handled").inc(len(messages))
        self._handled(sub.topic, deliveries)

    def _handled(self, topic: str, deliveries: list[tuple[int, int, bytes | None]]) -> None:
        for partition, offset, _ in deliveries:  # in partition order: the last one stays
            self._next_offsets[TopicPartition(topic, partition)] = offset + 1

    def _web(self, app: faust.App) -> None:
        runtime = self

        @app.page("/healthz")
        async def healthz(view: Any, request: Any) -> Any:
            return view.json({"status": "ok"})

        @app.page("/readyz")
        async def readyz(view: Any, request: Any) -> Any:
            checks = {
                "partitions_assigned": "ok" if runtime.assigned else "waiting",
                "started": "ok" if runtime.started else "waiting",
            }
            return view.json({"ready": runtime.ready, "checks": checks}, status=200 if runtime.ready else 503)

        @app.page("/metrics")
        async def metrics(view: Any, request: Any) -> Any:
            # As a header: aiohttp refuses a `content_type` argument that carries a charset.
            return view.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's, kafka-python's, aiokafka's) gives `key`."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


def _partitions(partitions: Mapping[str, Iterable[int]]) -> set[TopicPartition]:
    return {TopicPartition(topic, p) for topic, parts in partitions.items() for p in parts}


def _delivery(delivered: Any) -> tuple[int, int, bytes | None]:
    message = delivered.message
    return message.partition, message.offset, delivered.value


async def _more_coming(queue: Any, deadline: float) -> bool:
    """Whether a batch should wait for the next message: yes when one is queued already; when none is,
    wait for one until `deadline` (the batch's linger) and say whether it came."""
    while queue.empty():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(remaining, 0.002))
    return True
