"""One MLflow trace per prediction, so feedback can be attached to exactly what the user saw.

The trace is built in memory by MLflow (`mlflow.start_span`); when it ends it is handed to a child
process that writes it to MLflow (`trace_export`), so the HTTP work of exporting does not run in the
gateway process. The trace id is known as soon as the root span starts, which is what the response
returns, and it is the id the trace is stored under (visible within a few hundred ms; later while the
machine is saturated, since the exporter runs at a lower CPU priority). The request id is the trace's
`client_request_id` and also metadata `flywheel.request_id`, so both can be searched
(`search_traces(filter_string="metadata.`flywheel.request_id` = '...'")`). A tracing failure never fails
a prediction: it is counted and the response carries `trace_id: null`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlflow

from services.gateway import metrics
from services.gateway.adapters.model_loader import LoadedModel
from services.gateway.adapters.trace_export import (
    ShippingSpanExporter,
    TraceExportProcess,
    install,
    uninstall,
)
from services.gateway.adapters.trace_writer import ExportLimits

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
    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        enabled: bool = True,
        limits: ExportLimits = ExportLimits(),
    ) -> None:
        self.enabled = enabled
        self._tracking_uri = tracking_uri
        self._experiment = experiment
        self._experiment_id: str | None = None
        self._channel = TraceExportProcess(tracking_uri, limits)
        self._exporter: ShippingSpanExporter | None = None
        self._previous: Any = None
        self._install_lock = threading.Lock()
        self._closed = False
        # Should the export process not be usable (MLflow internals changed), MLflow's own exporter
        # keeps exporting traces, off the request path.
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "true")
        os.environ.setdefault("MLFLOW_ASYNC_TRACE_LOGGING_MAX_INTERVAL_MILLIS", "100")

    def _ensure_experiment(self) -> str | None:
        if self._experiment_id is None:
            mlflow.set_tracking_uri(self._tracking_uri)
            experiment = mlflow.set_experiment(self._experiment)
            self._experiment_id = experiment.experiment_id
        return self._experiment_id

    def _ensure_exporter(self) -> None:
        """Our exporter on MLflow's span processor (which exists once a span was started)."""
        exporter = self._exporter
        if exporter is not None and _current_exporter() is exporter:
            return
        with self._install_lock:
            if self._closed:
                return
            if self._exporter is None:
                self._exporter = ShippingSpanExporter(self._tracking_uri, self._channel)
            previous = install(self._exporter)
            if previous is not None:
                self._previous = previous

    def prepare(self) -> None:
        """Create the experiment and start the export process up front (best effort)."""
        if self.enabled:
            self._channel.start()
            try:
                self._ensure_experiment()
            except Exception as exc:
                log.warning("tracing experiment %r not ready yet: %s", self._experiment, exc)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the traces of finished predictions are written to MLflow."""
        return self._channel.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop tracing through the export process: write what is queued, then stop it."""
        with self._install_lock:
            self._closed = True
            if self._exporter is not None:
                with contextlib.suppress(Exception):
                    uninstall(self._exporter, self._previous)
        self._channel.close(timeout_s)

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
        with contextlib.suppress(Exception):
            self._ensure_exporter()
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


def _current_exporter() -> Any:
    from mlflow.tracing.provider import _get_trace_exporter

    return _get_trace_exporter()
