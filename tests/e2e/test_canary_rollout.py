"""Canary rollouts over the real stack: MLflow, watcher, cache invalidation, two gateways, the canary
worker (all subprocesses), real Redis and broker. Simulated users send traffic with user ids.

A good challenger is promoted step by step; a broken one is rolled back without ever getting more than
the first step's weight; nothing is promoted below the minimum samples; a worker killed with SIGKILL
resumes the same rollout at the same step; admin abort/promote need the token; routing is sticky.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from events import CANARY_DECISIONS, CanaryDecision
from services.cli.devstack.sample_models import register_broken_version
from services.cli.devstack.stack import Endpoints
from tests.e2e.rollouts import (
    SAMPLES,
    Pipeline,
    Users,
    alias,
    challenger_under_traffic,
    rollout_pipeline,
    wait_for,
)
from tests.support import TopicReader

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module")
def pipeline(stack: Endpoints, workdir: Path) -> Iterator[Pipeline]:
    with rollout_pipeline(stack, workdir) as started:
        yield started


@pytest.fixture()
def reader(stack: Endpoints) -> Iterator[TopicReader]:
    """The canary decisions topic, read from the start."""
    topic = TopicReader(stack, CANARY_DECISIONS)
    yield topic
    topic.close()


def decisions(model: str, reader: TopicReader) -> list[CanaryDecision]:
    reader.poll()
    return [e for e in reader.events(lambda e: isinstance(e, CanaryDecision) and e.model == model)]  # type: ignore[misc]


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
    row = next(r for r in json.loads(status.stdout)["models"] if r["model"] == name)
    assert row["rollout"]["rollout_id"] == rollout_id and row["traffic_split"]["rollout_id"] == rollout_id
    assert row["rollout"]["status"] == "progressing" and len(row["replicas"]) == 2
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

    page = httpx.get(f"{pipeline.canary.url}/rollouts", timeout=5, follow_redirects=True)
    assert page.status_code == 200 and "Flywheel console" in page.text  # the old page's address
