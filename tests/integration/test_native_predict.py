"""The native fast path gives exactly what MLflow pyfunc gives, on the demo's models (real MLflow server).

Each registered version is loaded by the gateway's loader; the sklearn ones must take a native path (an
array in signature order, or a named frame for a pipeline that selects columns by name) and a pyfunc
PythonModel must stay on pyfunc. Then every held-out row is predicted through the native path and through
pyfunc — one row at a time, and all rows in one call — and the outputs must be identical. Through the
gateway's micro-batching, labels are identical to one-row predictions; probabilities may differ in the
last bits (a batch is one matrix product, as in pyfunc's own batch call), within 1e-12.
"""

from __future__ import annotations

import asyncio
from typing import Any

import mlflow
import pytest

from services.cli.devstack.sample_models import (
    register_broken_version,
    register_wine_version,
    train_wine,
    wine_data,
)
from services.cli.devstack.stack import Endpoints
from services.gateway.adapters.model_loader import LoadedModel, MlflowModelLoader, _pyfunc_predict
from services.gateway.batching import Predictions
from services.gateway.domain.inputs import parse_inputs
from services.gateway.domain.model_manager import ModelRef
from services.shared.mlflow_conventions import standard_tags
from tests.support import unique

pytestmark = pytest.mark.integration


def held_out_records(loaded: LoadedModel) -> list[dict[str, Any]]:
    rows = wine_data().test_x.to_dict(orient="records")
    return parse_inputs(rows, loaded.input_fields, max_rows=10_000).records


def register_proba_version(tracking_uri: str, name: str) -> str:
    """The strong pipeline logged with `pyfunc_predict_fn="predict_proba"`: pyfunc answers probabilities."""
    data = wine_data()
    model, _ = train_wine("strong", data)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("tests/native")
    with mlflow.start_run(tags=standard_tags("sklearn")):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=data.train_x.head(3),
            registered_model_name=name,
            pyfunc_predict_fn="predict_proba",
            await_registration_for=60,
        )
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def versions(base_stack: Endpoints) -> dict[str, tuple[str, str]]:
    """kind -> (model name, version) of the demo's kinds and two more."""
    uri = base_stack.mlflow_tracking_uri
    name = unique("native")
    found = {
        kind: (name, register_wine_version(uri, name, kind, experiment="tests/native")[0])
        for kind in ("weak", "medium", "strong")
    }
    found["broken"] = (name, register_broken_version(uri, name, experiment="tests/native")[0])
    found["proba"] = (name, register_proba_version(uri, name))
    return found


@pytest.mark.parametrize(
    ("kind", "native"),
    [
        ("strong", "sklearn/array"),
        ("weak", "sklearn/frame"),  # a ColumnTransformer selecting columns by name
        ("medium", "sklearn/frame"),
        ("proba", "sklearn/array"),
        ("broken", None),  # a PythonModel: pyfunc, the general path
    ],
)
def test_native_path_gives_pyfunc_outputs(
    base_stack: Endpoints, versions: dict[str, tuple[str, str]], kind: str, native: str | None
) -> None:
    name, version = versions[kind]
    loader = MlflowModelLoader(base_stack.mlflow_tracking_uri)
    loaded = loader(ModelRef(name, version=version))
    assert loaded.native == native and loaded.batchable
    if native is None:
        return
    assert loaded.predict_seconds > 0  # measured at load, on the input example
    mlflow.set_tracking_uri(base_stack.mlflow_tracking_uri)
    reference = _pyfunc_predict(mlflow.pyfunc.load_model(f"models:/{name}/{version}"))
    records = held_out_records(loaded)
    assert len(records) == 54
    expected_each = [reference([r], {}) for r in records]
    assert [loaded.predict([r], {}) for r in records] == expected_each
    assert loaded.predict(records, {}) == reference(records, {})

    async def batched() -> list[list[Any]]:
        predictions = Predictions(max_rows=16)
        try:
            return list(await asyncio.gather(*(predictions.call(loaded, [r], {}) for r in records)))
        finally:
            predictions.close()

    got = asyncio.run(batched())
    if kind != "proba":
        assert got == expected_each == [[o] for o in reference(records, {})]
        return
    assert all(isinstance(p, list) and len(p) == 3 for (p,) in got)
    assert all(
        abs(a - b) <= 1e-12
        for (p,), (q,) in zip(got, expected_each, strict=True)
        for a, b in zip(p, q, strict=True)
    )
