"""Each dependency frozen during traffic: MLflow, Redis and Kafka in turn stop answering (SIGSTOP: the
process holds its connections and says nothing — the hardest failure for a client) for `FREEZE_S` while
two gateway replicas serve steady predictions, each rated at once on the *other* replica (as a load
balancer would), retried on 503 as a correct client does.

What must hold (README "Failure modes"): every prediction answers 200, none waits past a bounded time;
every rating is accepted in the end (202, after retries); the feedback worker's counts are exact
afterwards (every prediction and every rating counted once); and the stack converges: the next alias move
reaches both replicas.

A stack of its own (MLflow, Redis, Apache Kafka, the watcher, cache invalidation, feedback aggregation, two
gateways): freezing the session's shared infrastructure would stall every other test.
"""

from __future__ import annotations

import os
import queue
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from mlflow import MlflowClient

from services.cli.devstack.sample_models import register_wine_version, wine_data
from services.cli.stack_runner import RunningService, StackRunner
from services.shared.feedback_summary import read_summary_sync
from services.shared.redis_store import RedisKeys
from tests.support import unique
from tests.support.feedback import summary_counts, wait_until

pytestmark = pytest.mark.e2e

FREEZE_S = 8.0
RECOVER_S = 4.0
PACE_S = 0.02  # one prediction every 20 ms (~50/s), half of them rated
PREDICT_BOUND_S = 2.0  # no prediction may take longer, whatever is frozen


