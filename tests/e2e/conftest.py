from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from mlflow import MlflowClient

from services.cli.devstack.sample_models import register_broken_version, register_wine_version
from services.cli.devstack.stack import Endpoints
from tests.support import unique

pytestmark = pytest.mark.e2e
logging.getLogger("mlflow").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def mlflow_client(stack: Endpoints, stack_env: dict[str, str]) -> MlflowClient:
    return MlflowClient(tracking_uri=stack.mlflow_tracking_uri)


@pytest.fixture()
def make_model(mlflow_client: MlflowClient) -> Callable[[int], str]:
    """Register a model with N versions (registry entries only) and return its unique name."""

    def make(versions: int = 3, prefix: str = "e2e") -> str:
        name = unique(prefix)
        mlflow_client.create_registered_model(name)
        for _ in range(versions):
            mlflow_client.create_model_version(name, source="s3://flywheel-tests/model", run_id=None)
        return name

    return make


@pytest.fixture()
def model(stack: Endpoints, stack_env: dict[str, str], mlflow_client: MlflowClient) -> Callable[..., str]:
    def make(*kinds: str) -> str:
        """A new model with one version per kind ("weak", "strong", "broken"); version 1 is champion."""
        name = unique("canary_model")
        for kind in kinds:
            if kind == "broken":
                register_broken_version(stack.mlflow_tracking_uri, name, experiment="tests/canary")
            else:
                register_wine_version(stack.mlflow_tracking_uri, name, kind, experiment="tests/canary")
        mlflow_client.set_registered_model_alias(name, "champion", "1")
        return name

    return make
