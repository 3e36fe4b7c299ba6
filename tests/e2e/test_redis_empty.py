"""Redis comes back empty (a restart without persistence, a failover to an empty replica) while the
services run: simulated by deleting every key of the stack's namespace at once.

The watcher must not take the empty state for news: it restores its alias state from the alias-changed
topic, then publishes exactly what changed in MLflow while the state was gone — with the right
`previous_version`, a deletion included — and nothing else (before, every alias was announced again as
new, and an alias deleted meanwhile was never published). The resolution cache is rebuilt from the same
topic, so gateways converge; a running rollout's traffic split is set back where it stood. The feedback
worker's counts cannot come back from Redis: it counts on from the loss — each event once — and its
summary says since when (README "Failure modes").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import cast

import httpx
import pytest
import redis
from mlflow import MlflowClient

from events import ALIAS_CHANGED, CANARY_DECISIONS, AliasChanged, CanaryDecision
from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import RunningService, StackRunner
from services.shared.feedback_summary import read_summary_sync
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.redis_store import RedisKeys
from services.shared.resolution import parse_entries
from services.shared.traffic import TrafficSplit
from tests.e2e.rollouts import alias, rollout_pipeline
from tests.support import TopicReader, unique, wait_until
from tests.support.feedback import Events, records

pytestmark = pytest.mark.e2e

POLL_S = 1.0


@pytest.fixture()
def watched(
    stack: Endpoints, workdir: Path, mlflow_client: MlflowClient
) -> Iterator[tuple[str, str, RunningService]]:
    model = unique("emptied")
    mlflow_client.create_registered_model(model)
    for _ in range(2):
        mlflow_client.create_model_version(model, source="s3://flywheel-tests/model", run_id=None)
    prefix = unique("emptied")
    env = {**stack.env(), "FLYWHEEL_REDIS_PREFIX": prefix}
    runner = StackRunner.attach(workdir / unique("emptied"), stack, env)
    try:
        extra = {"FLYWHEEL_MODELS": model, "FLYWHEEL_POLL_INTERVAL_S": str(POLL_S)}
        watcher = runner.start_watcher(extra)
        runner.start_cache_invalidation(extra_env=extra)
        yield model, prefix, watcher
    finally:
        runner.stop()


def _emptied(redis_url: str, prefix: str) -> int:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    return int(client.delete(*keys)) if keys else 0


def _moves(events: list[AliasChanged]) -> list[tuple[str, str | None, str | None]]:
    return sorted((e.alias, e.version, e.previous_version) for e in events)


def test_an_emptied_redis_publishes_only_what_changed_meanwhile(
    watched: tuple[str, str, RunningService], stack: Endpoints, mlflow_client: MlflowClient
) -> None:
    model, prefix, watcher = watched
    topic = TopicReader(stack, ALIAS_CHANGED)
    of_model = lambda e: isinstance(e, AliasChanged) and e.model == model  # noqa: E731
    try:
        mlflow_client.set_registered_model_alias(model, "champion", "1")
        mlflow_client.set_registered_model_alias(model, "challenger", "2")
        before = topic.wait_for(of_model, 2, timeout_s=20)
        assert _moves(before) == [("challenger", "2", None), ("champion", "1", None)]  # type: ignore[arg-type]

        assert _emptied(stack.redis_url, prefix) > 0
        mlflow_client.set_registered_model_alias(model, "champion", "2")
        mlflow_client.delete_registered_model_alias(model, "challenger")
        after = topic.wait_for(of_model, 4, timeout_s=30)[2:]
        topic.settle(4 * POLL_S)  # several polls on the restored state: nothing may be added
        after = topic.events(of_model)[2:]
    finally:
        topic.close()
    assert _moves(after) == [("challenger", None, "2"), ("champion", "2", "1")], _moves(after)  # type: ignore[arg-type]
    store = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    assert store.exists(f"{prefix}:watcher:registry-id")
    metrics = httpx.get(f"{watcher.url}/metrics", timeout=5).text
    assert "flywheel_watcher_state_restores_total 1.0" in metrics

    # The resolution cache converges: rebuilt from the topic (the changes since included), marked whole.
    keys = RedisKeys(prefix)

    def cached() -> dict[str, str | None]:
        return {
            a: e.version
            for a, e in parse_entries(cast(dict[str, str], store.hgetall(keys.resolution(model)))).items()
        }

    wait_until(
        lambda: cached() == {"champion": "2", "challenger": None} and store.exists(keys.resolution_epoch()),
        20,
        "the resolution cache rebuilt and marked whole",
    )


def test_feedback_counts_after_an_emptied_redis_say_since_when_and_nothing_double_counts(
    stack: Endpoints, workdir: Path
) -> None:
    model, prefix = unique("emptied_fb"), unique("emptied")
    runner = StackRunner.attach(
        workdir / unique("emptied-fb"), stack, {**stack.env(), "FLYWHEEL_REDIS_PREFIX": prefix}
    )
    store = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    keys = RedisKeys(prefix)
    publisher = KafkaPublisher(stack.kafka_bootstrap_servers, profile_named(stack.kafka_profile), "tests")
    events = Events(model)
    try:
        runner.start_worker(
            "feedback-aggregation",
            {
                "FLYWHEEL_MODELS": model,
                "FLYWHEEL_FEEDBACK_GROUP_ID": unique("emptied-fb"),
                "FLYWHEEL_FEEDBACK_TICK_S": "1",
            },
        )
        publisher.publish_sync(records([events.inference(f"a{i}", "1") for i in range(20)]))
        wait_until(
            lambda: (s := read_summary_sync(store, keys, model)) and s["totals"]["inferences"] == 20,
            30,
            "20 inferences counted",
        )
        first = read_summary_sync(store, keys, model) or {}
        assert first["earlier_counts_lost"] is False and first["counts_since"]

        emptied_at = time.time()
        assert _emptied(stack.redis_url, prefix) > 0
        publisher.publish_sync(records([events.inference(f"b{i}", "1") for i in range(7)]))
        wait_until(
            lambda: (s := read_summary_sync(store, keys, model)) and s["earlier_counts_lost"],
            30,
            "the summary saying the earlier counts were lost",
        )
        time.sleep(3)  # ticks and redeliveries: nothing may count twice
        after = read_summary_sync(store, keys, model) or {}
    finally:
        publisher.close()
        runner.stop()
    assert after["totals"]["inferences"] == 7, after["totals"]  # counted on from the loss, each once
    since = datetime.fromisoformat(after["counts_since"].replace("Z", "+00:00")).timestamp()
    assert emptied_at - 1 <= since <= time.time()


def test_a_running_rollout_resumes_where_it_stood_after_an_emptied_redis(
    stack: Endpoints, workdir: Path, model: Callable[..., str], mlflow_client: MlflowClient
) -> None:
    """Its traffic split and stored state are gone (the gateways would send everything to the champion):
    the canary sets the split back to where the rollout stands — same rollout, no new START. A canary
    worker restarted on an emptied Redis ends the rollout with a recorded abort instead."""
    name = model("weak", "strong")
    decisions = TopicReader(stack, CANARY_DECISIONS)
    of_model = lambda e: isinstance(e, CanaryDecision) and e.model == name  # noqa: E731
    with rollout_pipeline(stack, workdir) as pipeline:
        prefix = pipeline.runner.env["FLYWHEEL_REDIS_PREFIX"]
        store = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        split_key = RedisKeys(prefix).traffic_split(name)
        try:
            mlflow_client.set_registered_model_alias(name, "challenger", "2")
            (start,) = decisions.wait_for(of_model, 1, timeout_s=30)
            wait_until(lambda: store.get(split_key), 20, "the rollout's traffic split")
            before = TrafficSplit.model_validate_json(store.get(split_key) or "")

            assert _emptied(stack.redis_url, prefix) > 0
            wait_until(lambda: store.get(split_key), 20, "the traffic split set back")
            after = TrafficSplit.model_validate_json(store.get(split_key) or "")
            decisions.settle(3)
            kinds = [e.decision.value for e in decisions.events(of_model)]  # type: ignore[attr-defined]
            view = pipeline.rollout(name)

            # A worker *restarted* on an emptied Redis knows nothing of the rollout: it ends it, recorded.
            pipeline.runner.stop_service("canary-rollout")
            assert _emptied(stack.redis_url, prefix) > 0
            pipeline.runner.start_canary()
            aborted = lambda e: of_model(e) and e.decision.value == "abort"  # noqa: E731
            (ended,) = decisions.wait_for(aborted, 1, timeout_s=60)
            wait_until(lambda: alias(mlflow_client, name, "challenger") is None, 30, "the challenger deleted")
            decisions.settle(3)
            later = [e.decision.value for e in decisions.events(of_model)]  # type: ignore[attr-defined]
        finally:
            decisions.close()
    assert (after.rollout_id, after.weight, after.shadow_share) == (
        before.rollout_id,
        before.weight,
        before.shadow_share,
    )
    assert after.rollout_id == start.rollout_id  # type: ignore[attr-defined]
    assert kinds.count("start") == 1, kinds  # resumed, not restarted
    assert view is not None and view["rollout_id"] == start.rollout_id  # type: ignore[attr-defined]
    assert isinstance(ended, CanaryDecision)
    assert (ended.rollout_id, ended.decision.value, ended.state) == (start.rollout_id, "abort", "aborted")  # type: ignore[attr-defined]
    assert "lost" in ended.reason and later.count("start") == 1, later  # ended, never restarted
