"""The traces a gateway writes leave its process: a child process builds them and writes them to MLflow.

The request path only decides whether a prediction's trace is wanted now (`domain/served.trace_wanted`)
and hands its `ServedRequest` over (`child_pipe`: a bounded queue, never blocking; pydantic JSON lines on
the stdin of one child process, `python -m services.gateway.adapters.trace_writer`), which builds the MLflow
trace (`trace_builder.build_trace`) and writes batches of them:

- `start_trace(info)` per trace (the only way trace metadata and `client_request_id` reach the server;
  MLflow has no batch call for it), then
- one `log_spans` call for all spans of the batch (the server stores them in one transaction). If the
  server cannot store spans (`log_spans` unsupported), each trace's data is uploaded as an artifact
  instead, like MLflow's own exporter does.

No MLflow tracing runs in the gateway process (no OpenTelemetry span, trace manager or exporter thread per
prediction): the trace id is fixed when the prediction is served and the trace is written under it.
Nothing here can fail a prediction: a full queue drops the trace and counts it
(`flywheel_gateway_trace_exports_total{outcome="dropped"}` and `TRACE_ERRORS`), a dead child is
restarted. The child runs at a lower CPU priority (`nice`). The server side is not cheap: StartTraceV3
costs the MLflow server (one worker, sqlite) about 8-10 ms of CPU per trace on a small machine (roughly
80-100 traces/s), which is why only the traces that are needed are written (a sampled share, errors, rated
predictions). `flush()` waits until everything handed over so far is written; `close()` flushes and stops
the child. When the gateway goes away (EOF on the child's stdin, or SIGTERM/SIGINT to the process group)
the child keeps writing what it has for at most `ExportLimits.drain_s`, then exits.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from services.gateway import metrics
from services.gateway.adapters.child_loop import ChildLimits
from services.gateway.adapters.child_pipe import ChildPipe
from services.gateway.domain.served import ServedRequest

TRACE_EXPORTS = Counter(
    "flywheel_gateway_trace_exports_total",
    "Traces handed to the trace export process, by outcome (exported, failed, dropped)",
    ["outcome"],
)
TRACE_BACKLOG = Gauge(
    "flywheel_gateway_trace_export_backlog", "Traces handed over but not yet written to MLflow"
)


def _count(kind: str, n: int) -> None:
    TRACE_EXPORTS.labels("exported" if kind == "ok" else "dropped" if kind == "dropped" else "failed").inc(n)
    if kind != "ok":
        metrics.TRACE_ERRORS.inc(n)


class TraceExportProcess(ChildPipe[ServedRequest]):
    """The served requests whose traces are to be written -> the trace export child."""

    def __init__(self, tracking_uri: str, experiment: str, limits: ChildLimits = ChildLimits()) -> None:
        super().__init__(
            "trace-export",
            "services.gateway.adapters.trace_writer",
            [tracking_uri, experiment, limits.to_arg()],
            lambda served: served.model_dump_json().encode(),
            _count,
            TRACE_BACKLOG,
            max_queue=limits.max_queue,
            # MLflow retries a failed StartTraceV3 for up to 500 s; while it does, the backlog only grows.
            env={"MLFLOW_ASYNC_TRACE_LOGGING_RETRY_TIMEOUT": "30"},
        )
        self.tracking_uri, self.experiment = tracking_uri, experiment
