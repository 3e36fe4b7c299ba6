"""InferenceRecorded events leave the request path, and the gateway process, through the event relay.

A request only enqueues (`emit`, microseconds); a writer thread encodes the events and hands them to the
event relay child (`event_relay`: kafka-python, in a process of its own, so its CPU is not taken from the
event loop), which waits for Kafka's acknowledgement. A slow or absent broker therefore never slows
predictions: the relay retries a refused batch until it is acknowledged, its queue fills, then the pipe,
then the gateway's hand-off queue, and once that is full new events are dropped and counted
(`flywheel_gateway_inference_events_total{outcome="dropped"}`), never blocking. An event that cannot be
encoded at all (a poison record) is counted (`outcome="poison"`) and the next one goes on: one bad
request must never silence a replica's event stream. `sent` counts what Kafka acknowledged.
"""

from __future__ import annotations

import logging

from events import InferenceRecorded
from services.gateway import metrics
from services.gateway.adapters.child_loop import ChildLimits
from services.gateway.adapters.child_pipe import ChildPipe
from services.gateway.adapters.event_relay import KafkaTarget, to_line
from services.shared.kafka.publisher import Record

log = logging.getLogger(__name__)

_OUTCOME = {"ok": "sent", "failed": "dropped", "dropped": "dropped", "poison": "poison"}


class InferenceEmitter:
    def __init__(
        self,
        target: KafkaTarget | None,
        *,
        max_queue: int = 10_000,
        batch_size: int = 200,
        linger_ms: int = 20,
    ) -> None:
        self.counts = dict.fromkeys(("sent", "dropped", "poison"), 0)
        self._pipe: ChildPipe[InferenceRecorded] | None = (
            ChildPipe(
                "event-relay",
                "services.gateway.adapters.event_relay",
                [target.to_arg(), ChildLimits(max_queue, batch_size, nice=0).to_arg()],
                lambda event: to_line(Record.of(event)),
                self._count,
                metrics.EVENT_QUEUE,
                max_queue=max_queue,
                linger_s=linger_ms / 1000,  # one hand-off (and one produce request) per linger
            )
            if target is not None
            else None
        )

    def _count(self, kind: str, n: int) -> None:
        outcome = _OUTCOME[kind]
        self.counts[outcome] += n
        metrics.EVENTS.labels(outcome).inc(n)

    def emit(self, event: InferenceRecorded) -> None:
        """Never blocks: enqueue, or drop and count when the queue is full."""
        if self._pipe is not None:
            self._pipe.submit(event)

    def start(self) -> None:
        if self._pipe is not None:
            self._pipe.start()

    def pending(self) -> int:
        """Events handed over and not yet acknowledged by Kafka."""
        return self._pipe.pending() if self._pipe is not None else 0

    def flush(self, timeout_s: float = 30.0) -> bool:
        return self._pipe.flush(timeout_s) if self._pipe is not None else True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (bounded by `timeout_s`), then stop the relay."""
        if self._pipe is not None:
            self._pipe.close(timeout_s)
