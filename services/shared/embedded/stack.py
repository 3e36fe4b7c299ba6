"""Resolve MLflow, Kafka and Redis for a run: configured ones are used, missing ones are started.

Order of preference per part: the environment variable (`MLFLOW_TRACKING_URI`,
`KAFKA_BOOTSTRAP_SERVERS`, `REDIS_URL`), then (when asked, e.g. by the test suite) a testcontainers
container if a Docker engine answers, then the embedded server. The result says which Kafka profile the
services must use: `embedded` only for the Tansu broker started here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.shared.embedded.process import ManagedProcess
from services.shared.embedded.servers import start_mlflow, start_redis, start_tansu

log = logging.getLogger(__name__)


@dataclass
class Endpoints:
    mlflow_tracking_uri: str
    kafka_bootstrap_servers: str
    redis_url: str
    kafka_profile: str
    started: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment variables that point a Flywheel service at these endpoints."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "REDIS_URL": self.redis_url,
            "FLYWHEEL_KAFKA_PROFILE": self.kafka_profile,
        }


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
    ) -> None:
        self.workdir = workdir
        self.env = dict(os.environ if env is None else env)
        self.use_containers = use_containers and docker_available()
        self.processes: dict[str, ManagedProcess] = {}
        self._containers: list[Any] = []

    def start(self, *, need_mlflow: bool = True) -> Endpoints:
        started: list[str] = []
        mlflow_uri = self.env.get("MLFLOW_TRACKING_URI", "")
        if not mlflow_uri and need_mlflow:
            proc, mlflow_uri = start_mlflow(self.workdir / "mlflow")
            self.processes["mlflow"] = proc
            started.append("mlflow")

        redis_url = self.env.get("REDIS_URL", "")
        if not redis_url and self.use_containers:
            redis_url = self._redis_container()
            started.append("redis (container)")
        if not redis_url:
            proc, redis_url = start_redis(self.workdir / "redis")
            self.processes["redis"] = proc
            started.append("redis")

        bootstrap = self.env.get("KAFKA_BOOTSTRAP_SERVERS", "")
        profile = self.env.get("FLYWHEEL_KAFKA_PROFILE", "standard")
        if not bootstrap and self.use_containers:
            bootstrap = self._kafka_container()
            profile = "standard"
            started.append("kafka (container)")
        if not bootstrap:
            proc, bootstrap = start_tansu(self.workdir / "kafka")
            self.processes["kafka"] = proc
            profile = "embedded"
            started.append("kafka (tansu)")
        return Endpoints(mlflow_uri, bootstrap, redis_url, profile, started)

    def _redis_container(self) -> str:
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7-alpine").start()
        self._containers.append(container)
        return f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"

    def _kafka_container(self) -> str:
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft().start()
        self._containers.append(container)
        return str(container.get_bootstrap_server())

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()
        for container in self._containers:
            with contextlib.suppress(Exception):
                container.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
