"""A gateway replica in-process against the real MLflow server, Redis and broker.

Reload notices are driven by writing the resolution cache and publishing on the reload channel exactly
as the cache invalidation service does (its own tests cover that side).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pytest
import redis
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from events import INFERENCES, InferenceRecorded
from services.cli.devstack.sample_models import wine_data
from services.cli.devstack.stack import Endpoints
from services.gateway.bootstrap import create_app
from services.gateway.domain.served import sampled
from services.gateway.settings import GatewaySettings
from services.shared.redis_store import RedisKeys
from services.shared.resolution import ReloadNotice, ResolutionEntry
from tests.support import TopicReader, settings_on, unique

pytestmark = pytest.mark.integration


FEEDBACK_SECRET = "tests-feedback-secret"


def record(i: int = 0) -> dict[str, float]:
    row = wine_data().test_x.iloc[i]
    return {k: float(v) for k, v in row.items()}


class Resolution:
    """Writes the resolution cache and reload notices like the cache invalidation service."""

    def __init__(self, url: str, prefix: str) -> None:
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.keys = RedisKeys(prefix)

    def move(self, model: str, alias: str, version: str | None, *, notify: bool = True) -> None:
        event_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        entry = ResolutionEntry(version=version, event_id=event_id, occurred_at=now)
        self.redis.hset(self.keys.resolution(model), alias, entry.model_dump_json())
        self.redis.sadd(self.keys.resolution_models(), model)
        if notify:
            notice = ReloadNotice(
                model=model, alias=alias, version=version, event_id=event_id, occurred_at=now
            )
            self.redis.publish(self.keys.reload_channel(), notice.model_dump_json())


@pytest.fixture()
def prefix() -> str:
    return unique("gw")


@pytest.fixture()
def resolution(stack: Endpoints, prefix: str) -> Iterator[Resolution]:
    res = Resolution(stack.redis_url, prefix)
    yield res
    res.redis.close()


@pytest.fixture()
def gateway(stack: Endpoints, stack_env: dict[str, str], prefix: str) -> Iterator[TestClient]:
    settings = settings_on(
        stack,
        GatewaySettings,
        prefix,
        replica_id=f"test-{prefix}",
        reconcile_interval_s=1.0,
        reload_retry_initial_s=0.2,
        feedback_secret=FEEDBACK_SECRET,
        feedback_rate_per_minute=5,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def wait_for_version(client: TestClient, model: str, version: str, timeout_s: float = 20.0) -> float:
    started = time.time()
    while time.time() - started < timeout_s:
        resp = client.post(f"/v1/models/{model}/predict", json={"inputs": record()})
        assert resp.status_code == 200, resp.text
        if resp.json()["version"] == version:
            return time.time() - started
        time.sleep(0.02)
    raise AssertionError(f"{model} did not serve version {version} within {timeout_s}s")


def serve(client: TestClient, resolution: Resolution, model: str, version: str) -> str:
    """Move the model's champion to `version` (with a reload notice), wait until it is served: `model`."""
    resolution.move(model, "champion", version)
    wait_for_version(client, model, version)
    return model


@pytest.fixture()
def v1_served(gateway: TestClient, wine_model: tuple[str, dict[str, float]], resolution: Resolution) -> str:
    """The wine model's name, once the gateway serves version 1 as its champion."""
    return serve(gateway, resolution, wine_model[0], "1")


@pytest.fixture()
def v2_served(gateway: TestClient, wine_model: tuple[str, dict[str, float]], resolution: Resolution) -> str:
    """The wine model's name, once the gateway serves version 2 as its champion."""
    return serve(gateway, resolution, wine_model[0], "2")


