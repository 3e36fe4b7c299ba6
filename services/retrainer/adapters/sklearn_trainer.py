"""scikit-learn models: the next version learns from the base training data plus the feedback examples.

Base training data and the held-out set come from a provider (`retrainer_base_data`, by default the
wine data of `services.cli.devstack.sample_models`): `train_x/train_y` to learn from, `test_x/test_y` to
evaluate on. Features are the base version's input signature (so the new version accepts exactly what
the old one did); labels must be classes the base data knows. Examples identical to a held-out row are
dropped: evaluating on trained-on rows would flatter the candidate.

The candidate is logged (with an input example, so its signature is inferred) and evaluated as serving
will use it: loaded back as a pyfunc model from MLflow. Accuracy on the whole held-out set (the
champion is scored on the same rows), latency by predicting held-out rows one at a time.
"""

from __future__ import annotations

import importlib
import logging
from datetime import datetime
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from services.retrainer.adapters.dataset import Dataset
from services.retrainer.adapters.training import (
    BaseVersion,
    Candidate,
    TrainingFailed,
    accuracy,
    evaluated,
    timed_calls,
    timed_side_by_side,
)
from services.retrainer.domain.examples import drop_overlap, tabular_examples
from services.retrainer.settings import RetrainerSettings

log = logging.getLogger(__name__)

_ALGORITHM_LABEL = {"logistic_regression": "logreg", "base": "base-clone"}


def load_provider(reference: str) -> Any:
    """`module:function` -> what the function returns (the base data)."""
    module_name, _, func = reference.partition(":")
    if not module_name or not func:
        raise ValueError(f"{reference!r} is not 'module:function'")
    return getattr(importlib.import_module(module_name), func)()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class SklearnTrainer:
    model_type = "sklearn"

    def __init__(self, settings: RetrainerSettings) -> None:
        self.algorithm = settings.retrainer_algorithm
        self.c = settings.retrainer_c
        self.max_iter = settings.retrainer_max_iter
        self.base_data = settings.retrainer_base_data
        self.latency_samples = settings.retrainer_latency_samples
        self.latency_repeats = settings.retrainer_latency_repeats

    def run_name(self, now: datetime) -> str:
        setting = f"C={self.c:g}" if self.algorithm == "logistic_regression" else "refit"
        return f"{now:%Y-%m-%d_%H%M%S}_{_ALGORITHM_LABEL[self.algorithm]}_{setting}"

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"algorithm": self.algorithm, "base_data": self.base_data}
        if self.algorithm == "logistic_regression":
            params |= {"C": self.c, "max_iter": self.max_iter, "scaler": "standard"}
        return params

    def _estimator(self, base: BaseVersion) -> Any:
        if self.algorithm == "base":
            if base.uri is None:
                raise TrainingFailed("algorithm 'base' needs a base version to clone")
            return clone(mlflow.sklearn.load_model(base.uri))
        return make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=self.max_iter))

    def train(self, base: BaseVersion, dataset: Dataset) -> Candidate:
        try:
            data = load_provider(self.base_data)
        except Exception as exc:
            raise TrainingFailed(f"base data {self.base_data}: {exc!r}") from exc
        known = list(data.train_x.columns)
        features = base.input_names or known
        if unknown := [f for f in features if f not in known]:
            raise TrainingFailed(f"base data has no columns {unknown} of the model's input signature")
        classes = {_plain(v) for v in pd.unique(data.train_y)}
        held_x = data.test_x[features]
        held_y = [_plain(v) for v in data.test_y]

        parsed = tabular_examples(dataset.rows, features, allowed_labels=classes)
        examples, overlap = drop_overlap(parsed, held_x.to_numpy().tolist(), features)
        schema = dataset.schema_measurements(parsed.problems, base.baseline_label)
        metrics: dict[str, float] = {
            "dataset_rows": len(dataset.rows),
            "examples_parsed": len(parsed),
            "examples_overlapping_held_out": overlap,
            "examples_used": len(examples),
            "base_train_rows": len(data.train_x),
            "held_out_rows": len(held_x),
        }
        if parsed.problems or not dataset.rows:
            log.warning("dataset %s fails the schema check: %s", dataset.label, parsed.problems[:5])
            return Candidate(None, schema, metrics)

        train_x = data.train_x[features]
        train_y = list(data.train_y)
        if len(examples):
            train_x = pd.concat(
                [train_x, pd.DataFrame(examples.features, columns=features)], ignore_index=True
            )
            train_y += examples.labels
        train_x = train_x.astype("float64")
        metrics["train_rows"] = len(train_x)
        try:
            estimator = self._estimator(base)
            estimator.fit(train_x, np.asarray(train_y))
        except TrainingFailed:
            raise
        except Exception as exc:
            raise TrainingFailed(f"fitting failed: {exc!r}") from exc

        info = mlflow.sklearn.log_model(estimator, name="model", input_example=train_x.head(3))
        candidate = mlflow.pyfunc.load_model(info.model_uri)
        predicted = self._predict(candidate, held_x)
        new_accuracy = accuracy(held_y, predicted)
        baseline = None
        baseline_predicted: list[Any] = [None] * len(held_y)
        baseline_accuracy = None
        if base.baseline_uri is not None:
            baseline = mlflow.pyfunc.load_model(base.baseline_uri)
            baseline_predicted = self._predict(baseline, data.test_x)
            baseline_accuracy = accuracy(held_y, baseline_predicted)

        n_timed = min(self.latency_samples, len(held_x))
        candidate.predict(held_x.iloc[[0]])  # warm-up: the first call pays one-off costs
        if baseline is not None:
            baseline.predict(data.test_x.iloc[[0]])
        timed, timed_baseline = timed_side_by_side(
            lambda i: candidate.predict(held_x.iloc[[i]]),
            (lambda i: baseline.predict(data.test_x.iloc[[i]])) if baseline is not None else None,
            n_timed,
            repeats=self.latency_repeats,
        )
        latencies = timed.latencies_ms

        table = held_x.reset_index(drop=True).copy()
        table.insert(0, "held_out_index", [_plain(i) for i in data.test_x.index])
        table["label"] = held_y
        table["prediction"] = predicted
        table["correct"] = [p == y for p, y in zip(predicted, held_y, strict=True)]
        table["baseline_prediction"] = baseline_predicted
        table["baseline_correct"] = [
            p is not None and p == y for p, y in zip(baseline_predicted, held_y, strict=True)
        ]
        table["latency_ms"] = latencies + [None] * (len(held_x) - n_timed)
        mlflow.log_table(table, artifact_file="evaluation/held_out_examples.json")

        measurements = evaluated(
            schema,
            metrics,
            accuracy=new_accuracy,
            latencies_ms=latencies,
            baseline_accuracy=baseline_accuracy,
            baseline_latencies_ms=timed_baseline.latencies_ms if timed_baseline is not None else None,
        )
        tags = {
            "flywheel.retrainer.algorithm": self.algorithm,
            "flywheel.retrainer.features": ",".join(features),
        }
        return Candidate(info, measurements, metrics, tags)

    @staticmethod
    def _predict(model: Any, x: pd.DataFrame) -> list[Any]:
        """Predictions for every row; a model that fails on a batch is asked row by row (None = error)."""
        try:
            return [_plain(v) for v in np.asarray(model.predict(x)).ravel()]
        except Exception as exc:
            log.warning("batch prediction failed (%r); predicting row by row", exc)
        results, _, _ = timed_calls(lambda i: np.asarray(model.predict(x.iloc[[i]])).ravel()[0], len(x))
        return [_plain(v) for v in results]
