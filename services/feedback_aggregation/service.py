"""The feedback aggregation service: counts inference and feedback events per (model, version) with the
pure `core.aggregates.apply`, persists every effect with the offset that produced it, publishes the
per-model summary, and runs dataset publications when the retraining trigger fires.

Exactly-once effect on an at-least-once stream. For each event (per model, under a lock):
1. skip it if its offset is at or below the partition's recorded progress (already applied: a
   redelivery after a crash or rebalance) -- nothing is counted twice, not even `duplicates`/`late`;
2. apply it to the in-memory aggregates (idempotent by request id / (request, user) vote, so a
   producer-side duplicate at another offset is not counted twice either), evaluate the trigger;
3. one Lua script appends the raw event to the model's journal (and the feedback buffer), records the
   offset, bumps the model's `seq` and writes the summary -- all or nothing. It refuses if `seq` moved
   (another worker wrote the model: reload from Redis and redo) or the offset is recorded already.
   On any failure the in-memory model is dropped and rebuilt from Redis before the retry, so memory
   never holds an effect Redis does not;
4. only then does the Faust agent move on, so the Kafka offset is committed after the effect.
Kill -9 at any point: the events after the last committed Kafka offset are delivered again; those
whose effect reached Redis are skipped by (1), the others are applied. State on restart = snapshot +
journal replayed through `apply` (deterministic), so counts are exact.

Publications run as one background task per model (never blocking the streams); see
`publication.py` for why a crash during one neither loses it nor creates a second dataset version.
A lease in Redis keeps two workers from running the same publication.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events import (
    FEEDBACK_RECORDED,
    INFERENCES,
    EventDecodeError,
    FeedbackRecorded,
    InferenceRecorded,
    decode,
)
from services.feedback_aggregation import metrics
from services.feedback_aggregation.core.aggregates import (
    AggregateConfig,
    AggregateState,
    Counts,
    apply,
    new_state,
)
from services.feedback_aggregation.core.jsontext import dumps, loads, rfc3339
from services.feedback_aggregation.core.triggers import (
    FeedbackSignal,
    TriggerDecision,
    TriggerPolicy,
    TriggerState,
    after,
    decide,
    rate_window_start,
    signal_from,
)
from services.feedback_aggregation.publication import DatasetPublisher, Pending, PublicationResult
from services.feedback_aggregation.settings import FeedbackSettings
from services.feedback_aggregation.store import AppendStatus, BeginStatus, FeedbackStore, progress_field
from services.shared.retry import retry_forever

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
SUMMARY_FORMAT = 1
EVENT_TYPES: dict[str, type[InferenceRecorded] | type[FeedbackRecorded]] = {
    INFERENCES: InferenceRecorded,
    FEEDBACK_RECORDED: FeedbackRecorded,
}
MAX_CONFLICTS = 10


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

    async def _progress_of(self, topic: str, partition: int) -> int:
        key = progress_field(topic, partition)
        if key not in self._progress:
            self._progress[key] = await self.store.progress(topic, partition)
        return self._progress[key]

    # --- events -----------------------------------------------------------------------------------
    async def handle(self, topic: str, partition: int, offset: int, raw: bytes | None) -> str:
        """Apply one message; returns the outcome (for metrics and tests). Retries until it is applied."""
        kind = EVENT_TYPES[topic]
        try:
            if raw is None:
                raise EventDecodeError("empty message (null value)")
            event = decode(raw, kind)
            text = raw.decode("utf-8")
        except (EventDecodeError, UnicodeDecodeError) as exc:
            log.error("skipping unreadable message on %s at %d:%d: %s", topic, partition, offset, exc)
            metrics.EVENTS.labels(topic, "undecodable").inc()
            return "undecodable"
        if not self.settings.watches(event.model):
            metrics.EVENTS.labels(topic, "skipped").inc()
            return "skipped"

        async def attempt() -> str:
            async with self._locks[event.model]:
                return await self._apply(event, text, topic, partition, offset)

        outcome = await retry_forever(
            attempt,
            f"applying {topic} {event.event_id}",
            on_error=lambda exc: metrics.ERRORS.labels("apply").inc(),
        )
        metrics.EVENTS.labels(topic, outcome).inc()
        return outcome

    async def _apply(
        self, event: InferenceRecorded | FeedbackRecorded, raw: str, topic: str, partition: int, offset: int
    ) -> str:
        model = event.model
        started = time.perf_counter()
        for _ in range(MAX_CONFLICTS):
            try:
                view = await self.view(model)
                recorded = await self._progress_of(topic, partition)
                if offset <= recorded:
                    self._log_redelivery(topic, partition, offset, recorded)
                    return "redelivered"
                state = view.states.get(event.version)
                if state is None:
                    state = view.states[event.version] = new_state(model, event.version)
                outcome = apply(state, event, self.config)
                now = self.clock()
                self._evaluate(view, now)
                status, seq = await self.store.append_event(
                    model,
                    expected_seq=view.seq,
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    raw=raw,
                    buffer=isinstance(event, FeedbackRecorded),
                    buffer_max=self.settings.feedback_buffer_max,
                    summary=dumps(self.summary(view, now, applied=view.seq + 1)),
                )
            except BaseException:
                self.forget(model)  # memory may hold an effect Redis does not: rebuild before retrying
                raise
            if status is AppendStatus.OK:
                view.seq = seq
                self._progress[progress_field(topic, partition)] = offset
                break
            metrics.CONFLICTS.inc()
            log.info("%s changed in Redis (%s): reloading %s", model, status.value, event.event_id)
            self.forget(model)
        else:
            raise RuntimeError(f"{model}: {MAX_CONFLICTS} write conflicts in a row")
        metrics.APPLY_SECONDS.observe(time.perf_counter() - started)
        await self._after_apply(view)
        return outcome.value

    def _log_redelivery(self, topic: str, partition: int, offset: int, recorded: int) -> None:
        key = progress_field(topic, partition)
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
        since = rate_window_start(self.policy, view.trigger, now)
        return signal_from(view.states.values(), self.config, since)

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
            if not done:
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
        for model in list(self.models):
            async with self._locks[model]:
                view = self.models.get(model)
                if view is None or view.pending is not None:
                    continue
                self._evaluate(view, self.clock())
                await self._maybe_begin(view)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
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
