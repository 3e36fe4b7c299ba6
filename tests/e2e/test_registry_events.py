"""Alias changes made with the real MlflowClient become exactly one AliasChanged each on Kafka.

Real MLflow server (webhooks enabled for localhost), the watcher as a subprocess (`flywheel run
registry-watcher`), real Redis and the Kafka-protocol broker; events are read back from the topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities.webhook import WebhookStatus

from events import AliasChanged
from services.cli.devstack.process import ManagedProcess
from services.cli.devstack.stack import Endpoints
from services.registry_watcher.adapters.webhook_registration import WEBHOOK_NAME, register_webhook
from tests.support import RoundRobin, TopicReader, also_on_tansu, start_service, unique

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::FutureWarning")]
SECRET = "e2e-webhook-secret"
POLL_S = 0.5


class Watcher:
    def __init__(self, stack: Endpoints, workdir: Path, models: list[str], poll_s: float = POLL_S) -> None:
        self.stack, self.workdir = stack, workdir
        self.env = {
            "FLYWHEEL_WEBHOOK_SECRET": SECRET,
            "FLYWHEEL_POLL_INTERVAL_S": str(poll_s),
            "FLYWHEEL_MODELS": ",".join(models),
            "FLYWHEEL_REDIS_PREFIX": unique("e2e"),
        }
        self.proc: ManagedProcess | None = None
        self.port: int | None = None

    def start(self) -> Watcher:
        env = dict(self.env)
        if self.port:
            env["FLYWHEEL_WATCHER_PORT"] = str(self.port)
        self.proc, self.port = start_service(  # ready = Redis, Kafka and the registry identity checked
            "registry-watcher",
            self.stack,
            self.workdir,
            env,
            port_var="FLYWHEEL_WATCHER_PORT",
            health_path="/readyz",
        )
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/mlflow"

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


@pytest.fixture()
def watcher_factory(stack: Endpoints, workdir: Path) -> Iterator[Callable[..., Watcher]]:
    started: list[Watcher] = []

    def factory(models: list[str], poll_s: float = POLL_S) -> Watcher:
        w = Watcher(stack, workdir, models, poll_s).start()
        started.append(w)
        return w

    yield factory
    for w in started:
        w.stop()


def hook(client: MlflowClient, url: str, active: bool = True) -> None:
    reg = register_webhook(client, url, SECRET)
    if not active:
        client.update_webhook(reg.webhook_id, status=WebhookStatus.DISABLED)
    time.sleep(1.5)  # the MLflow server caches its webhook list for MLFLOW_WEBHOOK_CACHE_TTL (1 s here)


@pytest.fixture()
def watched(
    mlflow_client: MlflowClient, make_model: Callable[[int], str], watcher_factory: Callable[..., Watcher]
) -> Callable[..., tuple[str, Watcher]]:
    def make(poll_s: float = POLL_S, webhook: bool = True) -> tuple[str, Watcher]:
        """A new model with 3 versions and a watcher of it that MLflow's webhook calls (registered but
        disabled with `webhook=False`: the poller alone sees the changes)."""
        model = make_model(3)
        watcher = watcher_factory([model], poll_s)
        hook(mlflow_client, watcher.url, active=webhook)
        return model, watcher

    return make


def summary(events: list[AliasChanged]) -> list[tuple[str, str | None, str | None, str]]:
    return [(e.alias, e.version, e.previous_version, e.action.value) for e in events]


def of(model: str) -> Callable[[object], bool]:
    return lambda e: isinstance(e, AliasChanged) and e.model == model


EXPECTED = [
    ("champion", "1", None, "set"),
    ("champion", "2", "1", "set"),
    ("champion", None, "2", "deleted"),
    ("challenger", "1", None, "set"),
    ("challenger", "2", "1", "set"),
    ("challenger", "1", "2", "set"),
]


def make_the_expected_moves(client: MlflowClient, model: str) -> None:
    """The alias writes EXPECTED describes: set, move, delete, then a quick A -> B -> A."""
    client.set_registered_model_alias(model, "champion", "1")
    time.sleep(0.3)
    client.set_registered_model_alias(model, "champion", "2")
    time.sleep(0.3)
    client.delete_registered_model_alias(model, "champion")
    time.sleep(0.3)
    client.set_registered_model_alias(model, "challenger", "1")
    client.set_registered_model_alias(model, "challenger", "2")
    client.set_registered_model_alias(model, "challenger", "1")


def assert_each_change_once(events: list[AliasChanged], source: str) -> None:
    assert summary(events) == EXPECTED
    assert all(e.source.value == source for e in events)


@also_on_tansu
def test_webhook_path_one_event_per_change_in_order(
    mlflow_client: MlflowClient, watched: Callable[..., tuple[str, Watcher]], alias_topic: TopicReader
) -> None:
    model, _ = watched(poll_s=2.0)
    alias_topic.settle(0.5)
    make_the_expected_moves(mlflow_client, model)
    alias_topic.wait_for(of(model), len(EXPECTED), timeout_s=20)
    alias_topic.settle(4.5)  # two poll cycles: the safety net must not add anything
    assert_each_change_once(alias_topic.events(of(model)), "webhook")  # type: ignore[arg-type]


def test_two_watchers_behind_one_url_with_both_pollers_publish_each_change_once(
    stack: Endpoints,
    workdir: Path,
    mlflow_client: MlflowClient,
    make_model,
    alias_topic: TopicReader,  # type: ignore[no-untyped-def]
) -> None:
    """Two replicas of the watcher (one Redis namespace) behind a round-robin balancer, both polling: the
    deliveries alternate between them, the pollers race the webhooks, and still one event per change.

    The pollers run every 1.5 s, longer than a delivery takes even on this loaded machine: a poller that
    reads the registry while the deliveries of a quick A -> B -> A are still queued in MLflow publishes
    the newest state ahead of them (the state converges, the intermediate step is not in the history —
    README "Webhook deliveries": why MLflow should deliver in write order, and promptly)."""
    model = make_model(3)
    namespace = unique("e2e")
    watchers = []
    for _ in range(2):
        watcher = Watcher(stack, workdir, [model], poll_s=1.5)
        watcher.env["FLYWHEEL_REDIS_PREFIX"] = namespace
        watchers.append(watcher.start())
    try:
        with RoundRobin([f"http://127.0.0.1:{w.port}" for w in watchers]) as balancer:
            hook(mlflow_client, f"{balancer.url}/webhooks/mlflow")
            alias_topic.settle(0.5)
            balancer.forwarded.clear()  # the test delivery of the registration
            make_the_expected_moves(mlflow_client, model)
            alias_topic.wait_for(of(model), len(EXPECTED), timeout_s=20)
            alias_topic.settle(3.0)  # several poll cycles of both pollers: nothing may be added
        assert summary(alias_topic.events(of(model))) == EXPECTED  # type: ignore[arg-type]
        assert len(balancer.forwarded) == 2 and sum(balancer.forwarded.values()) >= len(EXPECTED), (
            balancer.forwarded
        )
    finally:
        for watcher in watchers:
            watcher.stop()


def test_poller_alone_publishes_each_change_once(
    mlflow_client: MlflowClient, watched: Callable[..., tuple[str, Watcher]], alias_topic: TopicReader
) -> None:
    model, _ = watched(webhook=False)
    steps = [
        ("set", "champion", "1"),
        ("set", "champion", "2"),
        ("delete", "champion", None),
        ("set", "challenger", "1"),
        ("set", "challenger", "2"),
        ("set", "challenger", "1"),
    ]
    for op, alias, version in steps:
        if op == "set":
            mlflow_client.set_registered_model_alias(model, alias, version)
        else:
            mlflow_client.delete_registered_model_alias(model, alias)
        time.sleep(POLL_S * 3)
    alias_topic.wait_for(of(model), len(EXPECTED), timeout_s=10)
    alias_topic.settle(1.5)
    assert_each_change_once(alias_topic.events(of(model)), "poller")  # type: ignore[arg-type]


def test_poller_catches_up_on_changes_made_while_the_receiver_was_down(
    mlflow_client: MlflowClient, watched: Callable[..., tuple[str, Watcher]], alias_topic: TopicReader
) -> None:
    model, watcher = watched(poll_s=60.0)  # only the start-up poll can catch up
    mlflow_client.set_registered_model_alias(model, "champion", "1")
    assert summary(alias_topic.wait_for(of(model), 1)) == [("champion", "1", None, "set")]  # type: ignore[arg-type]

    watcher.stop()
    mlflow_client.set_registered_model_alias(model, "champion", "3")
    mlflow_client.set_registered_model_alias(model, "challenger", "2")
    time.sleep(8)  # MLflow's delivery attempts (1 s, 2 s, 4 s backoff) fail meanwhile
    watcher.start()

    alias_topic.wait_for(of(model), 3, timeout_s=20)
    alias_topic.settle(2.0)
    events = alias_topic.events(of(model))
    assert sorted(summary(events)[1:]) == [  # type: ignore[arg-type]
        ("challenger", "2", None, "set"),
        ("champion", "3", "1", "set"),
    ]
    assert len(events) == 3


def test_webhook_registration_is_idempotent(mlflow_client: MlflowClient) -> None:
    first = register_webhook(mlflow_client, "http://127.0.0.1:1/a", SECRET)
    second = register_webhook(mlflow_client, "http://127.0.0.1:1/b", SECRET)
    assert second.webhook_id == first.webhook_id and not second.created
    named = [w for w in mlflow_client.list_webhooks(max_results=100) if w.name == WEBHOOK_NAME]
    assert len(named) == 1 and named[0].url == "http://127.0.0.1:1/b"


def test_stage_shim_warns_and_moves_aliases(mlflow_client: MlflowClient, make_model) -> None:  # type: ignore[no-untyped-def]
    from services.shared.stage_shims import transition_model_stage

    model = make_model(2)
    with pytest.warns(DeprecationWarning, match="set_registered_model_alias"):
        transition_model_stage(model, 1, "Production", client=mlflow_client)
    with pytest.warns(DeprecationWarning):
        transition_model_stage(model, 2, "Staging", client=mlflow_client)
    assert mlflow_client.get_registered_model(model).aliases == {"champion": "1", "challenger": "2"}
    with pytest.warns(DeprecationWarning):
        transition_model_stage(model, "2", "Production", client=mlflow_client)
    assert mlflow_client.get_registered_model(model).aliases == {"champion": "2"}
    with pytest.warns(DeprecationWarning):
        transition_model_stage(model, "2", "Archived", client=mlflow_client)
    assert mlflow_client.get_registered_model(model).aliases == {}


def test_stage_mode_maps_stage_transitions_to_alias_events(
    mlflow_client: MlflowClient,
    make_model,
    stack: Endpoints,
    workdir: Path,
    alias_topic: TopicReader,  # type: ignore[no-untyped-def]
) -> None:
    model = make_model(2)
    w = Watcher(stack, workdir, [model])
    w.env["FLYWHEEL_POLL_STAGES"] = "true"
    w.start()
    try:
        mlflow_client.transition_model_version_stage(model, "1", "Production")
        alias_topic.wait_for(of(model), 1)
        mlflow_client.transition_model_version_stage(model, "2", "Production", archive_existing_versions=True)
        alias_topic.wait_for(of(model), 2)
        mlflow_client.transition_model_version_stage(model, "2", "Archived")
        alias_topic.wait_for(of(model), 3)
        alias_topic.settle(1.5)
    finally:
        w.stop()
    events = alias_topic.events(of(model))
    assert summary(events) == [  # type: ignore[arg-type]
        ("champion", "1", None, "set"),
        ("champion", "2", "1", "set"),
        ("champion", None, "2", "deleted"),
    ]
    assert {e.source.value for e in events} == {"stage"}  # type: ignore[attr-defined]