@dataclass
class Traffic:
    """What the client saw, per phase."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)  # version -> predictions answered 200
    ratings: queue.Queue[dict[str, str] | None] = field(default_factory=queue.Queue)
    accepted: dict[str, str] = field(default_factory=dict)  # request id -> rating
    rating_attempts: int = 0
    refused: list[str] = field(default_factory=list)  # a rating answered a final 4xx


def _rate_until_accepted(traffic: Traffic) -> None:
    """The rater: each rating is sent to the other replica; 503 / timeouts are retried (Retry-After,
    capped at 2 s) until 202 — a final 4xx is a refused rating."""
    with httpx.Client(timeout=5.0) as client:
        while True:
            item = traffic.ratings.get()
            if item is None:
                return
            body = {k: v for k, v in item.items() if k != "url"}
            delay = 0.1
            while True:
                traffic.rating_attempts += 1
                try:
                    resp = client.post(f"{item['url']}/v1/feedback", json=body)
                    status = resp.status_code
                except httpx.HTTPError:
                    status, resp = 0, None
                if status == 202:
                    traffic.accepted[body["request_id"]] = body["rating"]
                    break
                if status not in (0, 503, 429):
                    traffic.refused.append(f"{status}: {resp.text[:200] if resp is not None else ''}")
                    break
                retry_after = float(resp.headers.get("Retry-After", delay)) if resp is not None else delay
                time.sleep(min(retry_after, 2.0, delay))
                delay = min(delay * 2, 2.0)


def _freeze(pid: int) -> None:
    os.killpg(pid, signal.SIGSTOP)


def _thaw(pid: int) -> None:
    os.killpg(pid, signal.SIGCONT)


@pytest.fixture()
def outage_stack(workdir: Path) -> Iterator[tuple[StackRunner, list[RunningService], str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "REDIS_URL")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    runner = StackRunner(workdir / unique("outage"), env)
    try:
        endpoints = runner.start_infrastructure()
        name = unique("outage_wine")
        for kind in ("weak", "strong"):
            register_wine_version(endpoints.mlflow_tracking_uri, name, kind, experiment="outage")
        MlflowClient(endpoints.mlflow_tracking_uri).set_registered_model_alias(name, "champion", "1")
        extra = {
            "FLYWHEEL_MODELS": name,
            "FLYWHEEL_FEEDBACK_RATE_PER_MINUTE": "0",
            "FLYWHEEL_POLL_INTERVAL_S": "2",
        }
        gateways = runner.start_hot_reload(2, extra)
        runner.start_worker("feedback-aggregation", extra)
        yield runner, gateways, name
    finally:
        runner.stop()


def test_predictions_and_ratings_survive_each_dependency_frozen(
    outage_stack: tuple[StackRunner, list[RunningService], str],
) -> None:
    runner, gateways, name = outage_stack
    assert runner.endpoints is not None
    urls = [g.url or "" for g in gateways]
    managed = runner.managed()
    parts = {
        "mlflow": managed["mlflow"].pid,
        "redis": managed["redis"].pid,
        "kafka": next(p.pid for n, p in managed.items() if n.startswith("kafka")),
    }
    schedule: list[tuple[str, float]] = [("baseline", RECOVER_S)]
    for part in parts:
        schedule += [(f"{part} frozen", FREEZE_S), (f"after {part}", RECOVER_S)]

    traffic = Traffic()
    raters = [threading.Thread(target=_rate_until_accepted, args=(traffic,), daemon=True) for _ in range(4)]
    for rater in raters:
        rater.start()
    rows = wine_data().test_x.to_dict(orient="records")
    clients = [httpx.Client(base_url=u, timeout=10.0) for u in urls]
    i = 0
    try:
        for phase, seconds in schedule:
            frozen = phase.removesuffix(" frozen") if phase.endswith(" frozen") else None
            if frozen is not None:
                _freeze(parts[frozen] or 0)
            traffic.latencies[phase] = []
            try:
                ends = time.monotonic() + seconds
                while time.monotonic() < ends:
                    serving, other = i % 2, (i + 1) % 2
                    user = f"user-{i % 17}"
                    started = time.perf_counter()
                    try:
                        resp = clients[serving].post(
                            f"/v1/models/{name}/predict",
                            json={"inputs": rows[i % len(rows)], "user_id": user},
                        )
                        status = resp.status_code
                    except httpx.HTTPError:
                        status = 0
                    traffic.latencies[phase].append(time.perf_counter() - started)
                    traffic.statuses[status] = traffic.statuses.get(status, 0) + 1
                    if status == 200:
                        answer = resp.json()
                        traffic.served[answer["version"]] = traffic.served.get(answer["version"], 0) + 1
                        if i % 2 == 0:
                            traffic.ratings.put(
                                {
                                    "url": urls[other],
                                    "request_id": answer["request_id"],
                                    "feedback_token": answer["feedback_token"],
                                    "user_id": user,
                                    "rating": "thumbs_up" if i % 3 else "thumbs_down",
                                }
                            )
                    i += 1
                    time.sleep(PACE_S)
            finally:
                if frozen is not None:
                    _thaw(parts[frozen] or 0)
    finally:
        for client in clients:
            client.close()
        for _ in raters:
            traffic.ratings.put(None)
        for rater in raters:
            rater.join(timeout=120)

    figures = {
        phase: (len(took), 1000 * statistics.quantiles(took, n=100)[98], 1000 * max(took))
        for phase, took in traffic.latencies.items()
        if len(took) > 2
    }
    for phase, (count, p99, worst) in figures.items():
        print(f"{phase:>16}: {count} predictions, p99 {p99:.1f} ms, max {worst:.1f} ms")
    print(
        f"statuses {traffic.statuses}; ratings accepted {len(traffic.accepted)} "
        f"after {traffic.rating_attempts} attempts"
    )

    predictions = sum(traffic.statuses.values())
    assert traffic.statuses == {200: predictions}, traffic.statuses  # 0 non-200, 0 timeouts
    worst = max(w for _, _, w in figures.values())
    assert worst < PREDICT_BOUND_S * 1000, figures
    assert not traffic.refused, traffic.refused[:5]
    rated = (predictions + 1) // 2
    assert len(traffic.accepted) == rated, (len(traffic.accepted), rated)  # every rating accepted

    # Exact counts: every prediction and every rating counted once by the feedback worker.
    store = redis.Redis.from_url(runner.endpoints.redis_url, decode_responses=True)
    keys = RedisKeys()  # the stack's own Redis: the default prefix
    ups = sum(1 for r in traffic.accepted.values() if r == "thumbs_up")
    expected = {
        "inferences": predictions,
        "errors": 0,
        "feedback": rated,
        "thumbs_up": ups,
        "thumbs_down": rated - ups,
        "corrections": 0,
    }
    wait_until(
        lambda: summary_counts(read_summary_sync(store, keys, name)) == expected,
        timeout_s=90,
        what=f"feedback counts {expected}",
    )
    assert traffic.served == {"1": predictions}

    # Converged: the next alias move reaches both replicas.
    MlflowClient(runner.endpoints.mlflow_tracking_uri).set_registered_model_alias(name, "champion", "2")
    with httpx.Client(timeout=10.0) as probe:
        wait_until(
            lambda: all(
                probe.post(f"{u}/v1/models/{name}/predict", json={"inputs": rows[0]}).json().get("version")
                == "2"
                for u in urls
            ),
            timeout_s=60,
            what="both replicas serving version 2",
        )
