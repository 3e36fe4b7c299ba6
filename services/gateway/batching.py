"""Adaptive micro-batching: concurrent requests to one loaded version are predicted in one model call.

A model call costs nearly the same for one row as for sixteen (the demo's sklearn pipeline: 0.46 vs 0.47 ms
in-process), so requests that are waiting together should share a call. Batching must never cost a lone
request, though, so nothing waits on a clock when nothing else is coming:

- A request's rows join its version's pending batch; the batch is predicted on the next turn of the event
  loop, by which time every request that arrived together (read from the sockets in the same turn) has
  joined it. A lone request is predicted at once.
- While a batch is being predicted, new requests queue up; they form the next batch as soon as it ends
  ("batch what queues up while a predict runs").
- A batch is held open only while other requests are known to be on their way to this gateway's
  predictions (`arriving`: inside the handler, not yet submitted) and for at most `wait_s`
  (`FLYWHEEL_BATCH_WAIT_MS`, 0 = batching off: every request predicted on its own).
- A batch holds at most `max_rows` rows (`FLYWHEEL_BATCH_MAX_ROWS`); a request is never split.
- Requests with different `params` never share a call.
- Each caller gets its own rows back. **Errors stay with their request**: when a batched call raises, each
  request of it is predicted on its own, so one bad record fails only its own request (MLServer's adaptive
  batching fails the whole batch: SeldonIO/MLServer#1306, #1936). A model that does not return one output
  per row is predicted one request at a time from then on.
- Fast models are predicted on the event loop itself (no thread hop: a sub-millisecond predict costs less
  than handing it to a thread, and the GIL would serialise it anyway); a model whose batches take longer
  than `inline_max_s` runs on a worker thread instead, one batch at a time per version, so the event loop
  keeps accepting requests (which queue for the next batch).

A request holds its `LoadedModel` (and so its batcher): requests in flight during a swap finish on the
version they started with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi.concurrency import run_in_threadpool

from services.gateway import metrics
from services.gateway.adapters.model_loader import LoadedModel

log = logging.getLogger(__name__)

Predict = Callable[[list[dict[str, Any]], dict[str, Any]], list[Any]]
Outcome = list[Any] | BaseException


@dataclass
class _Job:
    records: list[dict[str, Any]]
    params: dict[str, Any]
    params_key: str
    future: asyncio.Future[list[Any]]


@dataclass
class _EWMA:
    """Exponentially weighted mean of the seconds a batch takes (starts at the load-time measurement)."""

    value: float
    weight: float = 0.2

    def add(self, sample: float) -> None:
        self.value += self.weight * (sample - self.value)


def predict_jobs(
    predict: Predict, jobs: list[tuple[list[dict[str, Any]], dict[str, Any]]]
) -> tuple[list[Outcome], bool]:
    """(one outcome per job: its outputs or the exception its own rows raised, row-wise). One call for all
    jobs; when that call raises, or does not return one output per row (`row_wise` False), one call per
    job, so each job's outcome is what its own rows give."""
    if len(jobs) == 1:
        records, params = jobs[0]
        try:
            return [predict(records, params)], True
        except Exception as exc:
            return [exc], True
    rows = [row for records, _ in jobs for row in records]
    row_wise = True
    try:
        outputs = predict(rows, jobs[0][1])
        if len(outputs) == len(rows):
            results: list[Outcome] = []
            at = 0
            for records, _ in jobs:
                results.append(list(outputs[at : at + len(records)]))
                at += len(records)
            return results, True
        row_wise = False
    except Exception as exc:  # a bad record among them: find whose
        log.debug("batched call of %d requests failed (%s); predicting each alone", len(jobs), exc)
    results = []
    for records, params in jobs:
        try:
            results.append(predict(records, params))
        except Exception as exc:
            results.append(exc)
    return results, row_wise


