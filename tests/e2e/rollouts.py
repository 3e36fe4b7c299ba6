"""What the rollout e2e tests share: the policy sized for a test's traffic, the stack with the canary
(`rollout_pipeline`), simulated users, and small waits and reads."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient

from services.cli.devstack.background import Background
from services.cli.devstack.sample_models import wine_data
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import RunningService, StackRunner
from tests.support import unique, wait_until

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


@contextlib.contextmanager
def rollout_pipeline(stack: Endpoints, workdir: Path, workers: Sequence[str] = ()) -> Iterator[Pipeline]:
    """Watcher, cache invalidation, two gateways and the canary (plus `workers`) on their own prefix."""
    env = {
        **stack.env(),
        "FLYWHEEL_REDIS_PREFIX": unique("canary"),
        "FLYWHEEL_INVALIDATION_GROUP_ID": unique("inv"),
        "FLYWHEEL_CANARY_GROUP_ID": unique("canary"),
        "FLYWHEEL_FEEDBACK_GROUP_ID": unique("feedback"),
        "FLYWHEEL_POLL_INTERVAL_S": "2",
        "FLYWHEEL_RECONCILE_INTERVAL_S": "1",
        "FLYWHEEL_TRACING_ENABLED": "false",
        "FLYWHEEL_ADMIN_TOKEN": TOKEN,
        "FLYWHEEL_FEEDBACK_SECRET": "e2e-feedback-secret",
        **POLICY_ENV,
    }
    runner = StackRunner.attach(workdir / unique("canary"), stack, env)
    try:
        gateways = runner.start_hot_reload(2)
        canary = runner.start_canary()
        for worker in workers:
            runner.start_worker(worker)
        yield Pipeline(runner, gateways, canary)
    finally:
        runner.stop()


class Users(Background):
    """Simulated users sending held-out samples to both replicas, each request as a distinct user."""

    def __init__(
        self, gateways: list[RunningService], model: str, *, distinct: bool = True, rate_every: int = 0
    ) -> None:
        """`rate_every=n`: every n-th answer is rated thumbs up by its user (needs FEEDBACK_SECRET)."""
        super().__init__(4)
        self.gateways, self.model, self.distinct, self.rate_every = gateways, model, distinct, rate_every
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
                if self.rate_every and body.get("feedback_token") and i % self.rate_every == 0:
                    client.post(
                        f"{gateway.url}/v1/feedback",
                        json={
                            "request_id": body["request_id"],
                            "user_id": user,
                            "rating": "thumbs_up",
                            "feedback_token": body["feedback_token"],
                        },
                    )
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


def alias(client: MlflowClient, model: str, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model, name).version)
    except Exception:
        return None
