"""Background workers survive any single bad record: it is counted and logged, and the next good record
still goes out. (The lone-surrogate request once stopped a replica's event publisher for good.)"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from events import AliasChanged, AliasSource, InferenceRecorded, decode, encode
from services.gateway.adapters.event_relay import Relay, from_line, to_line
from services.registry_watcher.adapters.outbox import _split_poison
from services.shared.kafka.publisher import PublishError, Record


class FakePublisher:
    def __init__(self, failures: list[Exception]) -> None:
        self.records: list[Record] = []
        self.failures = failures  # raised by the next calls, in order
        self.calls = 0
        self.lock = threading.Lock()

    def publish_sync(self, records: Sequence[Record]) -> list[object]:
        with self.lock:
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
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


def test_an_event_record_travels_the_relay_line_unchanged() -> None:
    record = Record.of(inference("r-1", {"text": "tab\there, newline\nthere", "n": 1}))
    line = to_line(record)
    assert b"\n" not in line and line.count(b"\t") == 2  # compact JSON escapes control characters
    assert from_line(line + b"\n") == record


def test_the_event_relay_retries_what_kafka_refused_and_outlives_an_unexpected_error() -> None:
    publisher = FakePublisher([PublishError("broker down"), PublishError("still down")])
    relay = Relay(publisher, retry_initial_s=0.001)  # type: ignore[arg-type]
    good = [to_line(Record.of(inference(f"r-{i}", {"a": i}))) for i in range(3)]
    assert relay.handle([*good, b"not a record"]) == (3, 1)  # retried until acknowledged; the junk counted
    assert publisher.calls == 3
    assert [decode(r.value, InferenceRecorded).request_id for r in publisher.records] == ["r-0", "r-1", "r-2"]
    publisher.failures.append(RuntimeError("an unexpected failure that is not a PublishError"))
    assert relay.handle(good[:1]) == (0, 1)  # that batch is dropped and counted, the relay goes on
    assert relay.handle(good[1:2]) == (1, 0)


def test_an_event_that_cannot_be_encoded_is_poison_before_it_reaches_the_relay() -> None:
    with pytest.raises(ValueError):  # pydantic: surrogates not allowed
        to_line(Record.of(inference("poison", {"a": "\ud800"})))  # the emitter counts it as poison


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