class Batcher:
    """The pending requests of one loaded version and the one batch of it being predicted."""

    def __init__(
        self,
        predict: Predict,
        pool: Predictions,
        *,
        expected_s: float = 0.0,
        label: str = "",
    ) -> None:
        self._predict = predict
        self._pool = pool
        self._label = label
        self._pending: list[_Job] = []
        self._scheduled = False
        self._running = False
        self._held_since: float | None = None
        self._cost = _EWMA(expected_s)
        self.row_wise = True  # one output per row (else: one request per call)
        self.batches = 0
        self.rows = 0

    @property
    def inline(self) -> bool:
        return self._cost.value <= self._pool.inline_max_s

    async def predict(self, records: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        key = json.dumps(params, sort_keys=True, default=str) if params else ""
        job = _Job(records, params, key, loop.create_future())
        self._pending.append(job)
        self._schedule(loop)
        return await job.future

    def wake(self) -> None:
        """A request stopped arriving: a batch held open for it may go now."""
        if self._held_since is not None and self._pending and not self._running:
            self._schedule(asyncio.get_running_loop(), force=True)

    def _schedule(self, loop: asyncio.AbstractEventLoop, *, force: bool = False) -> None:
        if self._running or (self._scheduled and not force):
            return
        self._scheduled = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._running:
            return
        self._pending = [job for job in self._pending if not job.future.done()]  # callers gone
        if not self._pending:
            self._held_since = None
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if self._pool.wait_s > 0 and self._pool.arriving > 0:
            held_since = self._held_since if self._held_since is not None else now
            if now - held_since < self._pool.wait_s:
                if self._held_since is None:  # hold it: a submit or `wake` ends the hold, else the clock
                    self._held_since = now
                    self._scheduled = True
                    loop.call_later(self._pool.wait_s, self._flush)
                return
        self._held_since = None
        jobs = self._take()
        if self.inline:
            self._finish(jobs, self._run(jobs))
            return
        self._running = True
        done = loop.run_in_executor(self._pool.executor, self._run, jobs)
        done.add_done_callback(lambda fut: self._after_thread(jobs, fut))

    def _take(self) -> list[_Job]:
        """The next batch: the first pending request and the ones after it with the same params, up to
        `max_rows` rows (a request is never split); without batching or row-wise outputs, one request."""
        first = self._pending[0]
        taken, rest, rows = [first], [], len(first.records)
        one_only = self._pool.wait_s <= 0 or not self.row_wise
        for job in self._pending[1:]:
            if (
                not one_only
                and job.params_key == first.params_key
                and rows + len(job.records) <= self._pool.max_rows
            ):
                taken.append(job)
                rows += len(job.records)
            else:
                rest.append(job)
        self._pending = rest
        return taken

    def _run(self, jobs: list[_Job]) -> list[Outcome]:
        started = time.perf_counter()
        results, row_wise = predict_jobs(self._predict, [(job.records, job.params) for job in jobs])
        self._cost.add(time.perf_counter() - started)
        if not row_wise and self.row_wise:
            self.row_wise = False
            log.warning("%s does not return one output per row: one request per call", self._label)
        return results

    def _after_thread(self, jobs: list[_Job], done: asyncio.Future[list[Outcome]]) -> None:
        self._running = False
        try:
            results = done.result()
        except BaseException as exc:  # the executor itself failed (shut down)
            results = [exc] * len(jobs)
        self._finish(jobs, results)

    def _finish(self, jobs: list[_Job], results: list[Outcome]) -> None:
        self.batches += 1
        self.rows += sum(len(job.records) for job in jobs)
        metrics.BATCH_REQUESTS.observe(len(jobs))
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        if self._pending:
            self._schedule(asyncio.get_running_loop())


@dataclass
class Predictions:
    """The batchers of one replica, one per loaded version (dropped when the version is unloaded)."""

    max_rows: int = 256
    wait_s: float = 0.002
    inline_max_s: float = 0.005
    executor: Executor = field(default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="predict"))
    arriving: int = 0  # requests inside the predict handler that have not reached their batcher yet
    _batchers: dict[int, Batcher] = field(default_factory=dict)

    async def call(
        self, model: LoadedModel, records: list[dict[str, Any]], params: dict[str, Any]
    ) -> list[Any]:
        """`model`'s outputs for `records` (raises what the model raised for them). Batchable models go
        through their version's batcher; others (DSPy programs: one LM conversation per record) are
        called on a thread of their own, concurrently."""
        if not model.batchable:
            return await run_in_threadpool(model.predict, records, params)
        return await self.batcher(model).predict(records, params)

    def batcher(self, model: LoadedModel) -> Batcher:
        key = id(model)
        found = self._batchers.get(key)
        if found is None:
            label = f"{model.name} version {model.version}"
            found = Batcher(model.predict, self, expected_s=model.predict_seconds, label=label)
            self._batchers[key] = found
            weakref.finalize(model, self._batchers.pop, key, None)
        return found

    def arrived(self) -> None:
        """A request that was counted in `arriving` reached its batcher, or left without predicting."""
        self.arriving -= 1
        if self.arriving == 0:
            for batcher in list(self._batchers.values()):
                batcher.wake()

    def close(self) -> None:
        if isinstance(self.executor, ThreadPoolExecutor):
            self.executor.shutdown(wait=False, cancel_futures=True)
