"""Shared helpers of the benchmarks: percentiles, a topic follower, and runs on several brokers."""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from events import Event, EventDecodeError, decode
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import StackRunner
from services.shared.kafka.profile import profile_named

BROKER_CHOICES = ("both", "apache", "tansu")


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


def brokers_to_run(choice: str) -> list[str]:
    """`both` -> Apache Kafka and Tansu, one after the other in the same run; a configured
    KAFKA_BOOTSTRAP_SERVERS means that broker only."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return ["configured"]
    if choice not in BROKER_CHOICES:
        raise ValueError(f"broker must be one of {', '.join(BROKER_CHOICES)}")
    return ["apache", "tansu"] if choice == "both" else [choice]


def runner_on(broker: str, workdir: Path, base_env: dict[str, str]) -> StackRunner:
    """A stack runner whose embedded Kafka is `broker` (its own workdir per broker)."""
    env = dict(base_env)
    if broker != "configured":
        env["FLYWHEEL_EMBEDDED_KAFKA"] = broker
    return StackRunner(workdir / broker, env)


def describe(endpoints: Endpoints) -> dict[str, Any]:
    return {
        "broker": endpoints.kafka_broker,
        "kafka_profile": endpoints.kafka_profile,
        "why": endpoints.kafka_reason,
        "infrastructure_started": endpoints.started,
    }


def run_on_brokers(
    name: str, brokers: list[str], workdir: Path, measure: Callable[[StackRunner], dict[str, Any]]
) -> dict[str, Any]:
    """`measure` once per broker, side by side in one document (with the date and the machine)."""
    results: dict[str, Any] = {}
    # The environment as it was before any run: `mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI
    # into os.environ, which would point the next broker's stack at the previous (stopped) MLflow.
    base_env = dict(os.environ)
    for broker in brokers:
        with runner_on(broker, workdir, base_env) as runner:
            endpoints = runner.start_infrastructure()
            result = measure(runner)
            results[endpoints.kafka_broker] = {**describe(endpoints), **result}
    return {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "by_broker": results,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (its own threads; /proc/<pid>/stat; 0 when gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (from every thread's `/proc/<pid>/task/<tid>/children`)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def descendants(pid: int) -> set[int]:
    """Every living process below `pid`: its children, theirs, and so on."""
    found: set[int] = set()
    for child in children(pid):
        found |= {child} | descendants(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its living descendants (a server and the workers or helpers it started)."""
    return cpu_seconds(pid) + sum(tree_cpu_seconds(child) for child in children(pid))
