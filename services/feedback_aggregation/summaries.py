"""The per-model summary of the feedback aggregation worker (what `read_summary` returns), written with a
batch when the previous one is at least `summary_interval` old or the batch ends a burst, otherwise by a
timer within the interval: at most `summary_interval` behind under load, current at rest, one JSON
document per interval rather than per event. Part of `handlers.FeedbackService` (a mixin: the writes
share the service's per-model locks)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from services.feedback_aggregation import metrics
from services.feedback_aggregation.adapters.store import FeedbackStore
from services.feedback_aggregation.counts_epoch import EpochKeeper
from services.feedback_aggregation.domain.aggregates import AggregateConfig
from services.feedback_aggregation.domain.triggers import TriggerPolicy
from services.feedback_aggregation.views import ModelView, build_summary
from services.shared.jsontext import dumps

log = logging.getLogger(__name__)


class Summaries:
    store: FeedbackStore
    config: AggregateConfig
    policy: TriggerPolicy
    models: dict[str, ModelView]
    clock: Callable[[], datetime]
    summary_interval_s: float
    epochs: EpochKeeper
    _summary_at: dict[str, float]
    _dirty: set[str]
    _flushers: dict[str, asyncio.Task[None]]
    _locks: defaultdict[str, asyncio.Lock]

    def summary(self, view: ModelView, now: datetime, applied: int | None = None) -> dict[str, Any]:
        """See `views.build_summary`; `applied` = events applied once the write it goes with succeeds."""
        return build_summary(view, now, self.config, self.policy, applied, self.epochs.epoch)

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
