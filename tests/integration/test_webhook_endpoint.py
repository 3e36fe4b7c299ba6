"""The webhook endpoint in-process, against real Redis and the real broker: statuses and what is published."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from events import AliasChanged
from services.cli.devstack.process import free_port
from services.cli.devstack.stack import Endpoints
from services.registry_watcher.bootstrap import create_app
from services.registry_watcher.settings import WatcherSettings
from tests.support import TopicReader, alias_payload, settings_on, signed_headers, unique

SECRET = "webhook-secret-for-tests"
pytestmark = pytest.mark.integration


def settings_for(stack: Endpoints, prefix: str, **overrides: object) -> WatcherSettings:
    values: dict[str, object] = {"webhook_secret": SECRET, "poll_interval_s": 0, "publish_timeout_s": 3}
    return settings_on(stack, WatcherSettings, prefix, **(values | overrides))


@pytest.fixture()
def client(stack: Endpoints) -> Iterator[TestClient]:
    app = create_app(settings_for(stack, unique("t")), background=False)
    with TestClient(app) as c:
        yield c


def post(client: TestClient, body: bytes, **kw: object) -> object:
    return client.post("/webhooks/mlflow", content=body, headers=signed_headers(SECRET, body, **kw))  # type: ignore[arg-type]


def of_model(model: str):  # type: ignore[no-untyped-def]
    return lambda e: isinstance(e, AliasChanged) and e.model == model


def test_set_move_delete_publish_one_event_each_with_previous_versions(
    client: TestClient, alias_topic: TopicReader
) -> None:
    model = unique("m")
    for version in ("1", "2", None):
        resp = post(client, alias_payload(model, "champion", version))
        assert resp.status_code == 200, resp.text  # type: ignore[attr-defined]
        assert resp.json()["status"] == "published"  # type: ignore[attr-defined]
    events = alias_topic.wait_for(of_model(model), 3)
    assert [(e.version, e.previous_version, e.action.value, e.source.value) for e in events] == [  # type: ignore[attr-defined]
        ("1", None, "set", "webhook"),
        ("2", "1", "set", "webhook"),
        (None, "2", "deleted", "webhook"),
    ]
    assert all(key == model.encode() for key, e, _ in alias_topic.seen if e in events)


def test_repeated_delivery_and_repeated_state_publish_nothing_more(
    client: TestClient, alias_topic: TopicReader
) -> None:
    model = unique("m")
    body = alias_payload(model, "champion", "1")
    headers = signed_headers(SECRET, body)
    assert client.post("/webhooks/mlflow", content=body, headers=headers).json()["status"] == "published"
    again = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["status"] == "duplicate_delivery"
    # A new delivery that says what the state already says is not a change either.
    assert post(client, body).json()["status"] == "unchanged"  # type: ignore[attr-defined]
    alias_topic.settle(1.0)
    assert len(alias_topic.events(of_model(model))) == 1


def test_a_retried_delivery_the_state_has_moved_past_publishes_nothing(
    client: TestClient, alias_topic: TopicReader
) -> None:
    """MLflow retries a delivery with its original body (and time) when the first attempt failed, e.g.
    while Kafka elected a new leader; meanwhile the alias moved on (another delivery or the poller).
    The retry must not flip the alias back."""
    model = unique("m")
    now = time.time()
    assert post(client, alias_payload(model, "champion", "2", at=now - 3)).json()["status"] == "published"  # type: ignore[attr-defined]
    assert post(client, alias_payload(model, "champion", "1", at=now - 2)).json()["status"] == "published"  # type: ignore[attr-defined]
    retried = post(client, alias_payload(model, "champion", "2", at=now - 3))
    assert retried.status_code == 200 and retried.json()["status"] == "unchanged"  # type: ignore[attr-defined]
    # The same for a deletion: an older "set" does not resurrect the alias.
    assert post(client, alias_payload(model, "champion", None, at=now - 1)).json()["status"] == "published"  # type: ignore[attr-defined]
    assert post(client, alias_payload(model, "champion", "1", at=now - 2)).json()["status"] == "unchanged"  # type: ignore[attr-defined]
    # A newer change is published as usual; a payload time from the future is not trusted for ordering.
    assert post(client, alias_payload(model, "champion", "3", at=now + 3600)).json()["status"] == "published"  # type: ignore[attr-defined]
    assert post(client, alias_payload(model, "champion", "4")).json()["status"] == "published"  # type: ignore[attr-defined]
    alias_topic.wait_for(of_model(model), 5)
    alias_topic.settle(1.0)
    events = alias_topic.events(of_model(model))
    assert [(e.version, e.previous_version) for e in events] == [  # type: ignore[attr-defined]
        ("2", None),
        ("1", "2"),
        (None, "1"),
        ("3", None),
        ("4", "3"),
    ]


@pytest.mark.parametrize(
    ("mutate", "status", "error"),
    [
        (lambda h, b: h.pop("X-MLflow-Signature"), 401, "missing_signature"),
        (lambda h, b: h.__setitem__("X-MLflow-Signature", "v1,Zm9yZ2Vk"), 401, "bad_signature"),
        (lambda h, b: h.__setitem__("X-MLflow-Delivery-Id", "other"), 401, "bad_signature"),
        (lambda h, b: h.pop("X-MLflow-Timestamp"), 401, "missing_timestamp"),
    ],
)
def test_forged_requests_are_refused_and_publish_nothing(
    client: TestClient,
    alias_topic: TopicReader,
    mutate,
    status: int,
    error: str,  # type: ignore[no-untyped-def]
) -> None:
    model = unique("forged")
    body = alias_payload(model, "champion", "1")
    headers = signed_headers(SECRET, body)
    mutate(headers, body)
    resp = client.post("/webhooks/mlflow", content=body, headers=headers)
    assert (resp.status_code, resp.json()["error"]) == (status, error)
    alias_topic.settle(0.5)
    assert alias_topic.events(of_model(model)) == []


def test_stale_timestamp_is_refused(client: TestClient, alias_topic: TopicReader) -> None:
    model = unique("stale")
    body = alias_payload(model, "champion", "1")
    resp = post(client, body, ts=int(time.time()) - 301)
    assert resp.status_code == 401 and resp.json()["error"] == "stale_timestamp"  # type: ignore[attr-defined]
    alias_topic.settle(0.5)
    assert alias_topic.events(of_model(model)) == []


def test_malformed_bodies_get_400_or_422_naming_the_problem(client: TestClient) -> None:
    resp = post(client, b"{not json")
    assert resp.status_code == 400 and resp.json()["error"] == "malformed_json"  # type: ignore[attr-defined]
    body = json.dumps(
        {"entity": "model_version_alias", "action": "created", "data": {"name": "m", "alias": "a"}}
    ).encode()
    resp = post(client, body)
    assert resp.status_code == 422 and resp.json()["field"] == "data.version"  # type: ignore[attr-defined]


def test_body_over_one_mebibyte_is_413(client: TestClient) -> None:
    body = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    resp = post(client, body)
    assert resp.status_code == 413  # type: ignore[attr-defined]


def test_other_registry_events_are_acknowledged_and_counted(client: TestClient) -> None:
    body = json.dumps(
        {"entity": "model_version", "action": "created", "data": {"name": "m", "version": "1"}}
    ).encode()
    resp = post(client, body)
    assert resp.status_code == 200 and resp.json() == {"status": "ignored", "event": "model_version.created"}  # type: ignore[attr-defined]
    metrics = client.get("/metrics").text
    assert 'flywheel_watcher_webhooks_ignored_total{kind="model_version.created"}' in metrics


def test_unreachable_kafka_is_503_and_the_event_is_published_once_kafka_is_back(
    stack: Endpoints, alias_topic: TopicReader
) -> None:
    prefix, model = unique("t"), unique("m")
    body = alias_payload(model, "champion", "5")
    headers = signed_headers(SECRET, body)
    dead = settings_for(
        stack, prefix, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", publish_timeout_s=1
    )
    with TestClient(create_app(dead, background=False)) as down:
        resp = down.post("/webhooks/mlflow", content=body, headers=headers)
        assert resp.status_code == 503 and resp.headers["Retry-After"]
        assert down.get("/readyz").status_code == 503
    # MLflow retries the same delivery; by now Kafka answers again.
    with TestClient(create_app(settings_for(stack, prefix), background=False)) as up:
        resp = up.post("/webhooks/mlflow", content=body, headers=headers)
        assert resp.status_code == 200, resp.text
        assert up.get("/readyz").status_code == 200
    events = alias_topic.wait_for(of_model(model), 1)
    alias_topic.settle(0.5)
    assert [(e.version, e.previous_version) for e in alias_topic.events(of_model(model))] == [("5", None)]  # type: ignore[attr-defined]
    assert len(events) == 1


def test_without_a_configured_secret_everything_is_refused(stack: Endpoints) -> None:
    app = create_app(settings_for(stack, unique("t"), webhook_secret=None), background=False)
    with TestClient(app) as c:
        body = alias_payload("m", "champion", "1")
        assert (
            c.post("/webhooks/mlflow", content=body, headers=signed_headers(SECRET, body)).status_code == 401
        )
