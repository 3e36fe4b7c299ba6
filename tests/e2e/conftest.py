from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from mlflow import MlflowClient

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
