"""An MLflow server with several workers and no MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY drops deliveries (each
worker encrypts webhook secrets under its own random key): `flywheel webhook register`'s check says so,
and once the poller repairs a change no delivery brought, `flywheel status` says "webhook deliveries
failing" within one poll interval — with the likely cause. The registry watcher is a subprocess on the
test session's Redis and Apache Kafka; alias moves go to MLflow on connections of their own, so they meet
both workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from services.cli.devstack.servers import start_mlflow
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import RunningService, StackRunner
from tests.support import unique

pytestmark = pytest.mark.e2e

POLL_S = 2.0


@pytest.fixture()
def keyless(stack: Endpoints, workdir: Path) -> Iterator[tuple[str, StackRunner, RunningService, str]]:
    process, uri = start_mlflow(workdir / unique("keyless-mlflow"), workers=2, stable_key=False)
    endpoints = Endpoints(uri, stack.kafka_bootstrap_servers, stack.redis_url, stack.kafka_profile)
    prefix = unique("hooks")
    env = {**stack.env(), "MLFLOW_TRACKING_URI": uri, "FLYWHEEL_REDIS_PREFIX": prefix}
    runner = StackRunner.attach(workdir / unique("hooks"), endpoints, env)
    try:
        watcher = runner.start_watcher(
            {"FLYWHEEL_POLL_INTERVAL_S": str(POLL_S), "FLYWHEEL_WEBHOOK_HEALTH_GRACE_S": "0"}
        )
        yield uri, runner, watcher, prefix
    finally:
        runner.stop()
        process.stop()


def _move(uri: str, model: str, version: str) -> None:
    """`set_registered_model_alias` on a connection of its own (MLflow's client would keep one alive)."""
    resp = httpx.post(
        f"{uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": model, "alias": "champion", "version": version},
        headers={"Connection": "close"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text


def _status(uri: str, prefix: str, redis_url: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "REDIS_URL": redis_url, "FLYWHEEL_REDIS_PREFIX": prefix}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_a_keyless_multi_worker_mlflow_shows_webhook_deliveries_failing(
    keyless: tuple[str, StackRunner, RunningService, str], stack: Endpoints
) -> None:
    uri, runner, watcher, prefix = keyless
    assert runner.webhook_check is not None
    print(f"\nwebhook register's check on the keyless 2-worker MLflow: {runner.webhook_check.detail}")
    client = MlflowClient(uri)
    model = unique("keyless")
    client.create_registered_model(model)
    for _ in range(2):
        client.create_model_version(model, source="s3://flywheel-tests/model", run_id=None)
    moved_at = time.time()
    for i in range(12):
        _move(uri, model, str(1 + i % 2))
        time.sleep(0.3)
    deadline = moved_at + 12 * 0.3 + 3 * POLL_S + 5
    report: dict = {}
    while time.time() < deadline:
        report = _status(uri, prefix, stack.redis_url)
        if report["webhook"]["status"] == "failing":
            break
        time.sleep(0.5)
    webhook = report["webhook"]
    assert webhook["status"] == "failing", webhook
    assert webhook["repaired_changes"] >= 1 and webhook["failing_since"] >= moved_at
    # Judged by the poll that repaired it: within one poll interval of the moves.
    judged_after = webhook["failing_since"] - moved_at
    print(f"failing since {judged_after:.1f} s after the first move; likely: {webhook['causes'][0][:90]}")
    assert judged_after <= 12 * 0.3 + POLL_S + 2
    assert "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY" in webhook["causes"][0]
    live = httpx.get(f"{watcher.url}/v1/webhook-health", timeout=5).json()
    assert live["status"] == "failing"
    assert "flywheel_watcher_webhook_deliveries_failing 1.0" in httpx.get(f"{watcher.url}/metrics").text
    printed = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "status"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "REDIS_URL": stack.redis_url,
            "FLYWHEEL_REDIS_PREFIX": prefix,
            "COLUMNS": "200",
        },
        timeout=60,
    )
    assert "webhook deliveries failing since" in printed.stdout, printed.stdout + printed.stderr
