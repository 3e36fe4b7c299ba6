"""Canary rollouts over the real stack: MLflow, watcher, cache invalidation, two gateways, the canary
worker (all subprocesses), real Redis and broker. Simulated users send traffic with user ids.

A good challenger is promoted step by step; a broken one is rolled back without ever getting more than
the first step's weight; nothing is promoted below the minimum samples; a worker killed with SIGKILL
resumes the same rollout at the same step; admin abort/promote need the token; routing is sticky.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from events import CANARY_DECISIONS, CanaryDecision
from services.cli.devstack.background import Background
from services.cli.devstack.sample_models import register_broken_version, register_wine_version, wine_data
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import RunningService, StackRunner
from tests.support import TopicReader, unique, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::FutureWarning")]

TOKEN = "e2e-admin-token"
SAMPLES = [{k: float(v) for k, v in row.items()} for _, row in wine_data().test_x.iterrows()]
POLICY_ENV = {
    "FLYWHEEL_CANARY_WEIGHTS": "20,50,100",
    "FLYWHEEL_CANARY_STEP_INTERVAL_S": "2",
    "FLYWHEEL_CANARY_CHECK_INTERVAL_S": "1",
    "FLYWHEEL_CANARY_MIN_SAMPLES": "30",
    "FLYWHEEL_CANARY_MAX_FAILED_CHECKS": "2",
    "FLYWHEEL_CANARY_TICK_S": "0.5",
    # All test processes share two cores: latency reflects machine load, so it is judged loosely here.
    "FLYWHEEL_CANARY_MAX_P95_LATENCY_RATIO": "3",
    "FLYWHEEL_CANARY_MAX_P95_LATENCY_DELTA_MS": "100",
    # Sequential analysis sized for a test's traffic: evidence from 150 effective inferences, 5 points.
    "FLYWHEEL_CANARY_SEQUENTIAL_HORIZON": "150",
    "FLYWHEEL_CANARY_MAX_ERROR_RATE_DELTA": "0.05",
}


class Pipeline:
    def __init__(self, runner: StackRunner, gateways: list[RunningService], canary: RunningService) -> None:
        self.runner, self.gateways, self.canary = runner, gateways, canary

    def api(self, path: str, method: str = "GET", token: str | None = TOKEN, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, f"{self.canary.url}{path}", headers=headers, timeout=10, **kw)

    def rollout(self, model: str) -> dict[str, Any] | None:
        resp = self.api(f"/v1/rollouts/{model}")
        return resp.json() if resp.status_code == 200 else None


@pytest.fixture(scope="module")
def pipeline(stack: Endpoints, workdir: Path) -> Iterator[Pipeline]:
    env = {
        **stack.env(),
        "FLYWHEEL_REDIS_PREFIX": unique("canary"),
        "FLYWHEEL_INVALIDATION_GROUP_ID": unique("inv"),
        "FLYWHEEL_CANARY_GROUP_ID": unique("canary"),
        "FLYWHEEL_POLL_INTERVAL_S": "2",
        "FLYWHEEL_RECONCILE_INTERVAL_S": "1",
        "FLYWHEEL_TRACING_ENABLED": "false",
        "FLYWHEEL_ADMIN_TOKEN": TOKEN,
        **POLICY_ENV,
    }
    runner = StackRunner.attach(workdir / unique("canary"), stack, env)
    try:
        gateways = runner.start_hot_reload(2)
        canary = runner.start_canary()
        yield Pipeline(runner, gateways, canary)
    finally:
        runner.stop()


@pytest.fixture()
def model(stack: Endpoints, stack_env: dict[str, str], mlflow_client: MlflowClient) -> Callable[..., str]:
    def make(*kinds: str) -> str:
        """A new model with one version per kind ("weak", "strong", "broken"); version 1 is champion."""
        name = unique("canary_model")
        for kind in kinds:
            if kind == "broken":
                register_broken_version(stack.mlflow_tracking_uri, name, experiment="tests/canary")
            else:
                register_wine_version(stack.mlflow_tracking_uri, name, kind, experiment="tests/canary")
        mlflow_client.set_registered_model_alias(name, "champion", "1")
        return name

    return make


@pytest.fixture()
def reader(stack: Endpoints) -> Iterator[TopicReader]:
    """The canary decisions topic, read from the start."""
    topic = TopicReader(stack, CANARY_DECISIONS)
    yield topic
    topic.close()


class Users(Background):
    """Simulated users sending held-out samples to both replicas, each request as a distinct user."""

    def __init__(self, gateways: list[RunningService], model: str, *, distinct: bool = True) -> None:
        super().__init__(4)
        self.gateways, self.model, self.distinct = gateways, model, distinct
        self.responses: list[tuple[str, int, str | None, str | None]] = []
        self._counter = itertools.count()

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=10) as client:
            while self.running:
                i = next(self._counter)
                user = f"user-{i}" if self.distinct else f"user-{i % 50}"
                gateway = self.gateways[i % len(self.gateways)]
                resp = client.post(
                    f"{gateway.url}/v1/models/{self.model}/predict",
                    json={"inputs": SAMPLES[i % len(SAMPLES)], "user_id": user},
                )
                body = resp.json() if resp.status_code == 200 else {}
                self.responses.append((user, resp.status_code, body.get("variant"), body.get("version")))
                time.sleep(0.01)


@contextlib.contextmanager
def challenger_under_traffic(pipeline: Pipeline, client: MlflowClient, name: str) -> Iterator[Users]:
    """Users send traffic to both gateways; after 2 s of champion traffic, version 2 becomes challenger."""
    with Users(pipeline.gateways, name) as users:
        time.sleep(2)
        client.set_registered_model_alias(name, "challenger", "2")
        yield users


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    return wait_until(predicate, timeout_s, what, interval_s=0.2)


def decisions(model: str, reader: TopicReader) -> list[CanaryDecision]:
    reader.poll()
    return [e for e in reader.events(lambda e: isinstance(e, CanaryDecision) and e.model == model)]  # type: ignore[misc]


def alias(client: MlflowClient, model: str, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model, name).version)
    except Exception:
        return None


def test_good_challenger_is_promoted_step_by_step(
    pipeline: Pipeline, model: Callable[..., str], mlflow_client: MlflowClient, reader: TopicReader
) -> None:
    name = model("weak", "strong")
    with challenger_under_traffic(pipeline, mlflow_client, name) as users:
        wait_for(lambda: alias(mlflow_client, name, "champion") == "2", 120, "promotion of v2")
    kinds = [
        d.decision.value
        for d in wait_for(
            lambda: (
                [d for d in decisions(name, reader) if d.decision.value == "promote"]
                and decisions(name, reader)
            ),
            30,
            "promote decision",
        )
    ]
    assert kinds[0] == "start" and kinds[-1] == "promote", kinds
    assert kinds.count("advance") == 2, kinds  # 20 -> 50 -> 100, then promote
    assert alias(mlflow_client, name, "challenger") is None
    assert alias(mlflow_client, name, "previous-champion") == "1"
    served = {(variant, version) for _, status, variant, version in users.responses if status == 200}
    assert ("challenger", "2") in served and ("champion", "1") in served
    assert all(status == 200 for _, status, _, _ in users.responses)
    view = pipeline.rollout(name)
    assert view is not None and view["status"] == "promoted"
    assert view["totals"]["challenger"]["requests"] >= 30


def test_broken_challenger_rolled_back_at_first_step(
    pipeline: Pipeline, model: Callable[..., str], mlflow_client: MlflowClient, reader: TopicReader
) -> None:
    name = model("strong", "broken")
    with challenger_under_traffic(pipeline, mlflow_client, name):
        found = wait_for(
            lambda: [d for d in decisions(name, reader) if d.decision.value == "rollback"],
            120,
            "rollback decision",
        )
    all_decisions = decisions(name, reader)
    assert found[0].metrics, "a rollback carries the metrics it was based on"
    assert max(d.weight for d in all_decisions if d.decision.value != "rollback") <= 20
    assert [d.decision.value for d in all_decisions].count("advance") == 0
    wait_for(lambda: alias(mlflow_client, name, "challenger") is None, 30, "challenger alias removed")
    assert alias(mlflow_client, name, "champion") == "1"


def test_admin_actions_need_token_hold_without_samples_and_survive_worker_kill(
    pipeline: Pipeline, model: Callable[..., str], mlflow_client: MlflowClient
) -> None:
    name = model("weak", "strong")
    mlflow_client.set_registered_model_alias(name, "challenger", "2")
    view = wait_for(lambda: pipeline.rollout(name), 60, "rollout started")
    rollout_id = view["rollout_id"]
    # No traffic: several step intervals pass, no advance below the minimum samples.
    time.sleep(6)
    view = pipeline.rollout(name)
    assert view is not None and view["step"] == 0 and view["status"] == "progressing", view

    assert pipeline.api(f"/v1/rollouts/{name}/pause", "POST", token=None).status_code == 401
    assert pipeline.api(f"/v1/rollouts/{name}/pause", "POST", token="wrong").status_code == 401
    assert pipeline.api(f"/v1/rollouts/{name}/pause", "POST").status_code == 200
    assert pipeline.api(f"/v1/rollouts/{name}/pause", "POST").status_code == 409  # already paused

    # Sticky routing while the weight is fixed (paused at 20 %): a user always gets the same variant.
    with Users(pipeline.gateways, name, distinct=False) as users:
        time.sleep(4)
    by_user: dict[str, set[str | None]] = {}
    for user, status, variant, _ in users.responses:
        assert status == 200
        by_user.setdefault(user, set()).add(variant)
    assert len(by_user) == 50 and all(len(v) == 1 for v in by_user.values()), by_user
    challenger_users = sum(1 for v in by_user.values() if v == {"challenger"})
    assert 1 <= challenger_users <= 25, challenger_users

    # kill -9 the worker mid-rollout: it resumes the same rollout at the same step.
    canary = pipeline.runner.services.pop("canary-rollout")
    canary.process.kill()
    pipeline.canary = pipeline.runner.start_canary({"FLYWHEEL_CANARY_PORT": str(canary.port)})
    view = wait_for(lambda: pipeline.rollout(name), 60, "rollout restored")
    assert view["rollout_id"] == rollout_id and view["status"] == "paused" and view["step"] == 0

    assert pipeline.api(f"/v1/rollouts/{name}/resume", "POST").status_code == 200
    cli_env = {
        **os.environ,
        **pipeline.runner.service_env(),
        "FLYWHEEL_CANARY_URL": pipeline.canary.url or "",
    }
    status = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "status", "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    row = next(r for r in json.loads(status.stdout) if r["model"] == name)
    assert row["rollout"]["rollout_id"] == rollout_id and row["traffic_split"]["rollout_id"] == rollout_id
    promote = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "rollout", "promote", name, "--reason", "looks good"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert promote.returncode == 0, promote.stderr
    assert "promote" in promote.stderr
    wait_for(lambda: alias(mlflow_client, name, "champion") == "2", 30, "manual promotion")
    assert pipeline.rollout(name)["status"] == "promoted"  # type: ignore[index]

    # A new challenger starts a new rollout; an admin abort removes it.
    mlflow_client.set_registered_model_alias(name, "challenger", "1")
    view = wait_for(
        lambda: (v := pipeline.rollout(name)) and v["rollout_id"] != rollout_id and v["active"] and v,
        60,
        "second rollout",
    )
    assert pipeline.api(f"/v1/rollouts/{name}/abort", "POST").status_code == 200
    wait_for(lambda: alias(mlflow_client, name, "challenger") is None, 30, "challenger removed by abort")
    assert alias(mlflow_client, name, "champion") == "2"

    page = httpx.get(f"{pipeline.canary.url}/rollouts", timeout=5)
    assert page.status_code == 200 and "Canary rollouts" in page.text


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium_binary() is None, reason="Chromium not installed (.ci/system-deps installs it)")
def test_dashboard_shows_a_live_rollout_in_headless_chromium(
    pipeline: Pipeline, model: Callable[..., str], mlflow_client: MlflowClient, tmp_path: Path
) -> None:
    name = model("weak", "strong")
    mlflow_client.set_registered_model_alias(name, "challenger", "2")
    view = wait_for(lambda: pipeline.rollout(name), 60, "rollout started")
    argv = [
        str(chromium_binary()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        f"{pipeline.canary.url}/rollouts",
    ]
    dom = subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout
    assert "Canary rollouts" in dom
    section = dom[dom.index(f'data-model="{name}"') :]
    assert view["rollout_id"] in section and "progressing" in section
    assert 'class="weight-chart"' in section and "<polyline" in section  # weight over time
    assert "start" in section  # the decisions table lists the start decision
