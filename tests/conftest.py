"""Test infrastructure: real MLflow server, Redis and Kafka for the whole session.

`MLFLOW_TRACKING_URI`, `KAFKA_BOOTSTRAP_SERVERS` and `REDIS_URL` are used when set; otherwise the
embedded servers (MLflow subprocess, valkey-server, and Apache Kafka from its Maven Central jars when
Java 17 is here, else Tansu: `services/cli/devstack/stack.py`). Redis may come from testcontainers
when a Docker engine answers. Tests isolate themselves with unique model names and Redis prefixes, so
nothing depends on what an earlier run left behind.

`stack` is the default broker with the `standard` client profile. Tests decorated with
`tests.support.also_on_tansu` run a second time with a `stack` whose Kafka is the Tansu broker (same
MLflow and Redis) with the `embedded` profile, so the zero-Java fallback and its workarounds stay
covered (`-m tansu` selects those runs).

MLflow runs as production MLflow does: on PostgreSQL (Debian's `postgresql`, a cluster of the session's
own), with several server workers and the stable webhook key (`FLYWHEEL_EMBEDDED_MLFLOW_DB=postgres`);
on SQLite only where PostgreSQL is not installed (the summary says which). `.ci/system-deps` installs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from events import ALIAS_CHANGED
from services.cli.devstack.postgres import postgres_available
from services.cli.devstack.stack import Endpoints, Stack
from services.shared.kafka.admin import ensure_topics, topic_shape
from tests.support import TopicReader


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flywheel")


_BROKERS: list[str] = []
_MLFLOW: list[str] = []


@pytest.fixture(scope="session")
def base_stack(workdir: Path) -> Iterator[Endpoints]:
    """MLflow, Redis and the default broker (Apache Kafka when Java is here)."""
    database = os.environ.get("FLYWHEEL_EMBEDDED_MLFLOW_DB") or (
        "postgres" if postgres_available() else "sqlite"
    )
    env = {**os.environ, "FLYWHEEL_EMBEDDED_MLFLOW_DB": database}
    with Stack(workdir / "stack", env, use_containers=True) as s:
        endpoints = s.start()
        _MLFLOW.extend(part for part in endpoints.started if part.startswith("mlflow"))
        ensure_topics(endpoints.kafka_bootstrap_servers, shape=topic_shape(os.environ))
        _BROKERS.append(
            f"{endpoints.kafka_broker} ({endpoints.kafka_profile} profile): {endpoints.kafka_reason}"
        )
        yield endpoints


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, base_stack: Endpoints, workdir: Path) -> Iterator[Endpoints]:
    """The default stack, or (indirect parameter "tansu") the same MLflow and Redis with Tansu."""
    broker = getattr(request, "param", "default")
    if broker == "default":
        yield base_stack
        return
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env |= {
        "MLFLOW_TRACKING_URI": base_stack.mlflow_tracking_uri,
        "REDIS_URL": base_stack.redis_url,
        "FLYWHEEL_EMBEDDED_KAFKA": broker,
    }
    with Stack(workdir / f"stack-{broker}", env) as s:
        endpoints = s.start()
        ensure_topics(endpoints.kafka_bootstrap_servers, shape=topic_shape(os.environ))
        _BROKERS.append(
            f"{endpoints.kafka_broker} ({endpoints.kafka_profile} profile) for the {broker} subset"
        )
        yield endpoints


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in dict.fromkeys(_BROKERS):
        terminalreporter.write_line(f"Kafka: {line}")
    for line in dict.fromkeys(_MLFLOW):
        terminalreporter.write_line(f"MLflow: {line}")


@pytest.fixture(scope="session")
def stack_env(base_stack: Endpoints) -> Iterator[dict[str, str]]:
    """The default stack's endpoints exported to the environment of this process (for MlflowClient)."""
    stack = base_stack
    saved = {k: os.environ.get(k) for k in stack.env()}
    os.environ.update(stack.env())
    yield stack.env()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def wine_model(base_stack: Endpoints, stack_env: dict[str, str]) -> tuple[str, dict[str, float]]:
    """A registered model with two real sklearn versions: 1 (weak) and 2 (strong) -> accuracy."""
    from services.cli.devstack.sample_models import register_wine_version
    from tests.support import unique

    name = unique("wine")
    accuracy = {}
    for kind in ("weak", "strong"):
        version, acc = register_wine_version(
            base_stack.mlflow_tracking_uri, name, kind, experiment="tests/wine"
        )
        accuracy[version] = acc
    return name, accuracy


@pytest.fixture()
def alias_topic(stack: Endpoints) -> Iterator[TopicReader]:
    """AliasChanged events on the stack's Kafka, read from the beginning of the topic."""
    reader = TopicReader(stack, ALIAS_CHANGED)
    yield reader
    reader.close()
