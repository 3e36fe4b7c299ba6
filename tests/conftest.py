"""Test infrastructure: real MLflow server, Redis and Kafka-protocol broker for the whole session.

`MLFLOW_TRACKING_URI`, `KAFKA_BOOTSTRAP_SERVERS` and `REDIS_URL` are used when set; otherwise a
testcontainers container when a Docker engine answers; otherwise the embedded servers (MLflow subprocess,
valkey-server, Tansu). Tests isolate themselves with unique model names and Redis prefixes, so nothing
depends on what an earlier run left behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.shared.embedded.stack import Endpoints, Stack
from services.shared.kafka.admin import ensure_topics


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flywheel")


@pytest.fixture(scope="session")
def stack(workdir: Path) -> Iterator[Endpoints]:
    with Stack(workdir / "stack", use_containers=True) as s:
        endpoints = s.start()
        ensure_topics(endpoints.kafka_bootstrap_servers)
        yield endpoints


@pytest.fixture(scope="session")
def stack_env(stack: Endpoints) -> Iterator[dict[str, str]]:
    """The stack's endpoints exported to the environment of this process (for MlflowClient etc.)."""
    saved = {k: os.environ.get(k) for k in stack.env()}
    os.environ.update(stack.env())
    yield stack.env()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def wine_model(stack: Endpoints, stack_env: dict[str, str]) -> tuple[str, dict[str, float]]:
    """A registered model with two real sklearn versions: 1 (weak) and 2 (strong) -> accuracy."""
    from services.shared.sample_models import register_wine_version
    from tests.support import unique

    name = unique("wine")
    accuracy = {}
    for kind in ("weak", "strong"):
        version, acc = register_wine_version(stack.mlflow_tracking_uri, name, kind, experiment="tests/wine")
        accuracy[version] = acc
    return name, accuracy
