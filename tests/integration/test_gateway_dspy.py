"""A DSPy program logged with `mlflow.dspy.log_model` is served natively by the gateway (DummyLM)."""

from __future__ import annotations

from collections.abc import Iterator

import dspy
import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from services.cli.devstack.stack import Endpoints
from services.gateway.bootstrap import create_app
from services.gateway.settings import GatewaySettings
from tests.support import settings_on, unique

pytestmark = pytest.mark.integration


class QA(dspy.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.answer(question=question)


@pytest.fixture(scope="module")
def dspy_model(stack: Endpoints, stack_env: dict[str, str]) -> str:
    name = unique("dspy_qa")
    mlflow.set_tracking_uri(stack.mlflow_tracking_uri)
    mlflow.set_experiment("tests/dspy")
    with mlflow.start_run():
        mlflow.dspy.log_model(QA(), name="program", registered_model_name=name)
    MlflowClient(stack.mlflow_tracking_uri).set_registered_model_alias(name, "champion", "1")
    return name


@pytest.fixture()
def gateway(stack: Endpoints, stack_env: dict[str, str]) -> Iterator[TestClient]:
    settings = settings_on(stack, GatewaySettings, unique("dspy"), dspy_lm="dummy")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_dspy_program_answers_with_configured_lm_and_validates_fields(
    gateway: TestClient, dspy_model: str
) -> None:
    resp = gateway.post(f"/v1/models/{dspy_model}/predict", json={"inputs": {"question": "What is MLflow?"}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["outputs"] == {"answer": "dummy answer"} and body["version"] == "1"
    assert body["trace_id"]
    many = gateway.post(
        f"/v1/models/{dspy_model}/predict", json={"inputs": [{"question": "a"}, {"question": "b"}]}
    )
    assert many.status_code == 200 and len(many.json()["outputs"]) == 2
    missing = gateway.post(f"/v1/models/{dspy_model}/predict", json={"inputs": {"query": "x"}})
    assert missing.status_code == 422 and missing.json()["detail"]["field"] == "inputs.question"
    wrong = gateway.post(f"/v1/models/{dspy_model}/predict", json={"inputs": {"question": 3}})
    assert wrong.status_code == 422 and "string" in wrong.text
    info = gateway.get(f"/v1/models/{dspy_model}").json()
    assert info["aliases"] == {"champion": "1"}
