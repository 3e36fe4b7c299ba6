"""Client settings per broker profile: Apache Kafka ("standard") or the embedded Tansu broker.

All workarounds for the measured quirks of the embedded broker (DESIGN.md, "Broker quirks") live here
and only here; service code asks its profile for client settings and never special-cases a broker.

- Quirk 1 (high watermark = last batch base offset + 1): producers write one record per batch.
- Quirk 2/4 (JoinGroup held for half the session timeout; no LeaveGroup at generation 0): short
  session timeout and heartbeat.
- Quirk 3 (Fetch with max wait 0 returns nothing; aiokafka waits 500 ms by default): small max wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BrokerProfile:
    name: str
    kafka_python_producer: dict[str, Any] = field(default_factory=dict)
    kafka_python_consumer: dict[str, Any] = field(default_factory=dict)
    aiokafka_producer: dict[str, Any] = field(default_factory=dict)
    aiokafka_consumer: dict[str, Any] = field(default_factory=dict)
    faust: dict[str, Any] = field(default_factory=dict)
    # Producers of high-volume topics that are only ever consumed from committed offsets (never by end
    # offset), e.g. inferences: batching is safe there even on the embedded broker (quirk 1).
    kafka_python_bulk_producer: dict[str, Any] = field(default_factory=lambda: {"linger_ms": 5})
    # Faust hard-codes aiokafka's fetch_max_wait_ms=1500 (no setting); None keeps it.
    faust_fetch_max_wait_ms: int | None = None


STANDARD = BrokerProfile(
    name="standard",
    kafka_python_producer={"linger_ms": 5},
    kafka_python_consumer={"fetch_max_wait_ms": 100},
    aiokafka_producer={"linger_ms": 5},
    aiokafka_consumer={"fetch_max_wait_ms": 100},
    faust={
        "broker_session_timeout": 30.0,
        "broker_heartbeat_interval": 3.0,
        "consumer_max_fetch_size": 1024**2,
    },
)

EMBEDDED = BrokerProfile(
    name="embedded",
    kafka_python_producer={"batch_size": 1, "linger_ms": 0},
    kafka_python_consumer={
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "fetch_max_wait_ms": 10,
    },
    aiokafka_producer={"max_batch_size": 1, "linger_ms": 0},
    aiokafka_consumer={
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "fetch_max_wait_ms": 10,
    },
    faust={
        "producer_max_batch_size": 1,
        "producer_linger_ms": 0,
        "broker_session_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "consumer_max_fetch_size": 1024**2,
    },
    # Quirk 3: the embedded broker answers a Fetch only when its max wait expires, so a worker's
    # events would wait up to Faust's fixed 1.5 s; a short wait keeps alias propagation in milliseconds.
    faust_fetch_max_wait_ms=10,
)

_PROFILES = {p.name: p for p in (STANDARD, EMBEDDED)}


def profile_named(name: str) -> BrokerProfile:
    try:
        return _PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown kafka profile {name!r}; expected one of {sorted(_PROFILES)}") from None
