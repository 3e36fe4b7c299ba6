"""The event relay child process: InferenceRecorded records (one per line) from the gateway to Kafka.

kafka-python costs 100-140 µs of CPU per record on these machines (the record batch is built in Python);
in the gateway that time was taken from the event loop's GIL — a third of a replica's throughput at one
connection. Here it runs in a process of its own, on the other core. Started by
`inference_events.InferenceEmitter`; the line protocol is `child_pipe`'s, each line `topic TAB key TAB
value` (topics and model names hold no control characters, and the value is compact JSON, which escapes
them).

A batch is sent in order and acknowledged by Kafka (the shared idempotent producer, `bulk` profile)
before the child acknowledges it to the gateway; a batch Kafka refused (`PublishError`) is retried with
back-off until it is acknowledged or the drain deadline ends the process. Anything else (an unexpected
error) costs that batch, which is counted and logged: the relay goes on with the next one. A line that is
not a record is counted as failed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.gateway.adapters.child_loop import BatchHandler, ChildLimits, serve
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher, PublishError, Record

log = logging.getLogger(__name__)


def to_line(record: Record) -> bytes:
    return b"%s\t%s\t%s" % (record.topic.encode(), record.key, record.value)


def from_line(line: bytes) -> Record:
    topic, key, value = line.rstrip(b"\n").split(b"\t", 2)
    return Record(topic=topic.decode(), key=key, value=value)


@dataclass(frozen=True)
class KafkaTarget:
    """Where the relay produces (passed to the child as one JSON argument)."""

    bootstrap_servers: str
    profile: str
    client_id: str

    def to_arg(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_arg(cls, arg: str) -> KafkaTarget:
        return cls(**json.loads(arg))


class Relay:
    """Publishes batches of lines; `publisher` is anything with KafkaPublisher's `publish_sync`."""

    def __init__(self, publisher: KafkaPublisher, *, retry_initial_s: float = 0.2, retry_max_s: float = 5.0):
        self.publisher = publisher
        self.retry_initial_s, self.retry_max_s = retry_initial_s, retry_max_s

    def handle(self, lines: list[bytes]) -> tuple[int, int]:
        records, unreadable = [], 0
        for line in lines:
            try:
                records.append(from_line(line))
            except ValueError:
                unreadable += 1
                log.error("not an event record, skipped: %r", line[:200])
        if not records:
            return 0, unreadable
        delay = self.retry_initial_s
        while True:
            try:
                self.publisher.publish_sync(records)
                return len(records), unreadable
            except PublishError as exc:
                log.warning("%d events not acknowledged (%s); retrying in %.1fs", len(records), exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
            except Exception:  # anything else must not end the relay: count, log, go on
                log.exception("batch of %d events failed; dropped", len(records))
                return 0, len(records) + unreadable


def relay_handler(target: KafkaTarget) -> Callable[[ChildLimits], BatchHandler]:
    def make(limits: ChildLimits) -> BatchHandler:
        publisher = KafkaPublisher(
            target.bootstrap_servers, profile_named(target.profile), client_id=target.client_id, bulk=True
        )
        return Relay(publisher).handle

    return make


if __name__ == "__main__":
    serve("event-relay", ChildLimits.from_arg(sys.argv[2]), relay_handler(KafkaTarget.from_arg(sys.argv[1])))
