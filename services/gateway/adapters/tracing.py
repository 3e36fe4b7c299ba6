"""MLflow traces proportional to need, not to traffic.

Every prediction gets a trace id when it is served (`domain/served.trace_id_of` its request id), and the
response returns it. The trace itself is written to MLflow only when it is needed:
- a sampled share of predictions (`FLYWHEEL_TRACE_SAMPLE`, deterministic per request id),
- every prediction that failed,
- every prediction that receives feedback: the feedback path materialises the trace from the request log
  (`ServedRequest`: original timing, inputs, outputs, version, metadata) under the id the response
  returned, then attaches the assessment (`services/gateway/feedback.py`).
The request path only decides and enqueues; a child process builds and writes the traces in batches
(`trace_export`). A tracing failure never fails a prediction: it is counted.

Why: StartTraceV3 costs the MLflow server ~8-10 ms of CPU per trace (~80-100 traces/s for one server);
one trace per prediction capped a deployment at the trace store's ingest rate, and past the export queue
traces were dropped at random — including ones users later rated.
"""

from __future__ import annotations

from services.gateway.adapters.child_loop import ChildLimits
from services.gateway.adapters.trace_export import TraceExportProcess
from services.gateway.domain.served import ServedRequest, trace_id_of, trace_wanted


class PredictionTracer:
    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        enabled: bool = True,
        sample: float = 0.01,
        limits: ChildLimits = ChildLimits(),
    ) -> None:
        self.enabled = enabled
        self.sample = sample
        self._channel = TraceExportProcess(tracking_uri, experiment, limits)

    def prepare(self) -> None:
        """Start the export process up front (it creates the experiment when missing)."""
        if self.enabled:
            self._channel.start()

    def trace_id(self, request_id: str) -> str | None:
        """The id this prediction's trace has (and will be written under); None with tracing off."""
        return trace_id_of(request_id) if self.enabled else None

    def wanted_now(self, request_id: str, *, error: bool) -> bool:
        """Is the trace of this prediction written as it is served (sampled, or an error)?"""
        return self.enabled and trace_wanted(request_id, self.sample, error=error)

    def write(self, served: ServedRequest, *, linked: bool = False) -> bool:
        """Write the trace of `served` (off the request path; False when it was dropped and counted);
        `linked`: with MLflow's trace metadata too (the logged-model link), for rated and failed ones."""
        if not self.enabled or not served.trace_id:
            return False
        return self._channel.submit(served.model_copy(update={"linked": True}) if linked else served)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the traces handed over so far are written to MLflow."""
        return self._channel.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the export process."""
        self._channel.close(timeout_s)
