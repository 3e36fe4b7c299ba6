"""Loading a registered model version from MLflow into something the gateway can call.

Three paths: a model with a scikit-learn flavour is called natively on rows built in signature order, once
that has proven to give pyfunc's outputs on the model's input example (`native_predict.py`); anything else
with a pyfunc flavour goes through MLflow pyfunc, the general path; DSPy programs logged with
`mlflow.dspy.log_model` are loaded natively with `mlflow.dspy.load_model` so the program (not a pyfunc
wrapper) runs with the LM this replica is configured with. The loader always loads an exact version: alias
resolution happens before, so a loaded object never changes meaning. Pyfunc and native models are
batchable (`batching.py`: one call for concurrent requests); a DSPy program answers each request on its own.
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from services.gateway.adapters.native_predict import as_list, example_records, sklearn_native
from services.gateway.domain.inputs import InputField
from services.gateway.domain.model_manager import ModelRef
from services.shared.mlflow_registry import alias_version

log = logging.getLogger(__name__)

Predict = Callable[[list[dict[str, Any]], dict[str, Any]], list[Any]]
LMFactory = Callable[[list[str]], Any]


@dataclass(frozen=True)
class LoadedModel:
    """One model version, ready to serve. Immutable: swapping versions swaps the whole object."""

    name: str
    version: str
    flavour: str
    predict: Predict = field(repr=False)
    input_fields: tuple[InputField, ...] | None
    model_id: str | None = None
    # The output signature (corrections are checked against it); None = no signature. An unnamed
    # output (a classifier's label) has the name "".
    output_fields: tuple[InputField, ...] | None = None
    run_id: str | None = None
    load_seconds: float = 0.0
    batchable: bool = False  # concurrent requests may share one call (row-wise flavours)
    native: str | None = None  # the native fast path in use (e.g. `sklearn/array`), None = pyfunc/dspy
    predict_seconds: float = 0.0  # one call on the input example, measured at load (0 = unknown)


def _pyfunc_fields(pyfunc_model: Any) -> tuple[InputField, ...] | None:
    schema = pyfunc_model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return None
    fields = []
    for spec in schema.inputs:
        type_name = getattr(getattr(spec, "type", None), "name", "any")
        fields.append(InputField(spec.name, str(type_name), bool(getattr(spec, "required", True))))
    return tuple(fields)


def _pyfunc_outputs(pyfunc_model: Any) -> tuple[InputField, ...] | None:
    schema = pyfunc_model.metadata.get_output_schema()
    if schema is None or not schema.inputs:
        return None
    named = schema.has_input_names()
    return tuple(
        InputField(spec.name if named else "", str(getattr(getattr(spec, "type", None), "name", "any")))
        for spec in schema.inputs
    )


def use_object_strings() -> bool:
    """pandas 3 builds string labels (column names) as Arrow strings; on every one-record predict, MLflow's
    schema enforcement builds a frame from a dict and sklearn's feature-name check turns its columns back
    into Python objects: measured at 28% of a pyfunc predict (3.4 vs 4.7 ms p50, same model, same input).
    Python-object strings are pandas 2's behaviour, which these models were built and tested against.
    Process-wide, so only the gateway's `run` calls it. pandas deprecates the switch (gone in 4.0): then
    nothing changes and False is returned."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pd.set_option("future.infer_string", False)
        except (KeyError, ValueError, pd.errors.OptionError):
            return False
    return True


