"""`flywheel bench webhook`: alias write in MLflow -> AliasChanged on Kafka, webhook path and poller path.

Each sample: the clock starts right before `set_registered_model_alias` is called and stops when a
follower consuming the topic receives the matching event. Changes are sequential (the next one starts
after the previous event arrived) so samples do not queue behind each other.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.webhook import WebhookStatus

from benchmarks.common import TopicFollower, run_on_brokers, summarize
from events import ALIAS_CHANGED, AliasChanged, Event
from services.cli.stack_runner import StackRunner
from services.registry_watcher.adapters.webhook_registration import register_webhook


def _is_move(model: str, version: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, AliasChanged) and e.model == model and e.version == version


def _moves(
    client: MlflowClient,
    follower: TopicFollower,
    model: str,
    n: int,
    timeout_s: float,
    jitter_s: float = 0.0,
) -> tuple[list[float], list[float], dict[str, int]]:
    latencies: list[float] = []
    write_ms: list[float] = []
    sources: dict[str, int] = {}
    for i in range(n):
        if jitter_s:
            # Decorrelate the write from the poll clock (otherwise every write lands right after a poll).
            time.sleep(random.uniform(0, jitter_s))
        version = str(1 + (i % 2))
        started = time.perf_counter()
        client.set_registered_model_alias(model, "champion", version)
        write_ms.append((time.perf_counter() - started) * 1000)
        got = follower.wait(_is_move(model, version), timeout_s)
        if got is None:
            raise RuntimeError(f"no AliasChanged for {model}@champion={version} within {timeout_s}s")
        arrived, event = got
        latencies.append((arrived - started) * 1000)
        src = event.source.value  # type: ignore[attr-defined]
        sources[src] = sources.get(src, 0) + 1
    return latencies, write_ms, sources


def run(
    changes: int, poller_changes: int, poll_interval_s: float, workdir: Path, brokers: list[str]
) -> dict[str, Any]:
    def measure(runner: StackRunner) -> dict[str, Any]:
        return _measure(runner, changes, poller_changes, poll_interval_s)

    return {
        "what": "alias write in MLflow -> AliasChanged consumed from Kafka",
        **run_on_brokers("webhook", brokers, workdir, measure),
    }


def _measure(
    runner: StackRunner, changes: int, poller_changes: int, poll_interval_s: float
) -> dict[str, Any]:
    env_extra = {"FLYWHEEL_POLL_INTERVAL_S": "10"}
    endpoints = runner.endpoints
    assert endpoints is not None
    watcher = runner.start_watcher(env_extra)
    client = MlflowClient(tracking_uri=endpoints.mlflow_tracking_uri)
    model = f"bench_webhook_{uuid.uuid4().hex[:8]}"
    client.create_registered_model(model)
    for _ in range(2):
        client.create_model_version(model, source="s3://flywheel-bench/model", run_id=None)
    follower = TopicFollower(endpoints, ALIAS_CHANGED)
    try:
        _moves(client, follower, model, 2, 30)  # warm-up: connections, first poll
        webhook, write_ms, webhook_sources = _moves(client, follower, model, changes, 30)

        # Poller path: webhook disabled, a second watcher polling at `poll_interval_s`.
        reg = register_webhook(client, f"{watcher.url}/webhooks/mlflow", runner.webhook_secret)
        client.update_webhook(reg.webhook_id, status=WebhookStatus.DISABLED)
        watcher.process.stop()
        runner.services.pop("registry-watcher")
        runner.start_watcher({"FLYWHEEL_POLL_INTERVAL_S": str(poll_interval_s)}, register=False)
        time.sleep(1.5)
        poller, _, poller_sources = _moves(
            client, follower, model, poller_changes, poll_interval_s * 5 + 10, jitter_s=poll_interval_s
        )
    finally:
        follower.close()
    return {
        "webhook_path": {**summarize(webhook), "sources": webhook_sources},
        "mlflow_alias_write": summarize(write_ms),
        "poller_path": {**summarize(poller), "poll_interval_s": poll_interval_s, "sources": poller_sources},
    }
