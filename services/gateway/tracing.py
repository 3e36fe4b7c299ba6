"""One MLflow trace per prediction, so feedback can be attached to exactly what the user saw.

Traces are exported by MLflow's async exporter (off the request path); the trace id is known as soon as
the root span starts, which is what the response returns. The request id is the trace's
`client_request_id` and also metadata `flywheel.request_id`, so both can be searched
(`search_traces(filter_string="metadata.`flywheel.request_id` = '...'")`). A tracing failure never fails
a prediction: it is counted and the response carries `trace_id: null`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlflow

from services.gateway import metrics
from services.gateway.model_loader import LoadedModel

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "flywheel.request_id"


@dataclass
class TraceHandle:
    trace_id: str | None
    span: Any = None

    def set_outputs(self, outputs: Any) -> None:
        if self.span is not None:
            with contextlib.suppress(Exception):
                self.span.set_outputs(outputs)


class PredictionTracer:
    def __init__(self, tracking_uri: str, experiment: str, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._tracking_uri = tracking_uri
        self._experiment = experiment
        self._experiment_id: str | None = None
        # Traces are queued and sent by MLflow's background exporter; flush often so feedback can find them.
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "true")
        os.environ.setdefault("MLFLOW_ASYNC_TRACE_LOGGING_MAX_INTERVAL_MILLIS", "100")

    def _ensure_experiment(self) -> str | None:
        if self._experiment_id is None:
            mlflow.set_tracking_uri(self._tracking_uri)
            experiment = mlflow.set_experiment(self._experiment)
            self._experiment_id = experiment.experiment_id
        return self._experiment_id

    def prepare(self) -> None:
        """Create the experiment up front (best effort: retried on the first traced request)."""
        if self.enabled:
            try:
                self._ensure_experiment()
            except Exception as exc:
                log.warning("tracing experiment %r not ready yet: %s", self._experiment, exc)

    @contextlib.contextmanager
    def trace(
        self,
        *,
        request_id: str,
        model: LoadedModel,
        alias: str | None,
        variant: str,
        replica: str,
        user_id: str | None,
        inputs: Any,
    ) -> Iterator[TraceHandle]:
        if not self.enabled:
            yield TraceHandle(None)
            return
        try:
            self._ensure_experiment()
            span_cm = mlflow.start_span(name=f"predict {model.name}", span_type="CHAIN")
            span = span_cm.__enter__()
        except Exception as exc:
            metrics.TRACE_ERRORS.inc()
            log.debug("trace not started: %s", exc)
            yield TraceHandle(None)
            return
        handle = TraceHandle(span.trace_id, span)
        try:
            with contextlib.suppress(Exception):
                span.set_inputs(inputs)
                span.set_attributes({"model": model.name, "version": model.version, "variant": variant})
                mlflow.update_current_trace(
                    client_request_id=request_id,
                    model_id=model.model_id,
                    user=user_id,
                    metadata={
                        REQUEST_ID_KEY: request_id,
                        "flywheel.model": model.name,
                        "flywheel.version": model.version,
                        "flywheel.alias": alias or "",
                        "flywheel.variant": variant,
                        "flywheel.replica": replica,
                    },
                )
            yield handle
        except BaseException as exc:
            span_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            span_cm.__exit__(None, None, None)
