"""A registry is not its namespace: a watcher whose Redis namespace holds another registry's alias state
publishes nothing (no deletions of every alias), says why, and adopts the namespace only when told to."""

from __future__ import annotations

import time

import pytest
import redis
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from events import AliasChanged
from services.cli.devstack.stack import Endpoints
from services.registry_watcher.adapters.registry_identity import registry_identity
from services.registry_watcher.bootstrap import create_app
from services.registry_watcher.settings import WatcherSettings
from tests.support import TopicReader, alias_payload, settings_on, signed_headers, unique

pytestmark = pytest.mark.integration
SECRET = "identity-secret"


def settings_for(stack: Endpoints, prefix: str, **overrides: object) -> WatcherSettings:
    values: dict[str, object] = {"webhook_secret": SECRET, "poll_interval_s": 0.2}
    return settings_on(stack, WatcherSettings, prefix, **(values | overrides))


def test_the_registry_identity_is_stable_and_shared(stack: Endpoints) -> None:
    client = MlflowClient(stack.mlflow_tracking_uri)
    assert registry_identity(client) == registry_identity(client)


def test_another_registrys_namespace_is_refused_then_adopted_only_when_told(
    stack: Endpoints, redis_client: redis.Redis, alias_topic: TopicReader
) -> None:
    prefix, model = unique("ns"), unique("m")
    client = MlflowClient(stack.mlflow_tracking_uri)
    client.create_registered_model(model)
    client.create_model_version(model, source="s3://flywheel-tests/model", run_id=None)
    client.set_registered_model_alias(model, "champion", "1")
    # What an older registry left in this namespace (the watcher's key layout is persistent data, so it is
    # spelled out here): its identity and aliases this registry lacks.
    identity_key, aliases_key = f"{prefix}:watcher:registry-id", f"{prefix}:watcher:aliases:{model}"
    redis_client.set(identity_key, "an-older-registry")
    redis_client.hset(aliases_key, mapping={"champion": "7", "challenger": "8", "__rev": "3"})
    redis_client.sadd(f"{prefix}:watcher:models", model)
    body = alias_payload(model, "champion", "1")

    with TestClient(create_app(settings_for(stack, prefix))) as refused:
        time.sleep(1.5)  # several poll intervals: a watcher that did poll would publish deletions
        resp = refused.post("/webhooks/mlflow", content=body, headers=signed_headers(SECRET, body))
        assert resp.status_code == 503 and resp.json()["error"] == "registry_refused"
        assert (
            "an-older-registry" in resp.json()["detail"]
            and "FLYWHEEL_REGISTRY_ADOPT" in resp.json()["detail"]
        )
        ready = refused.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["registry"] != "ok"
    alias_topic.settle(0.5)
    assert alias_topic.events(lambda e: isinstance(e, AliasChanged) and e.model == model) == []
    assert redis_client.hget(aliases_key, "champion") == "7"  # untouched

    with TestClient(create_app(settings_for(stack, prefix, registry_adopt=True))) as adopted:
        events = alias_topic.wait_for(lambda e: isinstance(e, AliasChanged) and e.model == model, 1, 20)
        assert adopted.get("/readyz").status_code == 200
    published = [(e.alias, e.action.value, e.version) for e in events]  # type: ignore[attr-defined]
    assert published == [("champion", "set", "1")]  # this registry's aliases as they are, no deletion
    assert redis_client.get(identity_key) == registry_identity(client)
