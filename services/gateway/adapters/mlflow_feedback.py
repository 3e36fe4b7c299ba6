"""FeedbackService: human feedback recorded on the MLflow trace of the prediction it rates.

Same names and behaviour as the toolkit it replaces (REFERENCE.md): `record_feedback(trace_id, rating,
corrected_output=None, comment=None, user_id=None)` logs `user_rating` (with the comment as rationale),
`corrected_output` (as an expectation: what the answer should have been) and `comment`, with the user as
the HUMAN source; `validate_trace_exists(trace_id)` refuses feedback on unknown traces. Blocking (MLflow's
client is synchronous): call from a thread in async code.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
from mlflow.entities import AssessmentSource

from services.gateway.domain.served import trace_id_of
from services.shared import trace_facts
from services.shared.identifiers import filter_literal

log = logging.getLogger(__name__)


class FeedbackService:
    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    def validate_trace_exists(self, trace_id: str, wait_s: float = 0.0) -> bool:
        """True when MLflow knows the trace; waits up to `wait_s` for one still being exported."""
        mlflow.set_tracking_uri(self.tracking_uri)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if mlflow.get_trace(trace_id) is not None:
                    return True
            except Exception as exc:
                if "does not exist" not in str(exc).lower() and "not found" not in str(exc).lower():
                    raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def find_request(self, request_id: str) -> dict[str, str] | None:
        """The `flywheel.*` facts and trace id of the prediction with `request_id` (source of truth when
        the request log expired): its trace is `tr-` + the request id; a trace written before trace ids
        were derived is found by its facts."""
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            trace = mlflow.get_trace(trace_id_of(request_id))
        except Exception as exc:
            if "does not exist" not in str(exc).lower() and "not found" not in str(exc).lower():
                raise
            trace = None
        if trace is None:
            locations = [e.experiment_id for e in mlflow.search_experiments()]
            for clause in trace_facts.search_filters(trace_facts.REQUEST_ID, filter_literal(request_id)):
                found = mlflow.search_traces(
                    locations=locations, filter_string=clause, max_results=1, return_type="list"
                )
                if found:
                    trace = found[0]
                    break
        if trace is None:
            return None
        info = trace.info
        return {"trace_id": info.trace_id, **trace_facts.facts_of(info.tags, info.trace_metadata)}

    def record_feedback(
        self,
        trace_id: str,
        rating: str,
        corrected_output: Any = None,
        comment: str | None = None,
        user_id: str | None = None,
        wait_s: float = 5.0,
    ) -> None:
        mlflow.set_tracking_uri(self.tracking_uri)
        source = AssessmentSource(source_type="HUMAN", source_id=user_id or "anonymous")
        deadline = time.monotonic() + wait_s
        while True:  # the trace may still be on its way from the serving replica's async exporter
            try:
                mlflow.log_feedback(
                    trace_id=trace_id, name="user_rating", value=rating, source=source, rationale=comment
                )
                break
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)
        if corrected_output is not None:
            mlflow.log_expectation(
                trace_id=trace_id, name="corrected_output", value=corrected_output, source=source
            )
        if comment:
            mlflow.log_feedback(trace_id=trace_id, name="comment", value=comment, source=source)
