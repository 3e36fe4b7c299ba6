"""InferenceRecorded events leave the request path through a bounded queue and a sender thread.

A request only enqueues (microseconds); the sender batches what accumulated and hands it to the
shared idempotent producer, waiting for Kafka's acknowledgement off the request path. A slow or
absent broker therefore never slows predictions: the queue fills, and once full new events are dropped
and counted (`flywheel_gateway_inference_events_total{outcome="dropped"}`), never blocking. A batch that
Kafka refused is retried until it is acknowledged or the process stops. An event that cannot be
encoded at all (a poison record) is logged and counted (`outcome="poison"`) and the sender goes on with
the next one: one bad request must never silence a replica's event stream.
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
        linger_ms: int = 20,
    ) -> None:
        self._publisher = publisher
        self._queue: queue.Queue[InferenceRecorded] = queue.Queue(maxsize=max_queue)
        self._batch_size = batch_size
        self._flush_s = flush_ms / 1000
        self._linger_s = linger_ms / 1000
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.dropped = 0
        self.poison = 0

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
        # Linger for the requests in flight: one produce request per batch, not per prediction (the
        # producer's send and ack cost showed as ~20% of the gateway's CPU at one event per request).
        batch, until = [first], time.monotonic() + self._linger_s
        while len(batch) < self._batch_size:
            remaining = until - time.monotonic()
            try:
                event = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(event)
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
            records = self._encode(batch)
            try:
                self._publisher.publish_sync(records)
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
            except Exception:  # anything else must not end the thread: count, log, go on
                log.exception("inference events batch of %d failed; dropped", len(records))
                metrics.EVENTS.labels("dropped").inc(len(records))
                batch = []
                continue
            self.sent += len(records)
            metrics.EVENTS.labels("sent").inc(len(records))
            batch = []
            delay = 0.2

    def _encode(self, batch: list[InferenceRecorded]) -> list[Record]:
        """Records of the batch; an event that cannot be encoded is counted as poison and left out."""
        records = []
        for event in batch:
            try:
                records.append(Record.of(event))
            except Exception as exc:
                self.poison += 1
                metrics.EVENTS.labels("poison").inc()
                log.error(
                    "inference event %s of %s cannot be encoded, skipped: %r",
                    event.event_id,
                    event.model,
                    exc,
                )
        return records

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (bounded by `timeout_s`), then stop."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
