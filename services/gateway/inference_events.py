"""InferenceRecorded events leave the request path through a bounded queue and a sender thread.

A request only enqueues (microseconds); the sender batches what accumulated and hands it to the
shared idempotent producer, waiting for Kafka's acknowledgement off the request path. A slow or
absent broker therefore never slows predictions: the queue fills, and once full new events are dropped
and counted (`flywheel_gateway_inference_events_total{outcome="dropped"}`), never blocking. A batch that
Kafka refused is retried until it is acknowledged or the process stops.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from events import InferenceRecorded
from services.gateway import metrics
from services.shared.kafka.publisher import KafkaPublisher, PublishError, Record

log = logging.getLogger(__name__)


class InferenceEmitter:
    def __init__(
        self,
        publisher: KafkaPublisher | None,
        *,
        max_queue: int = 10_000,
        batch_size: int = 200,
        flush_ms: int = 50,
    ) -> None:
        self._publisher = publisher
        self._queue: queue.Queue[InferenceRecorded] = queue.Queue(maxsize=max_queue)
        self._batch_size = batch_size
        self._flush_s = flush_ms / 1000
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.dropped = 0

    def emit(self, event: InferenceRecorded) -> None:
        """Never blocks: enqueue, or drop and count when the queue is full."""
        if self._publisher is None:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            metrics.EVENTS.labels("dropped").inc()

    def start(self) -> None:
        if self._publisher is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="inference-events", daemon=True)
        self._thread.start()

    def pending(self) -> int:
        return self._queue.qsize()

    def _take_batch(self) -> list[InferenceRecorded]:
        try:
            first = self._queue.get(timeout=self._flush_s)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        assert self._publisher is not None
        delay = 0.2
        batch: list[InferenceRecorded] = []
        while not (self._stopping.is_set() and not batch and self._queue.empty()):
            if not batch:
                batch = self._take_batch()
                metrics.EVENT_QUEUE.set(self._queue.qsize())
                if not batch:
                    continue
            try:
                self._publisher.publish_sync([Record.of(e) for e in batch])
            except PublishError as exc:
                if self._stopping.is_set():
                    log.warning("dropping %d inference events at shutdown: %s", len(batch), exc)
                    metrics.EVENTS.labels("dropped").inc(len(batch))
                    return
                log.warning("inference events not acknowledged (%s); retrying in %.1fs", exc, delay)
                metrics.EVENTS.labels("retried").inc(len(batch))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.sent += len(batch)
            metrics.EVENTS.labels("sent").inc(len(batch))
            batch = []
            delay = 0.2

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (bounded by `timeout_s`), then stop."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