def _pyfunc_predict(pyfunc_model: Any) -> Predict:
    def predict(records: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
        frame = pd.DataFrame.from_records(records)
        return as_list(pyfunc_model.predict(frame, params=params or None))

    return predict


def _timed_call(predict: Predict, records: list[dict[str, Any]]) -> float:
    """Seconds of one call on `records` (a warm-up: first calls initialise caches), 0 when it fails."""
    if not records:
        return 0.0
    try:
        predict(records, {})
        started = time.perf_counter()
        predict(records, {})
        return time.perf_counter() - started
    except Exception:
        return 0.0


def dspy_lm_factory(model: str | None, api_key: str | None = None, api_base: str | None = None) -> LMFactory:
    """The LM a DSPy program runs with, from configuration (any LiteLLM model string).

    `dummy` gives DSPy's own DummyLM answering every output field with a fixed text (tests, demos).
    """

    def make(output_fields: list[str]) -> Any:
        import dspy
        from dspy.utils.dummies import DummyLM

        if model is None:
            return None  # use whatever the program was saved with
        if model == "dummy":
            return DummyLM(itertools.repeat({name: f"dummy {name}" for name in output_fields}))
        kwargs: dict[str, Any] = {}
        if api_key:
            kwargs["api_key"] = api_key
        if api_base:
            kwargs["api_base"] = api_base
        return dspy.LM(model, **kwargs)

    return make


def _dspy_predict(program: Any, lm: Any) -> Predict:
    import dspy

    def predict(records: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
        outputs = []
        # dspy.context is thread-local and safe from worker threads (dspy.configure is not).
        with dspy.context(lm=lm) if lm is not None else dspy.context():
            for record in records:
                prediction = program(**record, **params)
                outputs.append(dict(prediction.toDict()) if hasattr(prediction, "toDict") else prediction)
        return outputs

    return predict


def _dspy_fields(program: Any) -> tuple[tuple[InputField, ...], list[str]]:
    predictors = program.predictors() if hasattr(program, "predictors") else []
    if not predictors:
        return (), []
    inputs = tuple(InputField(n, "string") for n in predictors[0].signature.input_fields)
    outputs = list(predictors[-1].signature.output_fields)
    return inputs, outputs


def warm_up() -> None:
    """Import the heavy flavour modules once at start-up, so the first preload is not seconds slower."""
    import importlib

    for module in ("mlflow.pyfunc", "mlflow.sklearn", "sklearn.pipeline", "sklearn.linear_model"):
        try:
            importlib.import_module(module)
        except ImportError:
            log.debug("flavour module %s not installed", module)


class MlflowModelLoader:
    """`ModelRef -> LoadedModel` against one tracking server (the ModelManager's loader)."""

    def __init__(self, tracking_uri: str, lm_factory: LMFactory | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._lm_factory = lm_factory or dspy_lm_factory(None)

    def resolve(self, name: str, alias: str) -> str | None:
        """The version an alias points to in MLflow now (None when the alias does not exist)."""
        return alias_version(self.client, name, alias)

    def __call__(self, ref: ModelRef) -> LoadedModel:
        version = ref.version if ref.version is not None else self.resolve(ref.name, ref.alias or "")
        if version is None:
            raise LookupError(f"model {ref.name!r} has no alias {ref.alias!r}")
        started = time.perf_counter()
        mv = self.client.get_model_version(ref.name, version)
        uri = f"models:/{ref.name}/{version}"
        mlflow.set_tracking_uri(self.tracking_uri)
        info = mlflow.models.get_model_info(uri)
        flavours = info.flavors or {}
        if "dspy" in flavours:
            from mlflow import dspy as mlflow_dspy

            program = mlflow_dspy.load_model(uri)
            input_fields, output_fields = _dspy_fields(program)
            lm = self._lm_factory(output_fields)
            predict, flavour, fields = _dspy_predict(program, lm), "dspy", input_fields or None
            outputs = tuple(InputField(n, "string") for n in output_fields) or None
            native, batchable, predict_seconds = None, False, 0.0
        else:
            pyfunc_model = mlflow.pyfunc.load_model(uri)
            predict, flavour, fields = _pyfunc_predict(pyfunc_model), "pyfunc", _pyfunc_fields(pyfunc_model)
            outputs = _pyfunc_outputs(pyfunc_model)
            native, batchable = None, True
            fast = sklearn_native(pyfunc_model, fields, predict) if "sklearn" in flavours else None
            if fast is not None:
                predict, native = fast[0], f"sklearn/{fast[1]}"
            predict_seconds = _timed_call(predict, example_records(pyfunc_model, fields or ()))
        seconds = time.perf_counter() - started
        log.info(
            "loaded %s version %s (%s%s) in %.2fs",
            ref.name,
            version,
            flavour,
            f", native {native}" if native else "",
            seconds,
        )
        return LoadedModel(
            name=ref.name,
            version=version,
            flavour=flavour,
            predict=predict,
            input_fields=fields,
            output_fields=outputs,
            model_id=getattr(mv, "model_id", None) or info.model_uuid,
            run_id=mv.run_id,
            load_seconds=seconds,
            batchable=batchable,
            native=native,
            predict_seconds=predict_seconds,
        )
