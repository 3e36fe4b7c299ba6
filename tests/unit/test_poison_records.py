"""Background workers survive any single bad record: it is counted and logged, and the next good record
still goes out. (The lone-surrogate request once stopped a replica's event publisher for good.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from events import AliasChanged, AliasSource, InferenceRecorded, decode, encode
from services.gateway.adapters.inference_events import InferenceEmitter
from services.registry_watcher.adapters.outbox import _split_poison
from services.shared.kafka.publisher import Record


class FakePublisher:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.calls = 0
        self.lock = threading.Lock()

    def publish_sync(self, records: Sequence[Record]) -> list[object]:
        with self.lock:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("an unexpected failure that is not a PublishError")
            self.records.extend(records)
        return []


def inference(request_id: str, inputs: object) -> InferenceRecorded:
    return InferenceRecorded(
        producer="tests",
        model="wine",
        version="1",
        request_id=request_id,
        replica="r1",
        status="ok",
        latency_ms=1.0,
        inputs=inputs,  # type: ignore[arg-type]
    )


def test_the_inference_publisher_outlives_a_poison_event_and_an_unexpected_error() -> None:
    publisher = FakePublisher()
    emitter = InferenceEmitter(publisher, flush_ms=5)  # type: ignore[arg-type]
    emitter.start()
    try:
        emitter.emit(inference("first", {"a": 1}))  # its batch meets the unexpected error: dropped, counted
        time.sleep(0.2)
        emitter.emit(inference("poison", {"a": "\ud800"}))  # cannot be encoded as UTF-8
        emitter.emit(inference("good", {"a": 2}))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not publisher.records:
            time.sleep(0.02)
    finally:
        emitter.stop()
    assert [decode(r.value, InferenceRecorded).request_id for r in publisher.records] == ["good"]
    assert emitter.poison == 1 and emitter.sent == 1 and emitter._thread is None  # stopped cleanly


def alias(version: str) -> AliasChanged:
    return AliasChanged(
        producer="tests",
        model="m",
        alias="champion",
        version=version,
        action="set",
        source=AliasSource.WEBHOOK,
        registry_uri="http://mlflow",
    )


def test_the_outbox_sets_aside_unreadable_entries_in_order() -> None:
    good = [encode(alias(v)).decode() for v in ("1", "2")]
    readable, poison = _split_poison(["not json", "{}", *good])
    assert readable == [] and poison == ["not json", "{}"]  # the head is poison: set it aside first
    readable, poison = _split_poison([*good, "not json", encode(alias("3")).decode()])
    assert [e.version for _, e in readable] == ["1", "2"] and poison == []  # stops before the bad one
    assert _split_poison(["x\ud800"]) == ([], ["x\ud800"])