def test_serves_champion_with_trace_and_inference_event(
    gateway: TestClient, wine_model: tuple[str, dict[str, float]], stack: Endpoints, resolution: Resolution
) -> None:
    name, _ = wine_model
    MlflowClient(stack.mlflow_tracking_uri).set_registered_model_alias(name, "champion", "1")
    resolution.move(name, "champion", "1")
    reader = TopicReader(stack, INFERENCES)
    try:
        resp = gateway.post(
            f"/v1/models/{name}/predict", json={"inputs": [record(0), record(1)], "user_id": "ann"}
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["version"] == "1" and body["alias"] == "champion" and body["model"] == name
        assert len(body["outputs"]) == 2 and all(o in (0, 1, 2) for o in body["outputs"])
        assert body["trace_id"] and body["request_id"]
        single = gateway.post(f"/v1/models/{name}/predict", json={"inputs": record(2)})
        assert isinstance(single.json()["outputs"], int)

        events = reader.wait_for(
            lambda e: isinstance(e, InferenceRecorded) and e.request_id == body["request_id"], 1
        )
        assert len(events) == 1
        event = events[0]
        assert isinstance(event, InferenceRecorded)
        assert (event.model, event.version, event.status, event.user_id) == (name, "1", "ok", "ann")
        assert event.trace_id == body["trace_id"] and event.outputs == body["outputs"]
    finally:
        reader.close()

    # Not rated, and (at the default sample of 1 %) not sampled: its trace id is reserved, not written.
    assert gateway.app.state.gateway.tracer.flush(30)  # type: ignore[attr-defined]
    mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
    traces = mlflow.search_traces(
        locations=[e.experiment_id for e in mlflow.search_experiments()],
        filter_string=f"tags.`flywheel.request_id` = '{body['request_id']}'",
        return_type="list",
    )
    assert len(traces) == (1 if sampled(body["request_id"], 0.01) else 0)


def test_bad_inputs_are_422_naming_the_field(
    gateway: TestClient, wine_model: tuple[str, dict[str, float]], resolution: Resolution
) -> None:
    name, _ = wine_model
    resolution.move(name, "champion", "1")
    url = f"/v1/models/{name}/predict"
    missing = {k: v for k, v in record().items() if k != "alcohol"}
    resp = gateway.post(url, json={"inputs": missing})
    assert resp.status_code == 422 and resp.json()["detail"]["field"] == "inputs.alcohol", resp.text
    wrong = [record(0), {**record(1), "ash": "lots"}]
    resp = gateway.post(url, json={"inputs": wrong})
    assert resp.status_code == 422 and resp.json()["detail"]["field"] == "inputs[1].ash", resp.text
    resp = gateway.post(url, json={"params": {}})
    assert resp.status_code == 422 and "inputs" in resp.text
    resp = gateway.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422
    resp = gateway.post(url, json={"inputs": [1, 2]})
    assert resp.status_code == 422 and resp.json()["detail"]["field"] == "inputs[0]"


def test_unknown_model_or_alias_is_404(gateway: TestClient, wine_model: tuple[str, dict[str, float]]) -> None:
    name, _ = wine_model
    assert gateway.post("/v1/models/no_such_model/predict", json={"inputs": record()}).status_code == 404
    resp = gateway.post(f"/v1/models/{name}/predict?alias=nope", json={"inputs": record()})
    assert resp.status_code == 404 and "nope" in resp.text
    assert gateway.post(f"/v1/models/{name}/predict?version=99", json={"inputs": record()}).status_code == 404
    assert gateway.get("/v1/models/no_such_model").status_code == 404


def test_reload_notice_swaps_version_and_failed_load_keeps_old(
    gateway: TestClient, v1_served: str, resolution: Resolution
) -> None:
    name = v1_served
    resolution.move(name, "champion", "2")
    assert wait_for_version(gateway, name, "2") < 5
    # A version that cannot be loaded: the replica keeps serving 2 and reports the failure.
    resolution.move(name, "champion", "99")
    deadline = time.time() + 10
    status: dict = {}
    while time.time() < deadline:
        status = gateway.get(f"/v1/models/{name}").json()
        if status["reload_errors"].get("champion"):
            break
        time.sleep(0.1)
    assert "99" in status["reload_errors"]["champion"], status
    assert status["aliases"]["champion"] == "2"
    resp = gateway.post(f"/v1/models/{name}/predict", json={"inputs": record()})
    assert resp.status_code == 200 and resp.json()["version"] == "2"
    metrics = gateway.get("/metrics").text
    assert f'flywheel_gateway_reloads_total{{model="{name}",outcome="failed"}}' in metrics
    # Back to a loadable version: converges again.
    serve(gateway, resolution, name, "1")
    assert gateway.get(f"/v1/models/{name}").json()["reload_errors"] == {}


def test_missed_notice_is_caught_by_reconciliation(
    gateway: TestClient, v1_served: str, resolution: Resolution
) -> None:
    name = v1_served
    resolution.move(name, "champion", "2", notify=False)
    assert wait_for_version(gateway, name, "2", timeout_s=10) > 0.0
    info = gateway.get(f"/v1/models/{name}").json()
    assert info["aliases"] == {"champion": "2"} and info["cache"]["loads"] >= 2


def test_feedback_recorded_on_trace_and_published_once(
    gateway: TestClient, v2_served: str, stack: Endpoints
) -> None:
    from events import FEEDBACK_RECORDED, FeedbackRecorded

    name = v2_served
    served = gateway.post(f"/v1/models/{name}/predict", json={"inputs": record(3), "user_id": "bob"}).json()
    reader = TopicReader(stack, FEEDBACK_RECORDED)
    try:
        body = {
            "request_id": served["request_id"],
            "feedback_token": served["feedback_token"],
            "rating": "thumbs_down",
            "corrected_output": 1,
            "comment": "wrong class",
            "user_id": "bob",
        }
        first = gateway.post("/v1/feedback", json=body)
        assert first.status_code == 202, first.text
        again = gateway.post("/v1/feedback", json={**body, "rating": "thumbs_up"})
        assert again.status_code == 202 and again.json() == {
            "feedback_id": first.json()["feedback_id"],
            "duplicate": True,
        }
        carol = gateway.post(  # another user cannot use bob's token
            "/v1/feedback",
            json={
                "trace_id": served["trace_id"],
                "feedback_token": served["feedback_token"],
                "rating": "thumbs_up",
                "user_id": "carol",
            },
        )
        assert carol.status_code == 401 and "feedback_token invalid" in carol.text
        by_trace = gateway.post(
            "/v1/feedback",
            json={
                "trace_id": served["trace_id"],
                "feedback_token": served["feedback_token"],
                "user_id": "bob",
            }
            | {"rating": "thumbs_up"},
        )
        assert by_trace.status_code == 202 and by_trace.json()["duplicate"] is True
        events = reader.wait_for(
            lambda e: isinstance(e, FeedbackRecorded) and e.request_id == served["request_id"], 1
        )
        reader.settle(1.5)  # nothing for the repeat by trace id, nothing for carol
        events = reader.events(
            lambda e: isinstance(e, FeedbackRecorded) and e.request_id == served["request_id"]
        )
    finally:
        reader.close()
    assert len(events) == 1, events
    bob = next(e for e in events if isinstance(e, FeedbackRecorded) and e.user_id == "bob")
    assert isinstance(bob, FeedbackRecorded)
    assert (bob.model, bob.version, bob.rating.value, bob.corrected_output) == (name, "2", "thumbs_down", 1)
    assert bob.inputs == record(3) and bob.outputs == served["outputs"] and bob.trace_id == served["trace_id"]

    # The assessments follow in the background, as soon as the trace is stored in MLflow.
    deadline = time.time() + 60
    names: set[str] = set()
    while time.time() < deadline and not {"user_rating", "corrected_output", "comment"} <= names:
        trace = mlflow.get_trace(served["trace_id"])
        names = {a.name for a in trace.info.assessments} if trace is not None else set()
        time.sleep(0.5)
    assert {"user_rating", "corrected_output", "comment"} <= names, names


def test_feedback_rejects_unknown_requests_and_bad_fields(gateway: TestClient) -> None:
    unknown = gateway.post("/v1/feedback", json={"request_id": uuid.uuid4().hex, "rating": "thumbs_up"})
    assert unknown.status_code == 401 and "feedback_token missing" in unknown.text  # checked first
    # A valid token of the first form vouches for a served prediction: not in the log (yet) is 503, not 404.
    rid, expiry = uuid.uuid4().hex, int(time.time()) + 60
    mac = hmac.new(FEEDBACK_SECRET.encode(), f"v1|{rid}|3:ann|{expiry}".encode(), hashlib.sha256).digest()
    v1 = f"v1.{expiry}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"
    vouched = gateway.post(
        "/v1/feedback",
        json={"request_id": rid, "feedback_token": v1, "user_id": "ann", "rating": "thumbs_up"},
    )
    assert vouched.status_code == 503 and vouched.headers["retry-after"] == "1", vouched.text
    malformed = gateway.post("/v1/feedback", json={"request_id": "nope-1", "rating": "thumbs_up"})
    assert malformed.status_code == 422 and malformed.json()["field"] == "request_id"
    bad = gateway.post("/v1/feedback", json={"request_id": uuid.uuid4().hex, "rating": "great"})
    assert bad.status_code == 422 and bad.json()["field"] == "rating"
    neither = gateway.post("/v1/feedback", json={"rating": "thumbs_up"})
    assert neither.status_code == 422 and "request_id or trace_id" in neither.text
    long = gateway.post(
        "/v1/feedback", json={"request_id": uuid.uuid4().hex, "rating": "thumbs_up", "comment": "a" * 5000}
    )
    assert long.status_code == 422 and "comment" in long.text
    huge = gateway.post(
        "/v1/feedback",
        json={"request_id": uuid.uuid4().hex, "rating": "thumbs_up", "corrected_output": "a" * 20000},
    )
    assert huge.status_code == 422 and "corrected_output" in huge.text


def test_export_dataset_from_traces_prefers_corrections(
    gateway: TestClient, v1_served: str, stack: Endpoints, tmp_path: Path
) -> None:
    import json as jsonlib

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from services.cli.main import app

    name = v1_served
    user = unique("exporter")
    served = [
        gateway.post(f"/v1/models/{name}/predict", json={"inputs": record(i), "user_id": user}).json()
        for i in range(4)
    ]
    ratings = [
        {"rating": "thumbs_up"},
        {"rating": "thumbs_down", "corrected_output": 2},
        {"rating": "thumbs_down"},  # no correction: not a usable example
        {"rating": "thumbs_up", "corrected_output": 0},
    ]
    for s, r in zip(served, ratings, strict=True):
        assert (
            gateway.post(
                "/v1/feedback",
                json={
                    "request_id": s["request_id"],
                    "feedback_token": s["feedback_token"],
                    "user_id": user,
                    **r,
                },
            ).status_code
            == 202
        )
    ours = {s["request_id"] for s in served}

    def rated(trace_id: str) -> bool:
        trace = mlflow.get_trace(trace_id)
        return trace is not None and any(a.name == "user_rating" for a in trace.info.assessments)

    deadline = time.time() + 60  # assessments are attached in the background once traces are stored
    while time.time() < deadline and not all(rated(s["trace_id"]) for s in served):
        time.sleep(0.5)
    runner = CliRunner()
    out = tmp_path / "all.jsonl"
    result = runner.invoke(
        app,
        [
            "export-dataset",
            "--model",
            name,
            "--format",
            "jsonl",
            "--output",
            str(out),
            "--tracking-uri",
            stack.mlflow_tracking_uri,
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {
        r["request_id"]: r
        for r in map(jsonlib.loads, out.read_text().splitlines())
        if r["request_id"] in ours
    }
    assert set(rows) == {served[0]["request_id"], served[1]["request_id"], served[3]["request_id"]}
    # inputs and output are JSON text in every format (one schema for csv, jsonl and parquet)
    corrected = rows[served[1]["request_id"]]
    assert jsonlib.loads(corrected["output"]) == 2 and corrected["source"] == "corrected"
    assert jsonlib.loads(rows[served[3]["request_id"]]["output"]) == 0
    assert jsonlib.loads(rows[served[0]["request_id"]]["output"]) == served[0]["outputs"]
    assert jsonlib.loads(rows[served[0]["request_id"]]["inputs"]) == record(0)
    # streamed in trace time order (datasets written by feedback aggregation put corrections first)
    order = [
        r["request_id"] for r in map(jsonlib.loads, out.read_text().splitlines()) if r["request_id"] in ours
    ]
    assert order == [s["request_id"] for s in served if s["request_id"] in rows]

    pq_out = tmp_path / "up.parquet"
    result = runner.invoke(
        app,
        [
            "export-dataset",
            "--model",
            name,
            "--rating",
            "thumbs_up",
            "--format",
            "parquet",
            "--output",
            str(pq_out),
            "--tracking-uri",
            stack.mlflow_tracking_uri,
        ],
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(pq_out).to_pylist()
    assert {r["request_id"] for r in table} & ours == {served[0]["request_id"], served[3]["request_id"]}
    bad = runner.invoke(app, ["export-dataset", "--model", name, "--format", "xml", "--tracking-uri", "x"])
    assert bad.exit_code != 0 and "--format" in bad.output


def test_feedback_cannot_be_forged_and_nothing_is_published_for_a_refused_one(
    gateway: TestClient, v2_served: str, stack: Endpoints
) -> None:
    from events import FEEDBACK_RECORDED

    name = v2_served
    user = unique("dave")
    served = gateway.post(f"/v1/models/{name}/predict", json={"inputs": record(5), "user_id": user}).json()
    other = gateway.post(f"/v1/models/{name}/predict", json={"inputs": record(6), "user_id": user}).json()
    base = {"request_id": served["request_id"], "user_id": user, "rating": "thumbs_down"}
    reader = TopicReader(stack, FEEDBACK_RECORDED)
    try:
        refused = {
            "no token": gateway.post("/v1/feedback", json=base),
            "another prediction's token": gateway.post(
                "/v1/feedback", json={**base, "feedback_token": other["feedback_token"]}
            ),
            "a forged token": gateway.post(
                "/v1/feedback", json={**base, "feedback_token": "v1.9999999999.AAAA"}
            ),
            "a correction the model cannot output": gateway.post(
                "/v1/feedback",
                json={**base, "feedback_token": served["feedback_token"], "corrected_output": "class b"},
            ),
            "a correction of two labels": gateway.post(
                "/v1/feedback",
                json={**base, "feedback_token": served["feedback_token"], "corrected_output": [1, 2]},
            ),
        }
        assert {k: r.status_code for k, r in refused.items()} == {
            "no token": 401,
            "another prediction's token": 401,
            "a forged token": 401,
            "a correction the model cannot output": 422,
            "a correction of two labels": 422,
        }
        assert refused["a correction the model cannot output"].json()["detail"]["field"] == "corrected_output"
        reader.settle(1.5)
        assert reader.events(lambda e: getattr(e, "request_id", None) == served["request_id"]) == []
    finally:
        reader.close()
    ok = gateway.post(
        "/v1/feedback", json={**base, "feedback_token": served["feedback_token"], "corrected_output": 1}
    )
    assert ok.status_code == 202, ok.text


def test_feedback_is_rate_limited_per_user(gateway: TestClient, v2_served: str) -> None:
    name = v2_served
    user = unique("eve")
    statuses = []
    for i in range(7):  # the fixture allows 5 ratings per user and minute
        served = gateway.post(
            f"/v1/models/{name}/predict", json={"inputs": record(i), "user_id": user}
        ).json()
        statuses.append(
            gateway.post(
                "/v1/feedback",
                json={
                    "request_id": served["request_id"],
                    "feedback_token": served["feedback_token"],
                    "user_id": user,
                    "rating": "thumbs_up",
                },
            ).status_code
        )
    # a minute boundary inside the loop can reset the window once; at most 5 per window pass
    assert statuses.count(202) in (5, 6, 7) and statuses[:5] == [202] * 5
    if statuses.count(202) == 5:
        assert statuses[5:] == [429, 429]


def test_open_feedback_on_a_request_nobody_served_is_404(stack: Endpoints, stack_env: dict[str, str]) -> None:
    prefix = unique("gwopen")
    settings = settings_on(stack, GatewaySettings, prefix, replica_id=f"test-{prefix}", feedback_open=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        unknown = client.post("/v1/feedback", json={"request_id": uuid.uuid4().hex, "rating": "thumbs_up"})
    assert unknown.status_code == 404 and "request_id" in unknown.text
