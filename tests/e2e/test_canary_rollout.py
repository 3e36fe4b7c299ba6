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
    # Sequential analysis sized for a test's traffic: evidence from 400 effective inferences, 5 points.
    "FLYWHEEL_CANARY_SEQUENTIAL_HORIZON": "400",
    "FLYWHEEL_CANARY_MAX_ERROR_RATE_DELTA": "0.05",
    "FLYWHEEL_CANARY_WATCH_S": "40",
    "FLYWHEEL_CANARY_SHADOW_SAMPLES": "40",
    "FLYWHEEL_CANARY_SHADOW_SHARE": "0.5",
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
    kinds = [k for k in kinds if k != "watch_passed"]  # the post-promotion watch may end meanwhile
    assert kinds[0] == "start" and kinds[-1] == "promote", kinds
    assert kinds.count("advance") == 3, kinds  # shadow -> 20 -> 50 -> 100, then promote
    assert alias(mlflow_client, name, "challenger") is None
    assert alias(mlflow_client, name, "previous-champion") == "1"
    served = {(variant, version) for _, status, variant, version in users.responses if status == 200}
    assert ("challenger", "2") in served and ("champion", "1") in served
    assert all(status == 200 for _, status, _, _ in users.responses)
    view = pipeline.rollout(name)
    assert view is not None and view["status"] == "promoted"
    assert view["totals"]["challenger"]["requests"] >= 30
    assert_history_tells_what_was_live_when(pipeline, name)


def alias_moves(pipeline: Pipeline, name: str) -> list[tuple[str, str | None, str]]:
    resp = pipeline.api(f"/v1/models/{name}/history?holds=false")
    assert resp.status_code == 200, resp.text
    return [(e["alias"], e["version"], e["actor"]) for e in resp.json()["entries"] if e["kind"] == "alias"]


def assert_history_tells_what_was_live_when(pipeline: Pipeline, name: str) -> None:
    """The history from the topics: who moved each alias, the decisions, and which version answered a
    request; the CLI reads the same from Kafka with Redis unreachable."""
    wanted = {
        ("champion", "1", "user"),  # the test set it through MLflow
        ("challenger", "2", "user"),
        ("previous-champion", "1", "canary"),
        ("champion", "2", "canary"),
        ("challenger", None, "canary"),
    }
    moves = wait_for(
        lambda: wanted <= set(found := alias_moves(pipeline, name)) and found, 30, "alias history"
    )
    assert len(moves) == len(wanted), moves  # each change once, however often it was delivered
    entries = pipeline.api(f"/v1/models/{name}/history?holds=false").json()["entries"]
    kinds = [e["decision"] for e in entries if e["kind"] == "decision" and e["decision"] != "watch_passed"]
    assert kinds[0] == "start" and kinds[-1] == "promote" and "hold" not in kinds, kinds
    assert pipeline.api(f"/v1/models/{name}/history?since=2026-01-01T00:00:00").status_code == 422

    gateway = pipeline.gateways[0]
    answer = httpx.post(
        f"{gateway.url}/v1/models/{name}/predict", json={"inputs": SAMPLES[0], "user_id": "u"}, timeout=10
    ).json()
    served = httpx.get(f"{gateway.url}/v1/requests/{answer['request_id']}", timeout=10)
    assert served.status_code == 200, served.text
    assert (served.json()["version"], served.json()["model"]) == ("2", name)
    assert httpx.get(f"{gateway.url}/v1/requests/no-such-request", timeout=10).status_code == 404

    env = pipeline.runner.service_env({"FLYWHEEL_REDIS_URL": "redis://127.0.0.1:1/0"})
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "flywheel"), "history", name, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    from_cli = [
        (e["alias"], e["version"], e["actor"])
        for e in json.loads(cli.stdout)["entries"]
        if e["kind"] == "alias"
    ]
    assert from_cli == moves


