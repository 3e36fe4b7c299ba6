"""The whole Flywheel stack as processes: infrastructure (embedded where not configured) + services.

Used by `flywheel up`, `flywheel demo` and the benchmarks, so that all of them run exactly what a user
runs. Each service is `python -m services.cli.main run <name>` with the stack's endpoints in its
environment; the webhook is registered against the watcher once it is up.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient

from services.cli.devstack.ports import Ports, service_default_port
from services.cli.devstack.process import ManagedProcess, stop_all
from services.cli.devstack.stack import Endpoints, Stack
from services.registry_watcher.adapters.webhook_registration import (
    DeliveryCheck,
    check_delivery,
    register_webhook,
)
from services.shared.kafka.admin import ensure_topics, topic_shape

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
# Workers without an HTTP API of their own: the variable of their web port (/healthz, /readyz, /metrics).
WORKER_PORT_VARS = {
    "feedback-aggregation": "FLYWHEEL_FEEDBACK_WEB_PORT",
    "retrainer": "FLYWHEEL_RETRAINER_WEB_PORT",
}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - localhost service
            return bool(resp.status == 200)
    except Exception:
        return False


@dataclass
class RunningService:
    name: str
    process: ManagedProcess
    port: int | None = None
    service: str = ""  # what it runs (`name` is the instance: gateway-1, …)

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.port else None


@dataclass
class StackRunner:
    workdir: Path
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    services: dict[str, RunningService] = field(default_factory=dict)
    endpoints: Endpoints | None = None
    webhook_secret: str = ""
    feedback_secret: str = ""
    webhook_check: DeliveryCheck | None = None
    # Ephemeral ports unless asked otherwise: `flywheel up` passes Ports(stable=True).
    ports: Ports = field(default_factory=Ports)
    _stack: Stack | None = None

    @classmethod
    def attach(cls, workdir: Path, endpoints: Endpoints, env: Mapping[str, str] | None = None) -> StackRunner:
        """A runner for services only, on infrastructure that is already running (tests)."""
        merged = {**os.environ, **(env or {})}
        runner = cls(workdir=workdir, env=merged, endpoints=endpoints)
        runner.webhook_secret = merged.get("FLYWHEEL_WEBHOOK_SECRET") or secrets.token_urlsafe(32)
        runner.feedback_secret = merged.get("FLYWHEEL_FEEDBACK_SECRET") or secrets.token_urlsafe(32)
        return runner

    def start_infrastructure(self) -> Endpoints:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stack = Stack(self.workdir, self.env, ports=self.ports)
        self.endpoints = self._stack.start()
        ensure_topics(self.endpoints.kafka_bootstrap_servers, shape=topic_shape(self.env))
        self.webhook_secret = self.env.get("FLYWHEEL_WEBHOOK_SECRET") or secrets.token_urlsafe(32)
        self.feedback_secret = self.env.get("FLYWHEEL_FEEDBACK_SECRET") or secrets.token_urlsafe(32)
        return self.endpoints

    def service_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        assert self.endpoints is not None, "start_infrastructure first"
        env = {
            **self.env,
            **self.endpoints.env(),
            "FLYWHEEL_WEBHOOK_SECRET": self.webhook_secret,
            "FLYWHEEL_FEEDBACK_SECRET": self.feedback_secret,
        }
        env.update(extra or {})
        return env

    def start_service(
        self,
        name: str,
        *,
        instance: str | None = None,
        port_var: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        wait: bool = True,
        ready_path: str = "/healthz",
        timeout_s: float = 120.0,
        port_offset: int = 0,
    ) -> RunningService:
        """`name` as `instance`; with `port_var`, on the port that variable sets, else on a port of
        `self.ports` (with stable ports: the service's default plus `port_offset`)."""
        key = instance or name
        env = self.service_env(extra_env)
        port = None
        if port_var:
            port = int(env.get(port_var) or self.pick_port(key, name, port_var, port_offset))
            env[port_var] = str(port)
        argv = [sys.executable, "-m", "services.cli.main", "run", name]
        proc = ManagedProcess(key, argv, log_path=self.workdir / "logs" / f"{key}.log", env=env, cwd=ROOT)
        proc.start()
        if port is not None and wait:
            proc.wait_ready(lambda: _healthy(f"http://127.0.0.1:{port}{ready_path}"), timeout_s)
        service = RunningService(key, proc, port, name)
        self.services[key] = service
        return service

    def pick_port(self, part: str, service: str, port_var: str, offset: int = 0) -> int:
        return self.ports.pick(part, service_default_port(service, port_var) + offset)

    def start_watcher(
        self, extra_env: Mapping[str, str] | None = None, register: bool = True
    ) -> RunningService:
        watcher = self.start_service(  # ready: Redis, Kafka and the registry identity checked
            "registry-watcher", port_var="FLYWHEEL_WATCHER_PORT", extra_env=extra_env, ready_path="/readyz"
        )
        if register:
            self.register_webhook(f"{watcher.url}/webhooks/mlflow")
        return watcher

    def start_gateway(self, replica: str, extra_env: Mapping[str, str] | None = None) -> RunningService:
        """One gateway replica on its own port; returns once it preloaded its models (/readyz)."""
        env = {"FLYWHEEL_REPLICA_ID": replica, **(extra_env or {})}
        others = [s for key, s in self.services.items() if s.service == "gateway" and key != replica]
        return self.start_service(
            "gateway",
            instance=replica,
            port_var="FLYWHEEL_GATEWAY_PORT",
            extra_env=env,
            ready_path="/readyz",
            port_offset=len(others),  # stable ports: 8080, 8081, …
        )

    def start_cache_invalidation(
        self, instance: str = "cache-invalidation", extra_env: Mapping[str, str] | None = None
    ) -> RunningService:
        """The worker; returns once its /readyz says it was assigned its partitions."""
        return self.start_service(
            "cache-invalidation",
            instance=instance,
            port_var="FLYWHEEL_INVALIDATION_WEB_PORT",
            extra_env=extra_env,
            ready_path="/readyz",
        )

    def start_hot_reload(
        self, replicas: int = 2, extra_env: Mapping[str, str] | None = None, register: bool = True
    ) -> list[RunningService]:
        """Watcher + cache invalidation + `replicas` gateways: the path from an alias write to a reload."""
        self.start_watcher(extra_env, register=register)
        self.start_cache_invalidation(extra_env=extra_env)
        return [self.start_gateway(f"gateway-{i + 1}", extra_env) for i in range(replicas)]

    def start_canary(self, extra_env: Mapping[str, str] | None = None) -> RunningService:
        """The canary rollout worker with its control API (FLYWHEEL_CANARY_PORT) and dashboard."""
        worker_port = self.pick_port("canary-rollout worker", "canary-rollout", "FLYWHEEL_CANARY_WEB_PORT")
        env = {"FLYWHEEL_CANARY_WEB_PORT": str(worker_port), **(extra_env or {})}
        return self.start_service(
            "canary-rollout",
            instance="canary-rollout",
            port_var="FLYWHEEL_CANARY_PORT",
            extra_env=env,
            ready_path="/readyz",
        )

    def start_worker(self, name: str, extra_env: Mapping[str, str] | None = None) -> RunningService:
        """A worker without an HTTP API of its own; returns once its web port's /readyz answers 200."""
        return self.start_service(
            name, port_var=WORKER_PORT_VARS[name], extra_env=extra_env, ready_path="/readyz"
        )

    def start_all(self, replicas: int = 2, extra_env: Mapping[str, str] | None = None) -> None:
        """Every Flywheel service: the hot-reload path, the canary worker, and the feedback loop workers."""
        from services.cli.runners import SERVICES

        self.start_hot_reload(replicas, extra_env)
        self.start_canary(extra_env)
        for name in WORKER_PORT_VARS:
            if name in SERVICES:
                self.start_worker(name, extra_env)

    def register_webhook(self, url: str) -> DeliveryCheck:
        """Register, then have MLflow send a test delivery: a webhook nobody can reach is reported."""
        assert self.endpoints is not None
        client = MlflowClient(tracking_uri=self.endpoints.mlflow_tracking_uri)
        reg = register_webhook(client, url, self.webhook_secret)
        time.sleep(1.2)  # MLflow caches its webhook list (MLFLOW_WEBHOOK_CACHE_TTL=1 s when embedded)
        self.webhook_check = check_delivery(client, reg.webhook_id)
        if not self.webhook_check.ok:
            log.warning("webhook %s: %s", url, self.webhook_check.detail)
        return self.webhook_check

    def managed(self) -> dict[str, ManagedProcess]:
        """Every process this runner started (infrastructure and services), by name."""
        infrastructure = self._stack.managed() if self._stack is not None else {}
        return {**infrastructure, **{name: s.process for name, s in self.services.items()}}

    def stop_service(self, name: str) -> None:
        """Stop one service instance (`name` as given when it was started)."""
        service = self.services.pop(name, None)
        if service is not None:
            service.process.stop()

    def infrastructure_pid(self, part: str) -> int | None:
        """The pid of an embedded part this runner started (`mlflow`, `redis`, `kafka`), else None."""
        process = self._stack.processes.get(part) if self._stack is not None else None
        return process.proc.pid if process is not None and process.proc is not None else None

    def stop(self) -> None:
        """Every service at once (each flushes what it holds), then the infrastructure they flushed to."""
        stop_all([service.process for service in self.services.values()], timeout_s=15.0)
        self.services.clear()
        if self._stack is not None:
            self._stack.stop()

    def __enter__(self) -> StackRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
