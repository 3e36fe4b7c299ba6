"""The MLflow traces an in-process gateway writes, through the export process, on a real MLflow server.

With every prediction sampled (`trace_sample=1`), each one's trace is stored under the id its response
returned and carries the request id (as `client_request_id` and metadata), model, version and variant
metadata, the inputs and outputs, and the original timing; it can be found with `search_traces` on the
request id and feedback can be logged on it. A failed prediction's trace is written whatever the sample,
with status ERROR and the exception. (Rated predictions: `tests/e2e/test_rated_traces.py`.)
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.entities import AssessmentSource, AssessmentSourceType, Trace

from services.cli.devstack.sample_models import wine_data
from services.cli.devstack.stack import Endpoints
from services.gateway.adapters.trace_export import TRACE_EXPORTS
from services.gateway.adapters.tracing import PredictionTracer
from services.gateway.bootstrap import create_app
from services.gateway.settings import GatewaySettings
from tests.support import settings_on, unique

pytestmark = pytest.mark.integration


def record(i: int) -> dict[str, float]:
    row = wine_data().test_x.iloc[i]
    return {k: float(v) for k, v in row.items()}


def exported() -> float:
    return TRACE_EXPORTS.labels("exported")._value.get()


def failed() -> float:
    return TRACE_EXPORTS.labels("failed")._value.get() + TRACE_EXPORTS.labels("dropped")._value.get()


def by_request_id(request_id: str) -> list[Trace]:
    """The traces with this request id, in every experiment (the gateway sets no active experiment)."""
    traces: list[Trace] = mlflow.search_traces(
        locations=[e.experiment_id for e in mlflow.search_experiments()],
        filter_string=f"tags.`flywheel.request_id` = '{request_id}'",
        return_type="list",
    )
    return traces


def wait_for(request_id: str, timeout_s: float) -> tuple[list[Trace], float]:
    started = time.monotonic()
    while True:
        traces = by_request_id(request_id)
        if traces or time.monotonic() - started > timeout_s:
            return traces, time.monotonic() - started
        time.sleep(0.05)


@pytest.fixture()
def served(
    stack: Endpoints, stack_env: dict[str, str], wine_model: tuple[str, dict[str, float]]
) -> Iterator[tuple[TestClient, PredictionTracer, str, str]]:
    name, _ = wine_model
    alias = unique("traced")  # an alias of its own: other tests move champion/challenger
    MlflowClient(stack.mlflow_tracking_uri).set_registered_model_alias(name, alias, "2")
    prefix = unique("gwt")
    settings = settings_on(
        stack,
        GatewaySettings,
        prefix,
        replica_id=f"test-{prefix}",
        trace_experiment=unique("tests/traces"),
        trace_sample=1.0,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        tracer: PredictionTracer = client.app.state.gateway.tracer  # type: ignore[attr-defined]
        try:
            yield client, tracer, name, alias
        finally:
            tracer.close()


def test_every_sampled_prediction_has_its_trace_in_mlflow(
    served: tuple[TestClient, PredictionTracer, str, str], stack: Endpoints
) -> None:
    client, tracer, name, alias = served
    mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
    exported_before, failed_before = exported(), failed()

    # Visible shortly after the response, without any flush.
    first = client.post(f"/v1/models/{name}/predict", params={"alias": alias}, json={"inputs": record(0)})
    assert first.status_code == 200, first.text
    traces, waited = wait_for(first.json()["request_id"], timeout_s=10)
    assert traces and traces[0].info.trace_id == first.json()["trace_id"]
    assert waited < 5, f"trace took {waited:.1f}s to appear"

    sent: list[dict[str, Any]] = []
    window_ms = (time.time() * 1000, 0.0)
    for i in range(24):
        if i % 3 == 0:
            resp = client.post(
                f"/v1/models/{name}/predict", params={"version": "1"}, json={"inputs": record(i)}
            )
        else:
            resp = client.post(
                f"/v1/models/{name}/predict",
                params={"alias": alias},
                json={"inputs": record(i), "user_id": f"user-{i}"},
            )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["trace_id"] and body["trace_id"].startswith("tr-")
        sent.append({**body, "inputs": record(i), "user_id": None if i % 3 == 0 else f"user-{i}"})
    assert len({b["trace_id"] for b in sent}) == len(sent)
    window_ms = (window_ms[0], time.time() * 1000)

    # Shutdown writes everything that is still queued.
    tracer.close()
    assert tracer._channel.pending() == 0
    assert exported() - exported_before == len(sent) + 1
    assert failed() == failed_before

    for body in sent:
        traces = by_request_id(body["request_id"])
        assert len(traces) == 1, body
        trace = traces[0]
        info = trace.info
        assert info.trace_id == body["trace_id"]
        assert info.state.value == "OK"
        facts = info.tags  # sampled: written as spans alone, the facts are the trace's tags
        assert facts["flywheel.request_id"] == body["request_id"]
        assert (facts["flywheel.model"], facts["flywheel.version"]) == (name, body["version"])
        assert facts["flywheel.variant"] == body["variant"]
        assert facts["flywheel.alias"] == (body["alias"] or "")
        assert facts["flywheel.replica"].startswith("test-")
        assert facts["mlflow.traceName"] == f"predict {name}"
        if body["user_id"]:
            assert info.trace_metadata["mlflow.trace.user"] == body["user_id"]
        assert window_ms[0] - 1 <= info.request_time <= window_ms[1]  # when it was served
        assert info.execution_duration is not None and 0 <= info.execution_duration < 5000
        (root,) = trace.data.spans
        assert root.name == f"predict {name}"
        assert root.start_time_ns // 1_000_000 == info.request_time
        assert root.inputs == body["inputs"]
        assert root.outputs == body["outputs"]
        assert root.attributes["version"] == body["version"]

    target = sent[-1]["trace_id"]
    mlflow.log_feedback(
        trace_id=target,
        name="user_satisfaction",
        value=True,
        source=AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id="user-23"),
        rationale="right answer",
    )
    assessments = mlflow.get_trace(target).info.assessments
    assert [(a.name, a.value) for a in assessments] == [("user_satisfaction", True)]


def test_a_dead_export_process_is_replaced(
    served: tuple[TestClient, PredictionTracer, str, str], stack: Endpoints
) -> None:
    client, tracer, name, alias = served
    mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
    url = f"/v1/models/{name}/predict"
    assert client.post(url, params={"alias": alias}, json={"inputs": record(1)}).status_code == 200
    assert tracer.flush(30)
    child = tracer._channel._child
    assert child is not None
    os.kill(child.proc.pid, signal.SIGKILL)
    child.proc.wait(10)
    time.sleep(5.1)  # restarts are at most every 5 s

    resp = client.post(url, params={"alias": alias}, json={"inputs": record(2)})
    assert resp.status_code == 200 and resp.json()["trace_id"]
    assert tracer.flush(60)
    traces = by_request_id(resp.json()["request_id"])
    assert [t.info.trace_id for t in traces] == [resp.json()["trace_id"]]


def test_a_failed_prediction_is_traced_whatever_the_sample(
    served: tuple[TestClient, PredictionTracer, str, str], stack: Endpoints
) -> None:
    from services.cli.devstack.sample_models import register_broken_version

    client, tracer, name, _ = served
    tracer.sample = 0.0  # nothing sampled: only the error is written
    version, _ = register_broken_version(stack.mlflow_tracking_uri, name, experiment="tests/wine")
    mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
    url = f"/v1/models/{name}/predict"
    bad = client.post(url, params={"version": version}, json={"inputs": {**record(0), "alcohol": 14.5}})
    good = client.post(url, params={"version": version}, json={"inputs": {**record(0), "alcohol": 12.0}})
    assert bad.status_code == 502 and good.status_code == 200, (bad.text, good.text)
    assert tracer.flush(60)
    failed_trace = mlflow.get_trace(bad.json()["detail"]["trace_id"])
    assert failed_trace is not None
    assert failed_trace.info.state.value == "ERROR"
    # A failure is linked: its info carries the facts as metadata too, and the request id.
    assert failed_trace.info.trace_metadata["flywheel.request_id"] == bad.json()["detail"]["request_id"]
    assert failed_trace.info.client_request_id == bad.json()["detail"]["request_id"]
    assert failed_trace.info.tags["flywheel.model"] == failed_trace.info.trace_metadata["flywheel.model"]
    (root,) = failed_trace.data.spans
    assert root.status.status_code.value == "ERROR" and "broken model" in root.status.description
    assert [e.name for e in root.events] == ["exception"]
    assert by_request_id(good.json()["request_id"]) == []  # not sampled, not rated: not written
