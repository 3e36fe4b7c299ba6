"""The console's read side over real Redis and Kafka: a replica's heartbeat and how the fleet forgets it,
and the read API's answers (ledger from the topics, feedback summary, errors that name the field)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from events import DatasetFile, DatasetPublished, GateOutcome, RetrainingFinished, RetrainingRequested
from services.cli.devstack.stack import Endpoints
from services.gateway.adapters.fleet_heartbeat import FleetHeartbeat
from services.gateway.adapters.model_loader import LoadedModel
from services.gateway.domain.model_manager import ModelManager, ModelRef
from services.gateway.domain.serving_table import ServingTable
from services.gateway.reloader import Reloader
from services.shared.console.api import console_router
from services.shared.fleet import FLEET_TTL_S, read_fleet
from services.shared.kafka.publisher import KafkaPublisher, Record
from services.shared.redis_store import RedisKeys, async_redis
from services.shared.settings import FlywheelSettings
from tests.support import unique


def _loaded(ref: ModelRef) -> LoadedModel:
    if ref.version == "9":
        raise RuntimeError("artifact missing")
    return LoadedModel(
        name=ref.name, version=str(ref.version), flavour="t", predict=lambda r, p: r, input_fields=None
    )


async def test_a_replica_reports_what_it_serves_and_leaves_the_fleet_when_it_stops(
    stack: Endpoints, keys: RedisKeys, redis_client: redis.Redis
) -> None:
    table = ServingTable()
    reloader = Reloader(table, ModelManager(_loaded), retry_initial_s=0.05)
    started = asyncio.Event()
    aredis = async_redis(stack.redis_url)
    beat = FleetHeartbeat(aredis, keys, "g1", "http://g1:8080", table, reloader, started)
    await reloader.ensure("m", "champion", "1")
    await reloader.ensure("m", "champion", "2")
    reloader.want("m", "challenger", "9")  # fails to load: nothing served, the error is reported
    await asyncio.sleep(0.2)
    started.set()
    await beat.beat()

    [replica] = read_fleet(redis_client, keys)
    assert (replica.replica, replica.url, replica.ready) == ("g1", "http://g1:8080", True)
    assert replica.version_of("m", "champion") == "2" and replica.version_of("m", "challenger") is None
    assert replica.last_swap is not None and (
        replica.last_swap.previous_version,
        replica.last_swap.version,
    ) == (
        "1",
        "2",
    )
    assert replica.swaps == 2 and replica.failed_loads >= 1
    [error] = replica.reload_errors
    assert (error.alias, error.wanted_version) == ("challenger", "9") and "artifact missing" in error.message

    # A replica that stopped reporting drops out after the time to live; a clean stop leaves at once.
    redis_client.zadd(keys.fleet_replicas(), {"lost": time.time() - FLEET_TTL_S - 1})
    redis_client.set(keys.fleet_replica("garbled"), "{not json")
    redis_client.zadd(keys.fleet_replicas(), {"garbled": time.time()})
    assert [r.replica for r in read_fleet(redis_client, keys)] == ["g1"]
    assert redis_client.zscore(keys.fleet_replicas(), "lost") is None
    await beat.stop()
    assert [r.replica for r in read_fleet(redis_client, keys)] == []
    await reloader.close()
    await aredis.aclose()


@pytest.fixture()
def api(stack: Endpoints, keys: RedisKeys) -> Iterator[TestClient]:
    settings = FlywheelSettings(
        mlflow_tracking_uri=stack.mlflow_tracking_uri,
        kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
        kafka_profile=stack.kafka_profile,
        redis_url=stack.redis_url,
        redis_prefix=keys.prefix,
    )
    app = FastAPI()
    app.include_router(console_router(settings))
    with TestClient(app) as client:
        yield client


def test_read_api_serves_the_ledger_from_the_topics_and_names_bad_fields(
    api: TestClient, publisher: KafkaPublisher, keys: RedisKeys, redis_client: redis.Redis
) -> None:
    model = unique("console")
    run = "f" * 32
    requests = [RetrainingRequested(producer="t", model=model, reason="manual") for _ in range(3)]
    finished = RetrainingFinished(
        producer="t", model=model, request_event_id=requests[0].event_id, outcome="challenger", version="2",
        run_id=run, gates=[GateOutcome(name="accuracy", passed=True, value=0.97, threshold=0.9)],
    )  # fmt: skip
    dataset = DatasetPublished(
        producer="t", model=model, dataset_name="d", dataset_version=1, run_id=run, manifest_sha256="e" * 64,
        artifact_uri=f"mlflow-artifacts:/3/{run}/artifacts/d", rows=5, corrected_rows=2,
        files=[DatasetFile(path="d.jsonl", format="jsonl", sha256="a" * 64, size_bytes=10, rows=5)],
    )  # fmt: skip
    publisher.publish_sync([Record.of(e) for e in (*requests, finished, dataset)])

    page = api.get(f"/v1/models/{model}/retraining", params={"limit": 2}).json()
    assert (page["total"], page["next_offset"], len(page["items"])) == (3, 2, 2)
    rest = api.get(f"/v1/models/{model}/retraining", params={"offset": 2, "limit": 2}).json()
    runs = page["items"] + rest["items"]
    assert rest["next_offset"] is None and {r["request_event_id"] for r in runs} == {
        r.event_id for r in requests
    }
    done = next(r for r in runs if r["outcome"] == "challenger")
    assert done["version"] == "2" and done["gates"][0]["value"] == 0.97
    assert done["run_url"] is None  # MLflow has no such run: no link rather than a broken one
    [version] = api.get(f"/v1/models/{model}/datasets").json()["items"]
    assert (version["rows"], version["corrected_rows"], version["files"][0]["path"]) == (5, 2, "d.jsonl")
    assert version["run_url"].endswith(f"/#/experiments/3/runs/{run}")

    assert api.get(f"/v1/models/{model}/feedback").status_code == 404  # nothing aggregated yet
    windows = [{"start": f"2026-11-30T{h}:00:00Z"} for h in (11, 12)]
    summary = {
        "model": model, "updated_at": "2026-11-30T12:00:00Z", "applied_events": 4, "window_s": 60,
        "totals": {"inferences": 4}, "trigger": {},
        "versions": {
            "1": {"totals": {"inferences": 3}, "windows": windows},
            "2": {"totals": {"inferences": 1}, "windows": []},
        },
    }  # fmt: skip
    redis_client.set(keys.feedback_summary(model), json.dumps(summary))
    narrowed = api.get(
        f"/v1/models/{model}/feedback", params={"version": "1", "since": "2026-11-30T11:30:00+00:00"}
    ).json()
    assert list(narrowed["versions"]) == ["1"] and len(narrowed["versions"]["1"]["windows"]) == 1

    naive = api.get(f"/v1/models/{model}/feedback", params={"since": "2026-11-30T11:30:00"})
    assert naive.status_code == 422 and "since" in naive.text
    assert api.get(f"/v1/models/{model}/datasets", params={"limit": 0}).status_code == 422
    assert api.get(f"/v1/models/{model}/feedback", params={"version": "v1"}).status_code == 422
    status = api.get("/v1/status").json()
    found = next(m for m in status["models"] if m["model"] == model)
    assert found["latest_dataset"]["dataset_version"] == 1 and found["latest_retraining"] is not None
    assert status["ledger_error"] is None
