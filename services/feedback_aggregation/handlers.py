"""The feedback aggregation service: counts inference and feedback events per (model, version) with the
pure `domain.aggregates.apply`, persists every effect with the offset that produced it, publishes the
per-model summary, and runs dataset publications when the retraining trigger fires.

Exactly-once effect on an at-least-once stream. The worker hands over batches of messages
(`handle_batch`); for a batch (under the locks of its models):
1. skip each event whose offset is at or below its partition's recorded progress (already applied: a
   redelivery after a crash or rebalance) -- nothing is counted twice, not even `duplicates`/`late`;
2. apply the others, in order, to the in-memory aggregates (idempotent by request id / (request, user)
   vote, so a producer-side duplicate at another offset is not counted twice either), evaluating each
   model's trigger after each of its events;
3. one Lua script appends the batch's raw events to each model's journal (and feedback buffer), records
   each partition's last offset, bumps each model's `seq` and writes the summaries that are due -- all
   or nothing. It refuses if a `seq` moved (another worker wrote the model: reload from Redis and redo)
   or an offset is recorded already. On any failure the batch's models are dropped from memory and
   rebuilt from Redis before the retry, so memory never holds an effect Redis does not. When an event
   fires a trigger, the batch is cut after it: that part is written, the publication starts (its
   dataset holds exactly the feedback up to that event), then the rest of the batch follows;
4. only then does the consumer runtime acknowledge the batch, so the Kafka offsets are committed after the
   effects.
Kill -9 at any point: the events after the last committed Kafka offset are delivered again; those
whose effect reached Redis are skipped by (1), the others are applied. State on restart = snapshot +
journal replayed through `apply` (deterministic), so counts are exact.

Summaries: `summaries.py`; dataset publications (one background task per model when a trigger fires):
`publications.py`; the in-memory model view and what is written from it: `views.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

from events import (
    FEEDBACK_RECORDED,
    INFERENCES,
    EventDecodeError,
    FeedbackRecorded,
    InferenceRecorded,
    decode,
)
from services.feedback_aggregation import metrics
from services.feedback_aggregation.adapters.dataset_publisher import DatasetPublisher
from services.feedback_aggregation.adapters.store import (
    AppendStatus,
    FeedbackStore,
    ModelAppend,
    progress_field,
)
from services.feedback_aggregation.counts_epoch import EpochKeeper
from services.feedback_aggregation.domain.aggregates import (
    AggregateConfig,
    apply,
    new_state,
)
from services.feedback_aggregation.domain.triggers import (
    FeedbackSignal,
    TriggerPolicy,
    decide,
    rate_window_start,
    signal_from,
)
from services.feedback_aggregation.publications import Publications
from services.feedback_aggregation.settings import FeedbackSettings
from services.feedback_aggregation.summaries import Summaries
from services.feedback_aggregation.views import ModelView, snapshot_json, view_from_stored
from services.shared.consumer import Message
from services.shared.jsontext import dumps
from services.shared.retry import retry_forever

log = logging.getLogger(__name__)

EVENT_TYPES: dict[str, type[InferenceRecorded] | type[FeedbackRecorded]] = {
    INFERENCES: InferenceRecorded,
    FEEDBACK_RECORDED: FeedbackRecorded,
}
MAX_CONFLICTS = 10


@dataclass(slots=True)
class _Item:
    """A decoded message of a batch, for a watched model."""

    index: int  # in the batch
    key: str  # progress field of its partition
    offset: int
    event: InferenceRecorded | FeedbackRecorded
    raw: bytes
    buffered: bool  # feedback: also kept for the next dataset


@dataclass(slots=True)
class _Write:
    """What one segment of a batch appends for one model."""

    view: ModelView
    events: list[bytes | str] = field(default_factory=list)
    buffered: list[str] = field(default_factory=list)


class FeedbackService(Summaries, Publications):
    def __init__(
        self,
        settings: FeedbackSettings,
        store: FeedbackStore,
        publisher: DatasetPublisher | None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.config: AggregateConfig = settings.aggregate_config()
        self.policy: TriggerPolicy = settings.trigger_policy()
        self.clock = clock
        self.models: dict[str, ModelView] = {}
        self._progress: dict[str, int] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._resumed: set[str] = set()  # partitions whose first redelivery was logged
        self.batch_max = settings.feedback_batch_max
        self.summary_interval_s = settings.feedback_summary_interval_ms / 1000
        self._summary_at: dict[str, float] = {}  # model -> monotonic time its summary was last written
        self._dirty: set[str] = set()  # models whose stored summary is behind their seq
        self._flushers: dict[str, asyncio.Task[None]] = {}
        self.epochs = EpochKeeper(store, settings.kafka_bootstrap_servers, settings.feedback_group_id)

    # --- state ------------------------------------------------------------------------------------
    async def view(self, model: str) -> ModelView:
        view = self.models.get(model)
        if view is None:
            view = await self._load(model)
            self.models[model] = view
        return view

    async def _load(self, model: str) -> ModelView:
        view = view_from_stored(model, await self.store.load(model), self.config)
        if view.seq:
            log.info("loaded %s: %d events applied", model, view.seq)
        return view

    def forget(self, model: str) -> None:
        """Drop the cached model and progress: the next use rebuilds them from Redis."""
        self.models.pop(model, None)
        self._progress.clear()

    async def _progress_of_field(self, key: str) -> int:
        if key not in self._progress:
            self._progress[key] = await self.store.progress_of(key)
        return self._progress[key]

    # --- events -----------------------------------------------------------------------------------
    async def handle(self, topic: str, partition: int, offset: int, raw: bytes | None) -> str:
        """Apply one raw message (decoded as the consumer runtime would); returns its outcome."""
        if raw is None:
            return "undecodable"
        try:
            event = decode(raw, EVENT_TYPES[topic])
        except EventDecodeError:
            return "undecodable"
        return (await self.handle_batch([Message(topic, partition, offset, raw, event)]))[0]

    async def handle_batch(self, messages: Sequence[Message]) -> list[str]:
        """Apply a batch of decoded messages (in delivery order) and persist it; returns each one's
        outcome. Retries until all are applied: when it returns, their effects and offsets are in Redis."""
        outcomes = [""] * len(messages)
        items: list[_Item] = []
        for index, message in enumerate(messages):
            event = cast(InferenceRecorded | FeedbackRecorded, message.event)
            shadow = isinstance(event, InferenceRecorded) and event.variant == "shadow"
            if shadow or not self.settings.watches(event.model):
                outcomes[index] = "skipped"  # a shadow answer served nobody: not an inference of the version
                continue
            buffered = message.topic == FEEDBACK_RECORDED
            key = progress_field(message.topic, message.partition)
            items.append(_Item(index, key, message.offset, event, message.value, buffered))
        if items:
            models = sorted({item.event.model for item in items})

            async def attempt() -> None:
                async with contextlib.AsyncExitStack() as locks:
                    for model in models:  # sorted: two agents never wait for each other's locks
                        await locks.enter_async_context(self._locks[model])
                    await self._apply_batch(items, outcomes, final=len(messages) < self.batch_max)

            await retry_forever(
                attempt,
                f"applying {len(items)} events from {items[0].event.event_id}",
                on_error=lambda exc: metrics.ERRORS.labels("apply").inc(),
            )
        for (topic, outcome), n in Counter(
            (m.topic, o) for m, o in zip(messages, outcomes, strict=True)
        ).items():
            metrics.EVENTS.labels(topic, outcome).inc(n)
        return outcomes

    async def _apply_batch(self, items: list[_Item], outcomes: list[str], *, final: bool) -> None:
        started = time.perf_counter()
        position = 0
        while position < len(items):
            position = await self._apply_segment(items, position, outcomes, final=final)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_EVENTS.observe(len(items))

    async def _apply_segment(
        self, items: list[_Item], start: int, outcomes: list[str], *, final: bool
    ) -> int:
        """Apply items[start:end] in memory and persist them in one write; `end` is the end of the batch
        or the event that fires a model's trigger (the publication starts right after it, so its dataset
        holds exactly the feedback up to that event, as with one write per event). Returns `end`."""
        for _ in range(MAX_CONFLICTS):
            writes: dict[str, _Write] = {}
            progress: dict[str, tuple[int, int]] = {}
            fired: ModelView | None = None
            end = start
            try:
                while end < len(items) and fired is None:
                    item = items[end]
                    end += 1
                    event = item.event
                    model = event.model
                    view = self.models.get(model) or await self.view(model)
                    recorded = self._progress.get(item.key)
                    if recorded is None:
                        recorded = await self._progress_of_field(item.key)
                    span = progress.get(item.key)
                    if item.offset <= recorded or (span is not None and item.offset <= span[1]):
                        self._log_redelivery(item.key, item.offset, recorded)
                        outcomes[item.index] = "redelivered"
                        continue
                    state = view.states.get(event.version)
                    if state is None:
                        state = view.states[event.version] = new_state(model, event.version)
                    outcomes[item.index] = apply(state, event, self.config).value
                    write = writes.get(model)
                    if write is None:
                        write = writes[model] = _Write(view)
                    write.events.append(item.raw)
                    write.buffered.append("1" if item.buffered else "0")
                    progress[item.key] = (item.offset if span is None else span[0], item.offset)
                    if view.pending is None:
                        self._evaluate(view, self.clock())
                        decision = view.decision
                        if decision is not None and decision.fire and self.publisher is not None:
                            fired = view
                if not writes:
                    return end
                status, refused = await self._persist(writes, progress, final=final and end == len(items))
            except BaseException:
                for model in {*writes, *(item.event.model for item in items[start:end])}:
                    self.forget(model)  # memory may hold effects Redis does not: rebuild before retrying
                raise
            if status is AppendStatus.OK:
                for model in writes:
                    await self._after_apply(self.models[model])
                return end
            metrics.CONFLICTS.inc()
            log.info(
                "%s changed in Redis (%s): reloading and applying the batch again", refused, status.value
            )
            for model in writes:
                self.forget(model)
        raise RuntimeError(f"{MAX_CONFLICTS} write conflicts in a row applying a batch")

    async def _persist(
        self, writes: dict[str, _Write], progress: dict[str, tuple[int, int]], *, final: bool
    ) -> tuple[AppendStatus, str]:
        """One write for the whole segment; the summaries go with it when due (or at the end of a
        burst), otherwise `_flush_later` writes them within the summary interval."""
        now, tick = self.clock(), time.monotonic()
        appends = []
        for model, write in writes.items():
            view = write.view
            due = final or tick - self._summary_at.get(model, -math.inf) >= self.summary_interval_s
            summary = dumps(self.summary(view, now, applied=view.seq + len(write.events))) if due else ""
            appends.append(ModelAppend(model, view.seq, write.events, "".join(write.buffered), summary))
        status, refused, seqs = await self.store.append_batch(
            appends, progress, buffer_max=self.settings.feedback_buffer_max
        )
        if status is not AppendStatus.OK:
            return status, refused
        for append in appends:
            self.models[append.model].seq = seqs[append.model]
            if append.summary:
                self._summary_written(append.model, tick)
            else:
                self._dirty.add(append.model)
                self._schedule_flush(append.model, tick)
        for key, (_, last) in progress.items():
            self._progress[key] = last
        return status, refused

    def _log_redelivery(self, key: str, offset: int, recorded: int) -> None:
        if key not in self._resumed:
            self._resumed.add(key)
            log.info(
                "%s: offset %d already applied (progress %d): skipping redelivered events",
                key,
                offset,
                recorded,
            )

    async def _after_apply(self, view: ModelView) -> None:
        """Snapshot when due, start a publication when the trigger fired. Neither may fail the event,
        which is applied and recorded already: errors are logged and retried by the tick."""
        if view.seq - view.snapshot_seq >= self.settings.feedback_snapshot_every:
            try:
                if await self.store.snapshot(view.model, view.seq, snapshot_json(view)):
                    view.snapshot_seq = view.seq
                    metrics.SNAPSHOTS.inc()
            except Exception as exc:
                metrics.ERRORS.labels("snapshot").inc()
                log.warning("snapshot of %s failed (journal kept): %r", view.model, exc)
        await self._maybe_begin(view)

    # --- trigger ----------------------------------------------------------------------------------
    def _signal(self, view: ModelView, now: datetime) -> FeedbackSignal:
        return signal_from(
            view.states.values(), self.config, rate_window_start(self.policy, view.trigger, now)
        )

    def _evaluate(self, view: ModelView, now: datetime) -> None:
        if view.pending is None:
            view.decision = decide(self.policy, view.trigger, self._signal(view, now), now)
            view.evaluated_at = now

    async def restore(self) -> None:
        """Load every model with a persisted state: resume pending publications, evaluate cooldowns."""
        await self._check_epoch()
        models = await self.store.models()
        pending = await self.store.pending_models()
        for model in sorted(set(models) | pending):
            if self.settings.watches(model):
                async with self._locks[model]:
                    view = await self.view(model)
                if view.pending is not None:
                    log.info("resuming publication %s of %s", view.pending.publication_id, model)
                    self._spawn(model)

    async def _check_epoch(self) -> None:
        before = self.epochs.epoch
        try:
            if await self.epochs.check() != before:  # the summaries say it at once
                self._dirty |= set(self.models)
        except Exception as exc:  # Redis or Kafka down: the next tick looks again
            log.warning("cannot check since when the counts count: %r", exc)

    async def tick(self) -> None:
        """Resume pending publications that have no task (also those of a crashed worker, once its lease
        expired); fire the triggers that only time can fire (a cooldown ending); notice counts lost
        with Redis (`counts_epoch.py`)."""
        await self._check_epoch()
        if self.publisher is not None:
            for model in sorted(await self.store.pending_models()):
                task = self._tasks.get(model)
                if self.settings.watches(model) and (task is None or task.done()):
                    self._spawn(model)
        for model in sorted(self._dirty):
            await self._flush_summary(model)
        for model in list(self.models):
            async with self._locks[model]:
                view = self.models.get(model)
                if view is None or view.pending is not None:
                    continue
                self._evaluate(view, self.clock())
                await self._maybe_begin(view)

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._flushers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
