"""Shared helpers of the benchmarks: percentiles and a topic follower."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from events import Event, EventDecodeError, decode
from services.shared.embedded.stack import Endpoints
from services.shared.kafka.profile import profile_named


def summarize(samples_ms: list[float]) -> dict[str, float | int]:
    if not samples_ms:
        return {"n": 0}
    arr = np.asarray(samples_ms)
    return {
        "n": len(samples_ms),
        "mean_ms": round(float(arr.mean()), 2),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "max_ms": round(float(arr.max()), 2),
    }


class TopicFollower:
    """Follows a topic from its current end in a thread; `wait(pred)` returns the arrival time."""

    def __init__(self, endpoints: Endpoints, topic: str) -> None:
        profile = profile_named(endpoints.kafka_profile)
        self._consumer = KafkaConsumer(
            bootstrap_servers=endpoints.kafka_bootstrap_servers.split(","),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=profile.kafka_python_consumer.get("fetch_max_wait_ms", 10),
        )
        parts = self._consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in parts]
        self._consumer.assign(tps)
        self._consumer.seek_to_end(*tps)
        for tp in tps:
            self._consumer.position(tp)
        self._arrivals: list[tuple[float, Event]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for batch in self._consumer.poll(timeout_ms=50).values():
                now = time.perf_counter()
                with self._cond:
                    for record in batch:
                        try:
                            self._arrivals.append((now, decode(record.value)))
                        except EventDecodeError:
                            continue
                    self._cond.notify_all()

    def wait(self, predicate: Callable[[Event], bool], timeout_s: float = 30.0) -> tuple[float, Event] | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for i, (t, event) in enumerate(self._arrivals):
                    if predicate(event):
                        del self._arrivals[: i + 1]
                        return t, event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._consumer.close()
