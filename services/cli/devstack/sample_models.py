"""Real, small models for the demo, the benchmarks and the tests: scikit-learn's wine data set.

Versions differ on purpose: `weak` sees only a few features (lower held-out accuracy), `strong` all of
them, so a promotion or retraining shows a measurable gain. Models are logged with an input example (the
signature is inferred, as our tracking conventions ask) and registered in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from services.shared.mlflow_conventions import standard_tags

WEAK_FEATURES = ["alcohol", "malic_acid", "ash"]
MEDIUM_FEATURES = ["alcohol", "malic_acid", "ash", "color_intensity"]


@dataclass(frozen=True)
class WineData:
    train_x: pd.DataFrame
    train_y: pd.Series
    test_x: pd.DataFrame
    test_y: pd.Series


def wine_data(seed: int = 7) -> WineData:
    x, y = load_wine(return_X_y=True, as_frame=True)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return WineData(train_x, train_y, test_x, test_y)


def train_wine(kind: str, data: WineData | None = None) -> tuple[Any, float]:
    """`weak` (3 features), `medium` (4) or `strong` (all 13) pipeline and its held-out accuracy."""
    data = data or wine_data()
    if kind in ("weak", "medium"):
        from sklearn.compose import ColumnTransformer

        features = WEAK_FEATURES if kind == "weak" else MEDIUM_FEATURES
        model = make_pipeline(
            ColumnTransformer([("keep", "passthrough", features)]),
            StandardScaler(),
            LogisticRegression(max_iter=2000),
        )
    elif kind == "strong":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    else:
        raise ValueError(f"unknown kind {kind!r}; expected 'weak', 'medium' or 'strong'")
    model.fit(data.train_x, data.train_y)
    return model, float(model.score(data.test_x, data.test_y))


def register_wine_version(
    tracking_uri: str, model_name: str, kind: str, *, experiment: str = "flywheel/demo"
) -> tuple[str, float]:
    """Train, log (with input example) and register one version; returns (version, accuracy)."""
    data = wine_data()
    model, accuracy = train_wine(kind, data)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"{kind}_logreg", tags=standard_tags("sklearn")):
        mlflow.log_params({"kind": kind, "algorithm": "logistic_regression"})
        mlflow.log_metric("test_accuracy", accuracy)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=data.train_x.head(3),
            registered_model_name=model_name,
            await_registration_for=60,
        )
    return str(info.registered_model_version), accuracy


class FlakyWineModel(PythonModel):
    """A deliberately broken version: fails on every sample whose alcohol exceeds `threshold` - always, or
    with `degrade_flag` only once that file exists (a version that is fine in its canary and degrades
    after promotion, as data drift would make it)."""

    def __init__(self, threshold: float = 13.0, degrade_flag: str | None = None) -> None:
        self.threshold = threshold
        self.degrade_flag = degrade_flag

    def load_context(self, context: Any) -> None:
        import joblib

        self.model = joblib.load(context.artifacts["model"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        import os

        degraded = self.degrade_flag is None or os.path.exists(self.degrade_flag)
        if degraded and (model_input["alcohol"] > self.threshold).any():
            raise ValueError(f"broken model: alcohol above {self.threshold}")
        return self.model.predict(model_input)


def register_broken_version(
    tracking_uri: str, model_name: str, *, experiment: str = "flywheel/demo", degrade_flag: str | None = None
) -> tuple[str, float]:
    """A version that raises on roughly half of the inputs (for rollback demos and tests); with
    `degrade_flag`, only once that file exists."""
    import tempfile
    from pathlib import Path

    import joblib

    data = wine_data()
    model, accuracy = train_wine("strong", data)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(run_name="broken_logreg", tags=standard_tags("pyfunc")),
    ):
        path = Path(tmp) / "model.joblib"
        joblib.dump(model, path)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=FlakyWineModel(degrade_flag=degrade_flag),
            artifacts={"model": str(path)},
            input_example=data.train_x.head(3),
            registered_model_name=model_name,
            await_registration_for=60,
        )
    return str(info.registered_model_version), accuracy
