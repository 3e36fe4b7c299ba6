"""Two canary rollout instances in one consumer group: each model is decided by the instance that owns its
partition, an admin action reaches the owner from either instance, and when one instance stops mid-rollout
the other takes the rollout over from Redis — one promotion, no step skipped or repeated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from events import CANARY_DECISIONS, CanaryDecision
from services.cli.devstack.background import Background
from services.cli.devstack.sample_models import register_wine_version, wine_data
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import RunningService, StackRunner
from tests.support import TopicReader, unique

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::FutureWarning")]

TOKEN = "scale-out-token"
SAMPLES = [{k: float(v) for k, v in row.items()} for _, row in wine_data().test_x.iterrows()]


class Traffic(Background):
    def __init__(self, gateway: RunningService, model: str) -> None:
        super().__init__()
        self.gateway, self.model = gateway, model

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while self.running:
                client.post(
                    f"{self.gateway.url}/v1/models/{self.model}/predict",
                    json={"inputs": SAMPLES[i % len(SAMPLES)], "user_id": f"u{i}"},
                )
                i += 1
                time.sleep(0.01)


@pytest.fixture()
def runner(stack: Endpoints, workdir: Path) -> Iterator[StackRunner]:
    env = {
        **stack.env(),
        "FLYWHEEL_REDIS_PREFIX": unique("scale"),
        "FLYWHEEL_CANARY_GROUP_ID": unique("canary"),
        "FLYWHEEL_INVALIDATION_GROUP_ID": unique("inv"),
        "FLYWHEEL_POLL_INTERVAL_S": "2",
        "FLYWHEEL_TRACING_ENABLED": "false",
        "FLYWHEEL_ADMIN_TOKEN": TOKEN,
        "FLYWHEEL_CANARY_WEIGHTS": "10,30,60,100",
        "FLYWHEEL_CANARY_STEP_INTERVAL_S": "3",
        "FLYWHEEL_CANARY_CHECK_INTERVAL_S": "1",
        "FLYWHEEL_CANARY_MIN_SAMPLES": "20",
        "FLYWHEEL_CANARY_TICK_S": "0.5",
        "FLYWHEEL_CANARY_MAX_P95_LATENCY_RATIO": "5",
        "FLYWHEEL_CANARY_MAX_P95_LATENCY_DELTA_MS": "200",
        "FLYWHEEL_CANARY_SEQUENTIAL_HORIZON": "400",
        "FLYWHEEL_CANARY_SHADOW_SAMPLES": "0",  # the hand-over of live steps is what this test is about
        "FLYWHEEL_CANARY_MAX_ERROR_RATE_DELTA": "0.05",
    }
    runner = StackRunner.attach(workdir / unique("scale"), stack, env)
    try:
        yield runner
    finally:
        runner.stop()


def start_canary(runner: StackRunner, name: str) -> RunningService:
    from services.cli.devstack.process import free_port

    return runner.start_service(
        "canary-rollout",
        instance=name,
        port_var="FLYWHEEL_CANARY_PORT",
        extra_env={"FLYWHEEL_CANARY_WEB_PORT": str(free_port())},
        ready_path="/readyz",
    )


def decisions_of(reader: TopicReader, model: str) -> list[CanaryDecision]:
    reader.poll()
    return reader.events(lambda e: isinstance(e, CanaryDecision) and e.model == model)  # type: ignore[return-value]


def test_two_instances_promote_once_without_skipping_a_step_and_hand_over_on_stop(
    runner: StackRunner, stack: Endpoints
) -> None:
    model = unique("scale_model")
    for kind in ("weak", "strong"):
        register_wine_version(stack.mlflow_tracking_uri, model, kind, experiment="tests/scale")
    client = MlflowClient(stack.mlflow_tracking_uri)
    client.set_registered_model_alias(model, "champion", "1")
    gateways = runner.start_hot_reload(1, {"FLYWHEEL_MODELS": model})
    first, second = start_canary(runner, "canary-a"), start_canary(runner, "canary-b")
    reader = TopicReader(stack, CANARY_DECISIONS)
    try:
        with Traffic(gateways[0], model):
            client.set_registered_model_alias(model, "challenger", "2")
            deadline = time.time() + 90
            while time.time() < deadline and not any(
                d.decision.value == "advance" for d in decisions_of(reader, model)
            ):
                time.sleep(0.5)
            # An admin action through each instance reaches the owner (one of them is not it).
            for instance in (first, second):
                for action in ("pause", "resume"):
                    resp = httpx.post(
                        f"{instance.url}/v1/rollouts/{model}/{action}",
                        headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=30,
                    )
                    assert resp.status_code == 200, (instance.name, action, resp.text)
                    assert resp.json()["decisions"][0]["decision"] == action
            owners = [
                i
                for i in (first, second)
                if httpx.get(f"{i.url}/v1/rollouts/{model}", timeout=10).json()["decided_here"]
            ]
            assert len(owners) == 1, [o.name for o in owners]
            owner = owners[0]
            owner.process.stop()  # leaves the group: the other instance takes every partition over
            runner.services.pop(owner.name, None)
            deadline = time.time() + 150
            while (
                time.time() < deadline and client.get_model_version_by_alias(model, "champion").version != "2"
            ):
                time.sleep(1.0)
        assert str(client.get_model_version_by_alias(model, "champion").version) == "2"
        reader.settle(3.0)  # read the shared topic to its end: one poll returns one fetch of its history
        made = reader.events(lambda e: isinstance(e, CanaryDecision) and e.model == model)
    finally:
        reader.close()
    unique_decisions = list({d.event_id: d for d in made}.values())  # at least once: repeats share an id
    kinds = [d.decision.value for d in unique_decisions]
    assert kinds.count("promote") == 1, kinds
    advances = [d.step for d in unique_decisions if d.decision.value == "advance"]
    assert advances == list(range(1, len(advances) + 1)), advances  # each step once, in order
