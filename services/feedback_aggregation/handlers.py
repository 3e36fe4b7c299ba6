"""The feedback aggregation service: counts inference and feedback events per (model, version) with the
pure `core.aggregates.apply`, persists every effect with the offset that produced it, publishes the
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
4. only then does the Faust agent acknowledge the batch, so the Kafka offsets are committed after the
   effects.
Kill -9 at any point: the events after the last committed Kafka offset are delivered again; those
whose effect reached Redis are skipped by (1), the others are applied. State on restart = snapshot +
journal replayed through `apply` (deterministic), so counts are exact.

A model's summary is written with a batch when the previous one is at least `summary_interval` old or
the batch ends a burst (fewer events than the batch maximum: the agent has caught up); otherwise a
timer writes it within the interval. So the summary is at most `summary_interval` behind under load and
current at rest, and costs one JSON document per interval rather than per event.

Publications run as one background task per model (never blocking the streams); see
`publication.py` for why a crash during one neither loses it nor creates a second dataset version.
A lease in Redis keeps two workers from running the same publication.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from events import (
    FEEDBACK_RECORDED,
    INFERENCES,
    EventDecodeError,
    FeedbackRecorded,
    InferenceRecorded,
    decode,
)
from services.feedback_aggregation import metrics
from services.feedback_aggregation.adapters.store import (
    AppendStatus,
    BeginStatus,
    FeedbackStore,
    ModelAppend,
    progress_field,
)
from services.feedback_aggregation.domain.aggregates import (
    AggregateConfig,
    AggregateState,
    Counts,
    apply,
    new_state,
)
from services.feedback_aggregation.domain.triggers import (
    FeedbackSignal,
    TriggerDecision,
    TriggerPolicy,
    TriggerState,
    after,
    decide,
    rate_window_start,
)
from services.feedback_aggregation.publication import DatasetPublisher, Pending, PublicationResult
from services.feedback_aggregation.settings import FeedbackSettings
from services.shared.consumer import Message
from services.shared.jsontext import dumps, epoch_us, loads, rfc3339
from services.shared.retry import retry_forever

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
SUMMARY_FORMAT = 1
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


@dataclass
class ModelView:
    """One model's state in memory: a cache of what Redis holds (rebuilt from it whenever in doubt)."""

    model: str
    seq: int = 0
    snapshot_seq: int = 0
    states: dict[str, AggregateState] = field(default_factory=dict)
    trigger: TriggerState = field(default_factory=TriggerState)
    trigger_raw: str = ""
    pending: Pending | None = None
    last_publication: dict[str, Any] | None = None
    decision: TriggerDecision | None = None
    evaluated_at: datetime | None = None


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def _rates(counts: Counts) -> dict[str, Any]:
    return {
        **counts.to_json(),
        "thumbs_up_rate": counts.thumbs_up_rate,
        "thumbs_down_rate": counts.thumbs_down_rate,
    }


def snapshot_json(view: ModelView) -> str:
    return dumps({"format": SNAPSHOT_FORMAT, "versions": {v: s.to_json() for v, s in view.states.items()}})


