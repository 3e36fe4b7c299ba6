"""The native fast path: a scikit-learn model called directly on rows built in signature order.

MLflow's pyfunc predict builds a DataFrame from the records, enforces the signature on it (casting column
by column) and hands it to sklearn, whose feature-name check walks the columns again: 2.6 ms for one row of
the demo's wine pipeline, against 0.46 ms for the same row as a numpy array. The gateway has already
checked every record against the signature (`domain/inputs.py`), so for a model with a sklearn flavour it
loads the estimator itself (`get_raw_model()`, the same object pyfunc wraps) and calls the same method
pyfunc would (`predict`, or the `pyfunc_predict_fn` the model was logged with) on:

- `array`: a float64 numpy array, columns in signature order — when every input is numeric;
- `frame`: a DataFrame with the signature's columns (models that select columns by name, e.g. a
  ColumnTransformer) — without MLflow's schema enforcement.

A native path is used only once it has proven itself at load time: on the model's input example (and a
batch of it) it must give exactly the outputs pyfunc gives; otherwise the model is served through pyfunc,
the general path. `tests/integration/test_native_predict.py` checks both paths agree on the demo's models.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sklearn

from services.gateway.domain.inputs import NUMERIC_FLOAT, NUMERIC_INT, InputField, parse_inputs

log = logging.getLogger(__name__)

Predict = Callable[[list[dict[str, Any]], dict[str, Any]], list[Any]]
NUMERIC = NUMERIC_FLOAT | NUMERIC_INT | {"boolean"}

# An estimator fitted on a DataFrame warns on every array it is given; the array path is proven to give
# the outputs of the named frame (above), so the warning says nothing here.
warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)


def as_list(result: Any) -> list[Any]:
    """A model's outputs as a list with one item per row (what the gateway returns as `outputs`)."""
    if isinstance(result, pd.DataFrame):
        return list(result.to_dict(orient="records"))
    if isinstance(result, pd.Series):
        return list(result.tolist())
    if hasattr(result, "tolist"):
        return list(result.tolist())
    return list(result) if isinstance(result, list | tuple) else [result]


_configured = threading.local()


def _finite_inputs_assumed() -> None:
    """sklearn's own finiteness check, off in the threads that predict: every number reaching the native
    path was checked finite by the gateway (`domain/inputs.py` refuses NaN and infinities). sklearn's
    configuration is per thread; `config_context` per call would cost more than the check it skips."""
    if not getattr(_configured, "done", False):
        sklearn.set_config(assume_finite=True)
        _configured.done = True


def _array_predict(method: Callable[[Any], Any], names: Sequence[str]) -> Predict:
    def predict(records: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
        _finite_inputs_assumed()
        rows = np.array([[record[name] for name in names] for record in records], dtype=np.float64)
        return as_list(method(rows))

    return predict


def _frame_predict(method: Callable[[Any], Any], names: Sequence[str]) -> Predict:
    columns = list(names)

    def predict(records: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
        _finite_inputs_assumed()
        return as_list(method(pd.DataFrame.from_records(records, columns=columns)))

    return predict


def example_records(pyfunc_model: Any, fields: Sequence[InputField]) -> list[dict[str, Any]]:
    """The model's input example as checked records (as the gateway would pass them), else []."""
    example = getattr(pyfunc_model, "input_example", None)
    if isinstance(example, pd.DataFrame):
        raw: Any = example.to_dict(orient="records")
    elif isinstance(example, dict | list):
        raw = example
    else:
        return []
    try:
        return parse_inputs(raw, fields, max_rows=10_000).records
    except Exception:
        return []


def sklearn_native(
    pyfunc_model: Any, fields: Sequence[InputField] | None, reference: Predict
) -> tuple[Predict, str] | None:
    """(predict, input kind) of the estimator inside a sklearn pyfunc model, when it gives `reference`'s
    outputs on the model's input example; None when it cannot (the model stays on pyfunc)."""
    if not fields:
        return None
    try:
        estimator = pyfunc_model.get_raw_model()
        method = getattr(estimator, pyfunc_model._predict_fn.__name__)
    except Exception as exc:
        log.debug("no native sklearn estimator: %s", exc)
        return None
    records = example_records(pyfunc_model, fields)
    if not records:
        return None
    names = [f.name for f in fields]
    try:
        expected = reference(records, {})
        expected_each = [reference([r], {}) for r in records]
    except Exception as exc:
        log.debug("pyfunc cannot predict its own input example: %s", exc)
        return None
    candidates: list[tuple[str, Predict]] = []
    if all(f.type in NUMERIC for f in fields):
        candidates.append(("array", _array_predict(method, names)))
    candidates.append(("frame", _frame_predict(method, names)))
    for kind, predict in candidates:
        try:
            same = predict(records, {}) == expected and [predict([r], {}) for r in records] == expected_each
        except Exception as exc:
            log.debug("native %s path refused: %s", kind, exc)
            continue
        if same:
            return predict, kind
    return None
