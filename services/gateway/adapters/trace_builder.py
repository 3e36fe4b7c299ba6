"""A served prediction as an MLflow trace, built from its `ServedRequest` without MLflow's tracer.

The gateway does not run MLflow's in-process tracing (OpenTelemetry spans, a trace manager, an exporter per
prediction): it fixes the trace id when it serves (`domain/served.trace_id_of`) and keeps the facts of the
prediction. The trace is built from them here, in the trace export process, when it is to be written —
at once for a sampled prediction or an error, or days later when the prediction is rated. It is the trace
MLflow's tracer would have made for the same call: one root span `predict {model}` (type CHAIN) with the
inputs, outputs, model/version/variant attributes and the original start and end time; status ERROR with
an exception event for a failed prediction; the facts `flywheel.*` (request id, model, version, alias,
variant, replica: `services/shared/trace_facts`) as root-span attributes that MLflow's span ingestion makes
the trace's tags, and the user as `user.id` (MLflow's trace user). The same facts are also the TraceInfo's
metadata, for the path that writes the info itself (a server without span ingestion: `trace_writer`).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from mlflow.entities import Span, Trace, TraceData, TraceInfo, TraceLocation, TraceState
from mlflow.tracing.constant import (
    TRACE_REQUEST_RESPONSE_PREVIEW_MAX_LENGTH_OSS,
    TRACE_SCHEMA_VERSION,
    TRACE_SCHEMA_VERSION_KEY,
    SpanAttributeKey,
    TraceMetadataKey,
    TraceTagKey,
)

from services.gateway.domain.served import TRACE_ID_PREFIX, ServedRequest
from services.shared import trace_facts


def _b64(value: int, size: int) -> str:
    return base64.b64encode(value.to_bytes(size, "big")).decode()


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _preview(value: Any) -> str:
    text = _json(value)
    limit = TRACE_REQUEST_RESPONSE_PREVIEW_MAX_LENGTH_OSS
    return text if len(text) <= limit else text[: limit - 3] + "..."


def otel_ids(trace_id: str) -> tuple[int, int]:
    """(OpenTelemetry trace id, root span id) of an MLflow V3 trace id (the span id is derived from it)."""
    hex_id = trace_id.removeprefix(TRACE_ID_PREFIX)
    otel_trace_id = int(hex_id, 16)
    span_id = (otel_trace_id >> 64) ^ (otel_trace_id & 0xFFFF_FFFF_FFFF_FFFF) or 1
    return otel_trace_id, span_id


def build_trace(served: ServedRequest, experiment_id: str) -> Trace:
    """The MLflow trace of `served` in experiment `experiment_id` (its `trace_id` must be set)."""
    if not served.trace_id:
        raise ValueError(f"request {served.request_id} has no trace id")
    otel_trace_id, span_id = otel_ids(served.trace_id)
    latency_ms = served.latency_ms or 0.0
    start_ns = served.started_ns or time.time_ns()
    end_ns = start_ns + int(latency_ms * 1_000_000)
    failed = served.status != "ok"
    facts = {
        trace_facts.REQUEST_ID: served.request_id,
        trace_facts.MODEL: served.model,
        trace_facts.VERSION: served.version,
        trace_facts.ALIAS: served.alias or "",
        trace_facts.VARIANT: served.variant or "",
        trace_facts.REPLICA: served.replica or "",
    }
    attributes = {
        SpanAttributeKey.REQUEST_ID: _json(served.trace_id),
        SpanAttributeKey.SPAN_TYPE: _json("CHAIN"),
        SpanAttributeKey.INPUTS: _json(served.inputs),
        "model": _json(served.model),
        "version": _json(served.version),
        "variant": _json(served.variant),
        **{key: _json(value) for key, value in trace_facts.as_span_attributes(facts).items()},
        SpanAttributeKey.TRACE_TAG_PREFIX + TraceTagKey.TRACE_NAME: _json(f"predict {served.model}"),
    }
    if served.user_id:
        attributes[SpanAttributeKey.USER_ID] = _json(served.user_id)
    if not failed:
        attributes[SpanAttributeKey.OUTPUTS] = _json(served.outputs)
    events = []
    if failed:
        events.append(
            {
                "name": "exception",
                "time_unix_nano": end_ns,
                "attributes": {
                    "exception.type": served.error_type or "Exception",
                    "exception.message": served.error or "",
                },
            }
        )
    span = Span.from_dict(
        {
            "trace_id": _b64(otel_trace_id, 16),
            "span_id": _b64(span_id, 8),
            "parent_span_id": None,
            "name": f"predict {served.model}",
            "start_time_unix_nano": start_ns,
            "end_time_unix_nano": end_ns,
            "events": events,
            "status": {
                "code": "STATUS_CODE_ERROR" if failed else "STATUS_CODE_OK",
                "message": f"{served.error_type}: {served.error}" if failed else "",
            },
            "attributes": attributes,
        }
    )
    metadata = {TRACE_SCHEMA_VERSION_KEY: str(TRACE_SCHEMA_VERSION), **facts}
    if served.user_id:
        metadata[TraceMetadataKey.TRACE_USER] = served.user_id
    if served.model_id:
        metadata[TraceMetadataKey.MODEL_ID] = served.model_id
    info = TraceInfo(
        trace_id=served.trace_id,
        trace_location=TraceLocation.from_experiment_id(experiment_id),
        request_time=start_ns // 1_000_000,
        state=TraceState.ERROR if failed else TraceState.OK,
        request_preview=_preview(served.inputs),
        response_preview=None if failed else _preview(served.outputs),
        client_request_id=served.request_id,
        execution_duration=round(latency_ms),
        trace_metadata=metadata,
        tags={TraceTagKey.TRACE_NAME: f"predict {served.model}", **facts},
    )
    return Trace(info=info, data=TraceData(spans=[span]))