class FeedbackService:
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

    # --- state ------------------------------------------------------------------------------------
    async def view(self, model: str) -> ModelView:
        view = self.models.get(model)
        if view is None:
            view = await self._load(model)
            self.models[model] = view
        return view

    async def _load(self, model: str) -> ModelView:
        stored = await self.store.load(model)
        if len(stored.journal) != stored.seq - stored.snapshot_seq:
            expected = stored.seq - stored.snapshot_seq
            raise RuntimeError(f"{model}: journal holds {len(stored.journal)} events, expected {expected}")
        view = ModelView(model=model, seq=stored.seq, snapshot_seq=stored.snapshot_seq)
        if stored.snapshot is not None:
            if stored.snapshot.get("format") != SNAPSHOT_FORMAT:
                raise RuntimeError(f"{model}: unsupported snapshot format {stored.snapshot.get('format')!r}")
            view.states = {v: AggregateState.from_json(s) for v, s in stored.snapshot["versions"].items()}
        for raw in stored.journal:  # replay: `apply` is deterministic, so this is the state as it was
            event = decode(raw)
            assert isinstance(event, InferenceRecorded | FeedbackRecorded)
            state = view.states.setdefault(event.version, new_state(model, event.version))
            apply(state, event, self.config)
        if stored.trigger:
            view.trigger = TriggerState.from_json(loads(stored.trigger))
        view.trigger_raw = stored.trigger
        view.pending = Pending.from_json(stored.pending) if stored.pending else None
        view.last_publication = stored.last_publication
        if stored.journal or stored.snapshot:
            log.info(
                "loaded %s: %d events applied (%d replayed from the journal)",
                model,
                stored.seq,
                len(stored.journal),
            )
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
            if not self.settings.watches(event.model):
                outcomes[index] = "skipped"
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

    # --- summary flushes --------------------------------------------------------------------------
    def _summary_written(self, model: str, tick: float | None = None) -> None:
        self._summary_at[model] = time.monotonic() if tick is None else tick
        self._dirty.discard(model)

    def _schedule_flush(self, model: str, tick: float) -> None:
        task = self._flushers.get(model)
        if task is None or task.done():
            delay = max(0.0, self._summary_at.get(model, tick) + self.summary_interval_s - tick)
            self._flushers[model] = asyncio.create_task(
                self._flush_later(model, delay), name=f"summary-{model}"
            )

    async def _flush_later(self, model: str, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._flush_summary(model)
        except Exception as exc:  # the tick tries again
            metrics.ERRORS.labels("summary").inc()
            log.warning("writing the summary of %s failed (retried by the tick): %r", model, exc)

    async def _flush_summary(self, model: str) -> None:
        async with self._locks[model]:
            view = self.models.get(model)
            if model not in self._dirty or view is None:
                return  # written with a later batch meanwhile, or dropped (its next write has one)
            tick = time.monotonic()
            summary = dumps(self.summary(view, self.clock()))
            if await self.store.write_summary_if(model, view.seq, summary):
                metrics.SUMMARIES.inc()
            self._summary_written(model, tick)  # or another worker moved it: that one writes it

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
        """`core.triggers.signal_from` of the model (the same numbers: see the tests), summed without a
        `Counts` per window, as it runs after every applied event."""
        since = rate_window_start(self.policy, view.trigger, now)
        first = self.config.window_of(since)
        if first * 1_000_000 < epoch_us(since):
            first += self.config.window_s
        corrections = down = rated = 0
        for state in view.states.values():
            corrections += state.totals.corrections
            for start, counts in state.windows.items():
                if start >= first:
                    down += counts.thumbs_down
                    rated += counts.thumbs_up + counts.thumbs_down
        return FeedbackSignal(corrections_total=corrections, thumbs_down=down, rated=rated)

    def _evaluate(self, view: ModelView, now: datetime) -> None:
        if view.pending is None:
            view.decision = decide(self.policy, view.trigger, self._signal(view, now), now)
            view.evaluated_at = now

    async def _maybe_begin(self, view: ModelView) -> None:
        decision = view.decision
        if decision is None or not decision.fire or view.pending is not None or self.publisher is None:
            return
        now = view.evaluated_at or self.clock()
        signal = self._signal(view, now)
        trigger = after(view.trigger, decision, signal, now)
        pending = Pending.new(view.model, decision, now)
        trigger_raw = dumps(trigger.to_json())
        previous = (view.trigger, view.trigger_raw, view.pending, view.decision)
        view.trigger, view.trigger_raw, view.pending, view.decision = trigger, trigger_raw, pending, None
        try:
            status = await self.store.begin_publication(
                view.model,
                expected_seq=view.seq,
                expected_trigger=previous[1],
                trigger=trigger_raw,
                pending_id=pending.publication_id,
                pending=dumps(pending.to_json()),
                summary=dumps(self.summary(view, now)),
            )
        except Exception as exc:
            self.forget(view.model)
            metrics.ERRORS.labels("trigger").inc()
            log.warning("could not start the publication of %s (re-evaluated later): %r", view.model, exc)
            return
        if status is not BeginStatus.OK:
            view.trigger, view.trigger_raw, view.pending, view.decision = previous
            self.forget(view.model)
            log.info("publication of %s not started: %s", view.model, status.value)
            return
        self._summary_written(view.model)
        metrics.TRIGGERS.labels(pending.reason).inc()
        log.info(
            "retraining trigger for %s: %s (publication %s)",
            view.model,
            decision.explanation,
            pending.publication_id,
        )
        self._spawn(view.model)

    # --- publications -----------------------------------------------------------------------------
    def _spawn(self, model: str) -> None:
        task = self._tasks.get(model)
        if task is None or task.done():
            self._tasks[model] = asyncio.create_task(self._publication(model), name=f"publication-{model}")
        metrics.PENDING.set(sum(1 for v in self.models.values() if v.pending is not None))

    async def _publication(self, model: str) -> None:
        await retry_forever(
            lambda: self._publish_once(model),
            f"dataset publication of {model}",
            initial_s=1.0,
            max_s=30.0,
            on_error=lambda exc: metrics.ERRORS.labels("publication").inc(),
        )

    async def _publish_once(self, model: str) -> None:
        assert self.publisher is not None
        token = uuid.uuid4().hex
        lease_s = self.settings.feedback_lease_s
        if not await self.store.acquire_lease(model, token, lease_s):
            log.debug("publication of %s is held by another worker (or a crashed one): retried later", model)
            return  # the tick tries again (the lease expires when its holder died)
        renewer = asyncio.create_task(self._renew(model, token, lease_s))
        try:
            async with self._locks[model]:
                self.forget(model)  # another worker may have finished it meanwhile: ask Redis
                pending = (await self.view(model)).pending
            if pending is None:
                return
            feedback = await self.store.pending_feedback(model)
            result = await asyncio.to_thread(self.publisher.run, pending, feedback)
            await self._finish(model, pending, result)
        finally:
            renewer.cancel()
            with contextlib.suppress(Exception):
                await self.store.release_lease(model, token)

    async def _renew(self, model: str, token: str, lease_s: float) -> None:
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                if not await self.store.renew_lease(model, token, lease_s):
                    log.warning("lost the publication lease of %s", model)
                    return
            except Exception as exc:
                log.warning("renewing the publication lease of %s failed: %r", model, exc)

    async def _finish(self, model: str, pending: Pending, result: PublicationResult) -> None:
        last = result.to_json()
        async with self._locks[model]:
            view = await self.view(model)
            view.pending, view.last_publication = None, last
            now = self.clock()
            self._evaluate(view, now)
            try:
                done = await self.store.finish_publication(
                    model, pending.publication_id, dumps(last), dumps(self.summary(view, now))
                )
            except BaseException:
                self.forget(model)
                raise
            if done:
                self._summary_written(model)
            else:
                self.forget(model)
                log.warning(
                    "publication %s of %s was already finished elsewhere", pending.publication_id, model
                )
                return
        kind = "no_dataset" if result.dataset is None else ("resumed" if result.resumed else "new")
        metrics.PUBLICATIONS.labels(kind).inc()
        metrics.PENDING.set(sum(1 for v in self.models.values() if v.pending is not None))

    async def restore(self) -> None:
        """Load every model with a persisted state: resume pending publications, evaluate cooldowns."""
        models = await self.store.models()
        pending = await self.store.pending_models()
        for model in sorted(set(models) | pending):
            if self.settings.watches(model):
                async with self._locks[model]:
                    view = await self.view(model)
                if view.pending is not None:
                    log.info("resuming publication %s of %s", view.pending.publication_id, model)
                    self._spawn(model)

    async def tick(self) -> None:
        """Resume pending publications that have no task (also those of a crashed worker, once its lease
        expired); fire the triggers that only time can fire (a cooldown ending)."""
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

    # --- summary ----------------------------------------------------------------------------------
    def summary(self, view: ModelView, now: datetime, applied: int | None = None) -> dict[str, Any]:
        """What `read_summary` returns: counts per version (totals and the windows of the rate window),
        the trigger's last verdict, the pending and the last publication. `applied` = events applied
        (the model's seq) once the write this summary goes with succeeds."""
        versions: dict[str, Any] = {}
        total = Counts()
        for version in sorted(view.states, key=_version_key):
            state = view.states[version]
            total.add(state.totals)
            floor = (state.watermark or 0) - self.policy.rate_window_s
            versions[version] = {
                "totals": _rates(state.totals),
                "windows": [
                    {"start": rfc3339(datetime.fromtimestamp(start, UTC)), **_rates(counts)}
                    for start, counts in sorted(state.windows.items())
                    if start > floor
                ],
                "late": state.late,
                "duplicates": state.duplicates,
                "tracked_ids": state.tracked,
            }
        decision = view.decision
        return {
            "format": SUMMARY_FORMAT,
            "model": view.model,
            "updated_at": rfc3339(now),
            "applied_events": view.seq if applied is None else applied,
            "window_s": self.config.window_s,
            "rate_window_s": self.policy.rate_window_s,
            "totals": _rates(total),
            "versions": versions,
            "trigger": {
                **view.trigger.to_json(),
                "verdict": decision.verdict if decision else ("publishing" if view.pending else None),
                "explanation": decision.explanation if decision else None,
                "metrics": decision.metrics if decision else {},
                "evaluated_at": rfc3339(view.evaluated_at) if view.evaluated_at else None,
            },
            "pending_publication": view.pending.to_json() if view.pending else None,
            "last_publication": view.last_publication,
        }
