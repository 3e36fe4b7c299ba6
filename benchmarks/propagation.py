"""`flywheel bench propagation`: alias write in MLflow -> every gateway replica serving the new version.

The whole path runs as users run it: MLflow webhook -> registry watcher -> Kafka -> cache invalidation
(Faust) -> Redis resolution cache + reload notice -> each replica preloads and swaps. The clock starts
right before `set_registered_model_alias` and stops, per replica, at the first status read
(`GET /v1/models/{name}`, which reports what predictions are served by) showing the new version; the
sample of a move is the slowest replica. Moves alternate between two preloaded-once versions, so after
the first two moves the ModelManager holds both and a move measures the control path, not disk I/O.
The poller-only path repeats this with the webhook disabled (the poll interval dominates it).

Beside each webhook-path sample, the part after MLflow: from the AliasChanged event's `occurred_at` (the
registry watcher makes it when the delivery arrives, after the signature check) to the last replica serving,
and the MLflow alias write itself (the `set_registered_model_alias` call), so a slow tracking store does
not hide what Flywheel's own path costs.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient
from mlflow.entities.webhook import WebhookStatus

from benchmarks.common import TopicFollower, run_on_brokers, summarize
from events import ALIAS_CHANGED, AliasChanged, Event
from services.cli.devstack.sample_models import register_wine_version
from services.cli.stack_runner import RunningService, StackRunner
from services.registry_watcher.adapters.webhook_registration import register_webhook

TARGET_P99_MS = 50.0  # webhook delivery -> last replica serving


def _serving(client: httpx.Client, url: str, model: str) -> tuple[str | None, float]:
    """(version the replica serves for champion, wall time it started serving it)."""
    try:
        resp = client.get(f"{url}/v1/models/{model}", timeout=1.0)
    except httpx.HTTPError:
        return None, 0.0
    if resp.status_code != 200:
        return None, 0.0
    status = resp.json()
    version = status["aliases"].get("champion")
    return (str(version) if version is not None else None), float(status["swapped_at"].get("champion", 0.0))


def _wait_all(
    replicas: list[RunningService], model: str, version: str, started: float, timeout_s: float
) -> list[float]:
    """Per replica: ms from `started` (wall clock) until it began serving `version`.

    The replica reports the instant of its swap, so the polling interval does not add to the sample.
    """
    result: list[float | None] = [None] * len(replicas)

    def watch(i: int, url: str) -> None:
        deadline = time.perf_counter() + timeout_s
        with httpx.Client() as client:
            while time.perf_counter() < deadline:
                served, swapped_at = _serving(client, url, model)
                if served == version:
                    result[i] = (swapped_at - started) * 1000
                    return
                time.sleep(0.005)

    threads = [threading.Thread(target=watch, args=(i, r.url)) for i, r in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None for r in result):
        raise RuntimeError(f"not every replica served {model} v{version} within {timeout_s}s: {result}")
    return [float(r) for r in result if r is not None]


def _is_move(model: str, version: str, event: Event) -> bool:
    return isinstance(event, AliasChanged) and event.model == model and event.version == version


@dataclass
class Moves:
    slowest: list[float] = field(default_factory=list)  # alias write -> last replica serving, ms
    per_replica: list[list[float]] = field(default_factory=list)
    after_delivery: list[float] = field(default_factory=list)  # watcher's event -> last replica, ms
    write_ms: list[float] = field(default_factory=list)  # the MLflow alias write itself


def _moves(
    client: MlflowClient,
    replicas: list[RunningService],
    model: str,
    n: int,
    timeout_s: float,
    jitter_s: float = 0.0,
    first: int = 0,
    events: TopicFollower | None = None,
) -> Moves:
    moves = Moves(per_replica=[[] for _ in replicas])
    for i in range(first, first + n):
        if jitter_s:
            time.sleep(random.uniform(0, jitter_s))  # decorrelate from the poll clock
        version = str(1 + (i % 2))
        started = time.time()
        client.set_registered_model_alias(model, "champion", version)
        moves.write_ms.append((time.time() - started) * 1000)
        times = _wait_all(replicas, model, version, started, timeout_s)
        moves.slowest.append(max(times))
        for r, t in zip(moves.per_replica, times, strict=True):
            r.append(t)
        if events is not None:
            arrived = events.wait(partial(_is_move, model, version), 5.0)
            if arrived is not None:
                made_at = arrived[1].occurred_at.timestamp()
                moves.after_delivery.append(max(times) - (made_at - started) * 1000)
        time.sleep(0.05)
    return moves


def run(
    moves: int, poller_moves: int, poll_interval_s: float, replicas: int, workdir: Path, brokers: list[str]
) -> dict[str, Any]:
    def measure(runner: StackRunner) -> dict[str, Any]:
        return _measure(runner, moves, poller_moves, poll_interval_s, replicas)

    return {
        "what": "alias write in MLflow -> every gateway replica serves the new version (slowest replica)",
        "replicas": replicas,
        **run_on_brokers("propagation", brokers, workdir, measure),
    }


def _measure(
    runner: StackRunner, moves: int, poller_moves: int, poll_interval_s: float, replicas: int
) -> dict[str, Any]:
    env = {"FLYWHEEL_POLL_INTERVAL_S": "10", "FLYWHEEL_TRACING_ENABLED": "false"}
    endpoints = runner.endpoints
    assert endpoints is not None
    model = f"bench_propagation_{int(time.time())}"
    for kind in ("weak", "strong"):
        register_wine_version(endpoints.mlflow_tracking_uri, model, kind, experiment="bench")
    env["FLYWHEEL_MODELS"] = model
    gateways = runner.start_hot_reload(replicas, env)
    client = MlflowClient(tracking_uri=endpoints.mlflow_tracking_uri)
    _moves(client, gateways, model, 4, 60)  # warm-up: both versions loaded, consumer group joined
    follower = TopicFollower(endpoints, ALIAS_CHANGED)
    try:
        webhook = _moves(client, gateways, model, moves, 30, events=follower)
    finally:
        follower.close()

    # Poller-only: disable the webhook and restart the watcher with a short poll interval.
    watcher = runner.services.pop("registry-watcher")
    reg = register_webhook(client, f"{watcher.url}/webhooks/mlflow", runner.webhook_secret)
    client.update_webhook(reg.webhook_id, status=WebhookStatus.DISABLED)
    watcher.process.stop()
    runner.start_watcher({**env, "FLYWHEEL_POLL_INTERVAL_S": str(poll_interval_s)}, register=False)
    time.sleep(1.5)
    poller = _moves(
        client,
        gateways,
        model,
        poller_moves,
        poll_interval_s * 5 + 15,
        jitter_s=poll_interval_s,
        first=moves,
    )
    after_delivery = summarize(webhook.after_delivery)
    return {
        "webhook_path": summarize(webhook.slowest),
        "webhook_path_after_delivery": after_delivery,
        "mlflow_alias_write": summarize(webhook.write_ms),
        "webhook_path_per_replica": [summarize(r) for r in webhook.per_replica],
        "poller_path": {**summarize(poller.slowest), "poll_interval_s": poll_interval_s},
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": after_delivery.get("p99_ms", 1e9) <= TARGET_P99_MS,
    }
