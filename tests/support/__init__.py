"""Helpers shared by the integration and e2e tests: reading topics, running services, signing webhooks,
waiting for a condition, a round-robin balancer in front of several replicas."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from events import Event, EventDecodeError, decode
from services.cli.devstack.process import ManagedProcess
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import StackRunner
from services.registry_watcher.domain.signature import sign
from services.shared.kafka.profile import profile_named
from services.shared.settings import FlywheelSettings

T = TypeVar("T")
SettingsT = TypeVar("SettingsT", bound=FlywheelSettings)


def also_on_tansu(test: Callable[..., object]) -> Callable[..., object]:
    """Run `test` twice: on the default `stack` and on one whose Kafka is the Tansu broker (`embedded`
    client profile; see tests/conftest.py). The Tansu run is marked `tansu` (`-m tansu` selects it)."""
    brokers = ["default", pytest.param("tansu", marks=pytest.mark.tansu)]
    return pytest.mark.parametrize("stack", brokers, indirect=True)(test)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def settings_on(
    stack: Endpoints, settings_class: type[SettingsT], redis_prefix: str, **overrides: Any
) -> SettingsT:
    """A service's settings pointed at the test stack (MLflow, Kafka and its client profile, Redis), with
    its Redis keys under `redis_prefix`; `overrides` set the service's own fields."""
    shared = {
        "mlflow_tracking_uri": stack.mlflow_tracking_uri,
        "kafka_bootstrap_servers": stack.kafka_bootstrap_servers,
        "redis_url": stack.redis_url,
        "kafka_profile": stack.kafka_profile,
        "redis_prefix": redis_prefix,
    }
    return settings_class(**{**shared, **overrides})


def wait_until(
    condition: Callable[[], T], timeout_s: float, what: str = "condition", interval_s: float = 0.05
) -> T:
    """Poll `condition` until it returns something truthy and return that; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class TopicReader:
    """Reads a topic from the beginning (no consumer group) and keeps the events of chosen models."""

    def __init__(self, endpoints: Endpoints, topic: str) -> None:
        profile = profile_named(endpoints.kafka_profile)
        extra = {k: v for k, v in profile.kafka_python_consumer.items() if k == "fetch_max_wait_ms"}
        self.consumer = KafkaConsumer(
            bootstrap_servers=endpoints.kafka_bootstrap_servers.split(","),
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=200,
            **extra,
        )
        self.topic = topic
        partitions = self.consumer.partitions_for_topic(topic) or {0}
        self.tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        self.seen: list[tuple[bytes | None, Event, float]] = []

    def poll(self) -> None:
        for batch in self.consumer.poll(timeout_ms=100).values():
            for record in batch:
                try:
                    event = decode(record.value)
                except EventDecodeError:
                    continue  # other tests put deliberately unreadable messages on shared topics
                self.seen.append((record.key, event, time.time()))

    def events(self, where: Callable[[Event], bool]) -> list[Event]:
        return [e for _, e, _ in self.seen if where(e)]

    def wait_for(self, where: Callable[[Event], bool], count: int, timeout_s: float = 20.0) -> list[Event]:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.poll()
            found = self.events(where)
            if len(found) >= count:
                return found
        return self.events(where)

    def settle(self, seconds: float) -> None:
        """Keep reading for a while (to prove that nothing *more* arrives)."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.poll()

    def close(self) -> None:
        self.consumer.close()


def http_get_json(url: str, timeout_s: float = 2.0) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def http_ok(url: str) -> bool:
    try:
        return http_get_json(url, 1.0)[0] == 200
    except Exception:
        return False


def start_service(
    name: str,
    endpoints: Endpoints,
    workdir: Path,
    extra_env: Mapping[str, str],
    port_var: str | None = None,
    health_path: str = "/healthz",
    timeout_s: float = 60.0,
) -> tuple[ManagedProcess, int | None]:
    """Run `flywheel run <name>` pointed at `endpoints`, through the one harness every test, demo and
    benchmark uses (`StackRunner`); with `port_var`, wait until `health_path` answers 200 on that port.
    The log is `process.log_path` (one per service name and workdir, appended across restarts)."""
    runner = StackRunner.attach(workdir, endpoints)
    service = runner.start_service(
        name, port_var=port_var, extra_env=extra_env, ready_path=health_path, timeout_s=timeout_s
    )
    return service.process, service.port


class WorkerProcess:
    """A worker (`flywheel run <service>`) as a subprocess, with its own log directory and environment.
    Subclasses name the service, the variable of its web port and how long it may take to start."""

    service: ClassVar[str]
    port_var: ClassVar[str]
    start_timeout_s: ClassVar[float] = 60.0

    def __init__(self, stack: Endpoints, logdir: Path, env: dict[str, str]) -> None:
        self.stack, self.logdir, self.env = stack, logdir, env
        self.proc: ManagedProcess | None = None

    @property
    def port(self) -> int:
        return int(self.env[self.port_var])

    @property
    def log_path(self) -> Path:
        return self.logdir / "logs" / f"{self.service}.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, *, wait_assigned: bool = True, timeout_s: float | None = None) -> Self:
        """Start; with `wait_assigned`, return once its /readyz says its partitions are assigned."""
        self.proc, _ = start_service(
            self.service,
            self.stack,
            self.logdir,
            self.env,
            port_var=self.port_var,
            health_path="/readyz" if wait_assigned else "/healthz",
            timeout_s=self.start_timeout_s if timeout_s is None else timeout_s,
        )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def lag(self) -> dict[tuple[str, str], float]:
        """`flywheel_consumer_lag_messages` of this worker on its /metrics: (topic, partition) -> lag."""
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).raise_for_status().text
        return {
            (sample.labels["topic"], sample.labels["partition"]): sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "flywheel_consumer_lag_messages"
            for sample in family.samples
            if sample.labels["worker"] == self.service
        }

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def caught_up(lag: dict[tuple[str, str], float]) -> dict[tuple[str, str], float] | None:
    """`lag` (of `WorkerProcess.lag`) when every assigned partition is reported and at 0, else None."""
    return lag if lag and not any(lag.values()) else None


def signed_headers(
    secret: str, body: bytes, *, delivery_id: str | None = None, ts: int | None = None
) -> dict[str, str]:
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(ts if ts is not None else int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": sign(secret, delivery_id, timestamp, body),
    }


def alias_payload(model: str, alias: str, version: str | None, at: float | None = None) -> bytes:
    """An MLflow alias webhook body; `timestamp` is when MLflow built the delivery (default: now)."""
    action = "created" if version is not None else "deleted"
    data = {"name": model, "alias": alias}
    if version is not None:
        data["version"] = version
    built = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return json.dumps(
        {"entity": "model_version_alias", "action": action, "timestamp": built.isoformat(), "data": data}
    ).encode()


class RoundRobin:
    """One URL in front of several backends, as a load balancer puts it: each POST goes to the next backend
    (path, body and headers forwarded as they came; the backend's status and body returned)."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.forwarded: Counter[str] = Counter()
        self._next = itertools.count()
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                backend = balancer.backends[next(balancer._next) % len(balancer.backends)]
                balancer.forwarded[backend] += 1
                skip = ("host", "content-length")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                try:
                    resp = httpx.post(backend + self.path, content=body, headers=headers, timeout=30)
                    status, payload = resp.status_code, resp.content
                except httpx.HTTPError:
                    status, payload = 502, b'{"detail": "backend unreachable"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> RoundRobin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
