"""A rating sent the moment the answer arrives, to the *other* replica (as a load balancer would), is
accepted: the feedback token carries the served facts, so no replica has to wait for the serving
replica's request log (written in batches every 20 ms) before it can accept. The log still enriches the
rating: the FeedbackRecorded events carry the rated inputs and outputs.

Two gateway subprocesses on the real stack (MLflow, Redis, Apache Kafka); 1,000 predictions on replica A,
each rated on replica B within a few milliseconds of its answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from events import FEEDBACK_RECORDED, FeedbackRecorded
from services.cli.devstack.sample_models import wine_data
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import RunningService, StackRunner
from tests.support import TopicReader, unique

pytestmark = pytest.mark.e2e

PREDICTIONS = 1000


@pytest.fixture()
def replicas(
    stack: Endpoints, workdir: Path, wine_model: tuple[str, dict[str, float]]
) -> Iterator[tuple[list[RunningService], str]]:
    name, _ = wine_model
    MlflowClient(stack.mlflow_tracking_uri).set_registered_model_alias(name, "champion", "2")
    runner = StackRunner.attach(workdir / unique("anyreplica"), stack, stack.env())
    env = {
        "FLYWHEEL_MODELS": name,
        "FLYWHEEL_REDIS_PREFIX": unique("anyreplica"),
        "FLYWHEEL_FEEDBACK_RATE_PER_MINUTE": "0",
        "FLYWHEEL_TRACING_ENABLED": "false",
    }
    try:
        yield [runner.start_gateway("any-a", env), runner.start_gateway("any-b", env)], name
    finally:
        runner.stop()


def test_a_rating_sent_at_once_to_the_other_replica_is_accepted(
    replicas: tuple[list[RunningService], str], stack: Endpoints
) -> None:
    (a, b), name = replicas
    rows = wine_data().test_x.to_dict(orient="records")
    reader = TopicReader(stack, FEEDBACK_RECORDED)
    statuses: dict[int, int] = {}
    answered: dict[str, dict] = {}
    gaps_ms: list[float] = []
    try:
        with (
            httpx.Client(base_url=a.url or "", timeout=30) as serving,
            httpx.Client(base_url=b.url or "", timeout=30) as other,
        ):
            for i in range(PREDICTIONS):
                user, record = f"user-{i % 13}", rows[i % len(rows)]
                resp = serving.post(f"/v1/models/{name}/predict", json={"inputs": record, "user_id": user})
                assert resp.status_code == 200, resp.text
                answer = resp.json()
                answered_at = time.perf_counter()
                rating = {
                    "request_id": answer["request_id"],
                    "feedback_token": answer["feedback_token"],
                    "user_id": user,
                    "rating": "thumbs_up" if i % 3 else "thumbs_down",
                }
                gaps_ms.append((time.perf_counter() - answered_at) * 1000)
                rated = other.post("/v1/feedback", json=rating)
                statuses[rated.status_code] = statuses.get(rated.status_code, 0) + 1
                answered[answer["request_id"]] = {**answer, "inputs": record, "user_id": user}
        assert statuses == {202: PREDICTIONS}, statuses  # 0 x 404: none refused for want of a lookup
        assert max(gaps_ms) < 5, f"a rating was sent {max(gaps_ms):.1f} ms after its answer"
        events = reader.wait_for(
            lambda e: isinstance(e, FeedbackRecorded) and e.request_id in answered, PREDICTIONS, timeout_s=60
        )
    finally:
        reader.close()
    got = {e.request_id: e for e in events if isinstance(e, FeedbackRecorded)}
    assert len(got) == PREDICTIONS
    for request_id, event in got.items():
        answer = answered[request_id]
        assert (event.model, event.version, event.variant) == (name, answer["version"], answer["variant"])
        assert event.user_id == answer["user_id"]
    enriched = [e for e in got.values() if e.inputs == answered[e.request_id]["inputs"]]
    # The rating waits a moment for the serving replica's log entry (written every 20 ms): enriched.
    assert len(enriched) >= 0.99 * PREDICTIONS, f"{len(enriched)} of {PREDICTIONS} carry their inputs"
    assert all(e.outputs == answered[e.request_id]["outputs"] for e in enriched)