def test_promoted_version_that_degrades_is_reverted_by_the_watch(
    pipeline: Pipeline,
    model: Callable[..., str],
    stack: Endpoints,
    mlflow_client: MlflowClient,
    reader: TopicReader,
    tmp_path: Path,
) -> None:
    """v2 is sound in its canary and is promoted; then it starts failing (its flag file appears, as data
    drift would do): the watch compares it with v1's recorded numbers and moves champion back to v1."""
    flag = tmp_path / "degrade-now"
    name = model("weak")
    register_broken_version(
        stack.mlflow_tracking_uri, name, experiment="tests/canary", degrade_flag=str(flag)
    )
    with challenger_under_traffic(pipeline, mlflow_client, name):
        wait_for(lambda: alias(mlflow_client, name, "champion") == "2", 120, "promotion of v2")
        flag.touch()
        reverted = wait_for(
            lambda: [d for d in decisions(name, reader) if d.decision.value == "reverted"],
            60,
            "reverted decision",
        )
        wait_for(lambda: alias(mlflow_client, name, "champion") == "1", 30, "champion back at v1")
    record = reverted[0]
    assert record.state == "reverted" and "after promotion" in record.reason, record.reason
    assert record.metrics["baseline"] == "previous_champion"
    assert record.metrics["challenger"]["errors"] > 0  # the promoted version's failures since promotion
    assert alias(mlflow_client, name, "previous-champion") == "2"
    revert = {("champion", "1", "canary"), ("previous-champion", "2", "canary")}
    moves = wait_for(
        lambda: set((found := alias_moves(pipeline, name))[-2:]) == revert and found, 30, "history"
    )
    assert ("champion", "2", "canary") in moves[:-2], moves  # the promotion before it


def test_broken_challenger_is_stopped_in_the_shadow_step_with_no_failed_user_request(
    pipeline: Pipeline, model: Callable[..., str], mlflow_client: MlflowClient, reader: TopicReader
) -> None:
    name = model("strong", "broken")
    with challenger_under_traffic(pipeline, mlflow_client, name) as users:
        found = wait_for(
            lambda: [d for d in decisions(name, reader) if d.decision.value == "rollback"],
            120,
            "rollback decision",
        )
    all_decisions = decisions(name, reader)
    assert found[0].metrics, "a rollback carries the metrics it was based on"
    assert "shadow step" in found[0].reason, found[0].reason
    # Caught in the shadow step: it never had a live weight, so no user ever got its answer.
    assert max(d.weight for d in all_decisions) == 0
    assert [d.decision.value for d in all_decisions].count("advance") == 0
    assert users.responses and all(status == 200 for _, status, _, _ in users.responses)
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
    assert view["weight"] == 0  # still in the shadow step: nothing to mirror without traffic
    with Users(pipeline.gateways, name):  # mirrored answers pass the shadow step: 20 % live
        wait_for(lambda: (pipeline.rollout(name) or {}).get("weight") == 20, 60, "shadow step passed")

    assert pipeline.api(f"/v1/rollouts/{name}/pause", "POST", token=None).status_code == 401
    assert pipeline.api(f"/v1/rollouts/{name}/pause", "POST", token="wrong").status_code == 401
    assert pipeline.api(f"/v1/rollouts/{name}/pause", "POST").status_code == 200
    assert pipeline.api(f"/v1/rollouts/{name}/pause", "POST").status_code == 409  # already paused

    # Sticky routing while the weight is fixed (paused at 20 %): a user always gets the same variant, once
    # every replica's cached split says 20 % (a request refreshes a cached split older than 0.5 s).
    def replicas_at_20() -> bool:
        for g in pipeline.gateways:
            httpx.post(f"{g.url}/v1/models/{name}/predict", json={"inputs": SAMPLES[0]}, timeout=10)
        views = [httpx.get(f"{g.url}/v1/models/{name}", timeout=5).json() for g in pipeline.gateways]
        return all((v.get("traffic_split") or {}).get("weight") == 20 for v in views)

    wait_for(replicas_at_20, 30, "every replica routing 20 %")
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
