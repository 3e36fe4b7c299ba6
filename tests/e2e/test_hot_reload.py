"""Hot reload over the real stack: MLflow webhooks -> watcher -> Kafka -> cache invalidation (Faust) ->
Redis -> two gateway replicas, every part a subprocess as users run them.

A client hammers both replicas while `champion` moves; no request may fail, and a replica never answers
with an older version after it began serving a newer one. The cache invalidation worker is killed with
SIGKILL mid-stream and Redis is stopped for 10 s: replicas keep answering and converge afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from services.cli.devstack.demo_traffic import wait_until_serving
from services.cli.devstack.sample_models import wine_data
from services.cli.devstack.servers import start_redis
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import RunningService, StackRunner
from tests.support import unique

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::FutureWarning")]

RECORD = {k: float(v) for k, v in wine_data().test_x.iloc[0].items()}


@dataclass
class Response:
    started: float
    ended: float
    replica: str
    version: str | None
    status: int


@dataclass
class Hammer:
    """Threads posting predictions to every replica until stopped; keeps every response."""

    replicas: list[RunningService]
    model: str
    per_replica: int = 2
    responses: list[Response] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, replica: RunningService) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                started = time.time()
                try:
                    resp = client.post(
                        f"{replica.url}/v1/models/{self.model}/predict", json={"inputs": RECORD}
                    )
                    version = resp.json().get("version") if resp.status_code == 200 else None
                    status = resp.status_code
                except httpx.HTTPError:
                    version, status = None, 0
                self.responses.append(Response(started, time.time(), replica.name, version, status))
                time.sleep(0.005)

    def __enter__(self) -> Hammer:
        for replica in self.replicas:
            for _ in range(self.per_replica):
                thread = threading.Thread(target=self._run, args=(replica,), daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def failures(self) -> list[Response]:
        return [r for r in self.responses if r.status != 200]


def wait_serving(
    replicas: list[RunningService], model: str, version: str, timeout_s: float = 30
) -> dict[str, float]:
    """Replica name -> wall time it began serving `version`; fails when one does not within timeout."""
    since = wait_until_serving(replicas, model, version, timeout_s)
    assert len(since) == len(replicas), f"replicas serving {version}: {since}"
    return since


def pipeline_env(model: str) -> dict[str, str]:
    return {
        "FLYWHEEL_MODELS": model,
        "FLYWHEEL_REDIS_PREFIX": unique("hot"),
        "FLYWHEEL_INVALIDATION_GROUP_ID": unique("invalidation"),
        "FLYWHEEL_POLL_INTERVAL_S": "1",
        "FLYWHEEL_RECONCILE_INTERVAL_S": "2",
        "FLYWHEEL_TRACING_ENABLED": "false",
    }


@pytest.fixture()
def hot_reload(
    stack: Endpoints, workdir: Path, wine_model: tuple[str, dict[str, float]]
) -> Iterator[tuple[StackRunner, list[RunningService], str, MlflowClient]]:
    name, _ = wine_model
    client = MlflowClient(stack.mlflow_tracking_uri)
    client.set_registered_model_alias(name, "champion", "1")
    runner = StackRunner.attach(workdir / unique("hot"), stack, stack.env())
    try:
        replicas = runner.start_hot_reload(2, pipeline_env(name))
        wait_serving(replicas, name, "1", timeout_s=60)
        yield runner, replicas, name, client
    finally:
        runner.stop()


def test_alias_moves_under_load_zero_errors_and_consistent_versions(
    hot_reload: tuple[StackRunner, list[RunningService], str, MlflowClient],
) -> None:
    _, replicas, model, client = hot_reload
    history: list[tuple[float, str]] = []
    swaps: list[dict[str, float]] = []
    with Hammer(replicas, model) as hammer:
        time.sleep(1.0)
        for version in ("2", "1", "2"):
            history.append((time.time(), version))
            client.set_registered_model_alias(model, "champion", version)
            swaps.append(wait_serving(replicas, model, version))
            time.sleep(1.5)
    assert len(hammer.responses) > 200
    assert hammer.failures() == []
    assert {r.version for r in hammer.responses} <= {"1", "2"}
    # After a replica swapped to move i, it answers with that version until the next alias write.
    for i, (written_at, version) in enumerate(history):
        next_write = history[i + 1][0] if i + 1 < len(history) else float("inf")
        for replica, swapped_at in swaps[i].items():
            assert swapped_at >= written_at, (replica, version)
            window = [
                r
                for r in hammer.responses
                if r.replica == replica and swapped_at + 0.05 < r.started and r.ended < next_write
            ]
            assert window, f"no responses from {replica} while it served {version}"
            assert {r.version for r in window} == {version}, (replica, version)


def test_killed_invalidation_worker_restarts_and_replicas_converge(
    hot_reload: tuple[StackRunner, list[RunningService], str, MlflowClient],
) -> None:
    runner, replicas, model, client = hot_reload
    with Hammer(replicas, model) as hammer:
        client.set_registered_model_alias(model, "champion", "2")
        time.sleep(0.02)  # mid-stream: the event may or may not have been applied yet
        runner.services["cache-invalidation"].process.kill()
        client.set_registered_model_alias(model, "champion", "1")
        client.set_registered_model_alias(model, "champion", "2")
        time.sleep(1.0)
        runner.services.pop("cache-invalidation")
        runner.start_cache_invalidation(extra_env=pipeline_env_of(runner))
        wait_serving(replicas, model, "2", timeout_s=60)
    assert hammer.failures() == []


def pipeline_env_of(runner: StackRunner) -> dict[str, str]:
    """The environment the pipeline was started with (same prefix and consumer group on restart)."""
    return {
        k: v for k, v in runner.services["registry-watcher"].process.env.items() if k.startswith("FLYWHEEL_")
    }


def test_gateways_keep_answering_while_redis_is_down(
    stack: Endpoints, workdir: Path, wine_model: tuple[str, dict[str, float]]
) -> None:
    name, _ = wine_model
    client = MlflowClient(stack.mlflow_tracking_uri)
    client.set_registered_model_alias(name, "champion", "2")
    redis_dir = workdir / unique("redis")
    redis_proc, redis_url = start_redis(redis_dir)
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    endpoints = Endpoints(
        mlflow_tracking_uri=stack.mlflow_tracking_uri,
        kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
        redis_url=redis_url,
        kafka_profile=stack.kafka_profile,
    )
    runner = StackRunner.attach(workdir / unique("redis-down"), endpoints, endpoints.env())
    try:
        replicas = runner.start_hot_reload(2, pipeline_env(name))
        wait_serving(replicas, name, "2", timeout_s=60)
        with Hammer(replicas, name) as hammer:
            time.sleep(0.5)
            redis_proc.stop()
            down_at = time.time()
            time.sleep(10)
            up_at = time.time()
            redis_proc, _ = start_redis(redis_dir, port=port)
            time.sleep(1.0)
        during = [r for r in hammer.responses if down_at < r.started < up_at]
        assert len(during) > 50
        assert hammer.failures() == []
        # Redis came back empty: the pipeline rebuilds its state and follows new moves again.
        client.set_registered_model_alias(name, "champion", "1")
        wait_serving(replicas, name, "1", timeout_s=60)
    finally:
        runner.stop()
        redis_proc.stop()
