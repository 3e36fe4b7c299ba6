"""Reads a model's history from the topics themselves: alias changes, canary decisions, retraining outcomes.

No consumer group and no state: every call assigns all partitions of `HISTORY_TOPICS`, seeks each to the
first offset at or after `since` (Kafka's time index), reads to the end offset it found when it started,
and keeps the model's events. Nothing to rebuild after a loss of Redis, nothing that can drift from the
record. Alias changes and decisions are few, so a full read is cheap; `since` keeps it short anyway.
Synchronous (kafka-python): the CLI calls it directly, the HTTP API in a thread.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timedelta

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from events import HISTORY_TOPICS, EventDecodeError, decode
from events.envelope import Event
from services.shared.alias_history import ATTRIBUTION_WINDOW_S, History, build_history
from services.shared.kafka.profile import profile_named


class HistoryUnavailable(RuntimeError):
    """Kafka could not be read in time (HTTP 503: the history exists, it cannot be read now)."""


def read_events(
    bootstrap_servers: str,
    model: str | None,
    since: datetime | None = None,
    *,
    profile: str = "standard",
    timeout_s: float = 10.0,
    topics: tuple[str, ...] = HISTORY_TOPICS,
) -> list[Event]:
    """The model's events (every model's with None) on `topics` (the history topics by default) from
    `since` on (all of them without `since`), in topic and partition order."""
    tuning = profile_named(profile).kafka_python_consumer
    extra = {k: v for k, v in tuning.items() if k == "fetch_max_wait_ms"}
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers.split(","),
            group_id=None,
            enable_auto_commit=False,
            client_id="flywheel-history",
            request_timeout_ms=int(timeout_s * 1000) + 1000,
            **extra,
        )
    except Exception as exc:
        raise HistoryUnavailable(f"Kafka unreachable: {exc!r}") from exc
    try:
        return _read(consumer, topics, model, since, timeout_s)
    except KafkaError as exc:  # a broker lost mid-read: the history exists, it cannot be read now
        raise HistoryUnavailable(f"Kafka read failed: {exc!r}") from exc
    finally:
        consumer.close()


def _read(
    consumer: KafkaConsumer,
    topics: tuple[str, ...],
    model: str | None,
    since: datetime | None,
    timeout_s: float,
) -> list[Event]:
    partitions = []
    for topic in topics:
        for p in sorted(consumer.partitions_for_topic(topic) or ()):
            partitions.append(TopicPartition(topic, p))
    if not partitions:
        return []
    consumer.assign(partitions)
    end = consumer.end_offsets(partitions)
    # Kafka's time index starts at the epoch: anything before it is "from the beginning".
    if since is None or since.timestamp() <= 0:
        consumer.seek_to_beginning(*partitions)
    else:
        starts = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
        for tp in partitions:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found is not None else end[tp])
    remaining = {tp for tp in partitions if consumer.position(tp) < end[tp]}
    key = model.encode("utf-8") if model is not None else None
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    while remaining:
        if time.monotonic() > deadline:
            raise HistoryUnavailable(f"history not read within {timeout_s:.0f} s")
        for tp, records in consumer.poll(timeout_ms=200).items():
            for record in records:
                if record.offset >= end[tp]:
                    continue
                # Unreadable messages are counted by the topics' consumers; the history skips them.
                if key is None or record.key == key:
                    with contextlib.suppress(EventDecodeError):
                        events.append(decode(record.value))
        remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
    return events


def read_history(
    bootstrap_servers: str,
    model: str,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    profile: str = "standard",
    holds: bool = True,
    limit: int = 1000,
) -> History:
    """The history of `model` between `since` and `until`. Alias changes up to `ATTRIBUTION_WINDOW_S`
    before `since` are read too, so the decision that caused the first change in range is known."""
    read_from = None
    if since is not None and since > datetime.min.replace(tzinfo=since.tzinfo) + timedelta(days=1):
        read_from = since - timedelta(seconds=ATTRIBUTION_WINDOW_S)
    events = read_events(bootstrap_servers, model, read_from, profile=profile)
    return build_history(model, events, since, until, holds=holds, limit=limit)
