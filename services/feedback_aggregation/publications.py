"""Dataset publications of the feedback aggregation worker: one background task per model whose trigger
fired, never blocking the streams. A lease in Redis keeps two workers from running the same publication;
`adapters.dataset_publisher.DatasetPublisher` does the work (why a crash during one neither loses it
nor creates a second dataset version is explained there). Part of `handlers.FeedbackService` (a mixin:
a publication shares the service's per-model locks and in-memory views).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from services.feedback_aggregation import metrics
from services.feedback_aggregation.adapters.dataset_publisher import (
    DatasetPublisher,
    Pending,
    PublicationResult,
)
from services.feedback_aggregation.adapters.store import BeginStatus, FeedbackStore
from services.feedback_aggregation.domain.triggers import FeedbackSignal, after
from services.feedback_aggregation.settings import FeedbackSettings
from services.feedback_aggregation.views import ModelView
from services.shared.jsontext import dumps
from services.shared.retry import retry_forever

log = logging.getLogger(__name__)


class Publications:
    settings: FeedbackSettings
    store: FeedbackStore
    publisher: DatasetPublisher | None
    models: dict[str, ModelView]
    clock: Callable[[], datetime]
    _tasks: dict[str, asyncio.Task[None]]
    _locks: defaultdict[str, asyncio.Lock]

    if TYPE_CHECKING:  # provided by FeedbackService / Summaries

        async def view(self, model: str) -> ModelView: ...
        def forget(self, model: str) -> None: ...
        def _evaluate(self, view: ModelView, now: datetime) -> None: ...
        def _signal(self, view: ModelView, now: datetime) -> FeedbackSignal: ...
        def _summary_written(self, model: str, tick: float | None = None) -> None: ...
        def summary(self, view: ModelView, now: datetime, applied: int | None = None) -> dict[str, Any]: ...

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
