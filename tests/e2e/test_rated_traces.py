"""Traces proportional to need, on the real stack: a gateway subprocess at its default settings (1 % sampled,
micro-batching on) serves concurrent predictions; a share of them is rated the moment the answer arrives.

Every rated prediction must then have its MLflow trace — under the trace id its response returned, with
its original request id, model, version, inputs, outputs and timing — carrying the rating (and the
correction) as assessments; the traces that were written unrated are exactly the sampled ones (at most 5 %
of the predictions); and the data exporter finds the rated ones by rating, corrections first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Trace

from services.cli.devstack.sample_models import wine_data
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import RunningService, StackRunner
from services.feedback_aggregation.adapters.data_exporter import DataExporter
from services.gateway.domain.served import sampled
from tests.support import unique

pytestmark = pytest.mark.e2e

PREDICTIONS = 300
RATED_EVERY = 7  # ~43 rated
SAMPLE = 0.01  # the default FLYWHEEL_TRACE_SAMPLE


@pytest.fixture()
def served(
    stack: Endpoints, workdir: Path, wine_model: tuple[str, dict[str, float]]
) -> Iterator[tuple[RunningService, str, str]]:
    name, _ = wine_model
    MlflowClient(stack.mlflow_tracking_uri).set_registered_model_alias(name, "champion", "2")
    experiment = unique("tests/rated-traces")
    runner = StackRunner.attach(workdir / unique("rated"), stack, stack.env())
    try:
        gateway = runner.start_gateway(
            "rated-1",
            {
                "FLYWHEEL_MODELS": name,
                "FLYWHEEL_REDIS_PREFIX": unique("rated"),
                "FLYWHEEL_TRACE_EXPERIMENT": experiment,
                "FLYWHEEL_FEEDBACK_RATE_PER_MINUTE": "0",
            },
        )
        yield gateway, name, experiment
    finally:
        runner.stop()


def test_every_rated_prediction_is_traced_and_linked_and_the_rest_only_when_sampled(
    served: tuple[RunningService, str, str], stack: Endpoints
) -> None:
    gateway, name, experiment = served
    rows = wine_data().test_x.to_dict(orient="records")
    answers: list[dict[str, Any]] = []
    ratings: dict[str, dict[str, Any]] = {}  # request id -> the rating sent
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=gateway.url or "", timeout=30) as http:
            for i in range(worker, PREDICTIONS, 4):
                record = rows[i % len(rows)]
                user = f"user-{i % 11}"
                started = time.time()
                resp = http.post(f"/v1/models/{name}/predict", json={"inputs": record, "user_id": user})
                assert resp.status_code == 200, resp.text
                body = {**resp.json(), "inputs": record, "user_id": user, "window": (started, time.time())}
                with lock:
                    answers.append(body)
                if i % RATED_EVERY:
                    continue
                rating = {
                    "request_id": body["request_id"],
                    "feedback_token": body["feedback_token"],
                    "user_id": user,
                    "rating": "thumbs_down" if i % 2 else "thumbs_up",
                    **({"corrected_output": 1} if i % 3 == 0 else {}),
                }
                rated = http.post("/v1/feedback", json=rating)  # at once, as an automated rater would
                assert rated.status_code == 202, rated.text
                with lock:
                    ratings[body["request_id"]] = rating

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == PREDICTIONS and len(ratings) == len(range(0, PREDICTIONS, RATED_EVERY))

    mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
    by_request = {a["request_id"]: a for a in answers}
    deadline = time.time() + 120
    pending = set(ratings)
    while pending and time.time() < deadline:
        for request_id in list(pending):
            trace = mlflow.get_trace(by_request[request_id]["trace_id"])
            if trace is not None and any(a.name == "user_rating" for a in trace.info.assessments):
                pending.discard(request_id)
        time.sleep(0.5)
    assert not pending, f"{len(pending)} of {len(ratings)} rated predictions have no rated trace"

    for request_id, rating in ratings.items():
        answer = by_request[request_id]
        trace = mlflow.get_trace(answer["trace_id"])
        assert trace is not None
        info = trace.info
        assert info.trace_id == answer["trace_id"]
        tags, meta = info.tags, info.trace_metadata
        assert (tags["flywheel.model"], tags["flywheel.version"]) == (name, answer["version"])
        assert tags["flywheel.variant"] == answer["variant"]
        assert meta["mlflow.trace.user"] == rating["user_id"]
        if not sampled(request_id, SAMPLE):  # written when rated: linked (a sampled one was written before)
            assert info.client_request_id == request_id and meta["flywheel.model"] == name
            assert meta.get("mlflow.modelId")  # the logged model the version came from
        started, ended = answer["window"]
        assert started * 1000 - 1000 <= info.request_time <= ended * 1000 + 1000  # when it was served
        (root,) = trace.data.spans
        assert root.inputs == answer["inputs"] and root.outputs == answer["outputs"]
        assessments = {a.name: a for a in info.assessments}
        assert assessments["user_rating"].feedback.value == rating["rating"]
        assert assessments["user_rating"].source.source_id == rating["user_id"]
        if "corrected_output" in rating:
            assert assessments["corrected_output"].expectation.value == 1

    def request_of(trace: Trace) -> str:  # every trace carries its facts as tags (sampled ones: only)
        return trace.info.tags["flywheel.request_id"]

    exporter = DataExporter(stack.mlflow_tracking_uri, experiment)
    written = {request_of(t) for t in exporter.query_traces_with_feedback(name, limit=10_000)}
    unrated = written - set(ratings)
    expected_sampled = {r for r in by_request if sampled(r, SAMPLE)} - set(ratings)
    assert set(ratings) <= written
    assert unrated == expected_sampled  # written unrated: exactly the sampled ones
    assert len(unrated) <= 0.05 * PREDICTIONS
    for verdict in ("thumbs_up", "thumbs_down"):
        found = exporter.query_traces_with_feedback(name, rating=verdict, limit=10_000)
        assert {request_of(t) for t in found} == {
            r for r, rating in ratings.items() if rating["rating"] == verdict
        }
    rows_out = list(exporter.examples(exporter.query_traces_with_feedback(name, limit=10_000)))
    corrected = {r for r, rating in ratings.items() if "corrected_output" in rating}
    assert {row.request_id for row in rows_out if row.source == "corrected"} == corrected
