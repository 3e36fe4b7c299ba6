"""What a replica served for one request: the request log's entry and the source of its MLflow trace (pure).

A trace is written to MLflow only when it is needed (`trace_wanted`): a sampled share of predictions,
every error, and every prediction that receives feedback. A prediction's trace id is nevertheless fixed
when it is served (`trace_id_of` the request id: MLflow's `tr-` + 32 hex form) and returned in the
response; the `ServedRequest` keeps everything the trace needs (timing, inputs, outputs, version,
metadata), so the trace of a prediction rated a week later is written then, from this record, under the id
the response carried.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, JsonValue

TRACE_ID_PREFIX = "tr-"


class ServedRequest(BaseModel):
    """One served prediction (or one that failed: `status="error"`). Written to the request log after a
    successful prediction; handed to the trace writer when its trace is wanted."""

    model_config = ConfigDict(extra="ignore")

    request_id: str
    model: str
    version: str
    variant: str | None = None
    alias: str | None = None
    rollout_id: str | None = None
    trace_id: str | None = None
    replica: str | None = None
    user_id: str | None = None
    model_id: str | None = None
    inputs: JsonValue = None
    outputs: JsonValue = None
    served_at: datetime | None = None
    started_ns: int | None = None  # wall clock (ns since the epoch) when the request began
    latency_ms: float | None = None
    status: str = "ok"
    error_type: str | None = None
    error: str | None = None
    traced: bool = False  # its trace was written when it was served (sampled, or an error)
    # Write its trace's info with MLflow's metadata too (the logged-model link, the client request id):
    # rated and failed predictions. Sampled ones go in batches of spans alone (`trace_writer`).
    linked: bool = False


def new_request_id() -> str:
    """32 random hex digits (uuid4): a request's id, and (after `tr-`) its trace's id."""
    return uuid.uuid4().hex


def trace_id_of(request_id: str) -> str:
    """The trace id of a request, in MLflow's V3 form: `tr-` + the 128-bit OpenTelemetry trace id as 32 hex
    digits — the request id's own digits, so either id names the other and no mapping is stored."""
    return TRACE_ID_PREFIX + request_id


def request_id_of(trace_id: str) -> str | None:
    """The request id a trace id was made from (None for a trace id not made by `trace_id_of`)."""
    hex_part = trace_id.removeprefix(TRACE_ID_PREFIX)
    return hex_part if len(hex_part) == 32 and trace_id.startswith(TRACE_ID_PREFIX) else None


def sampled(request_id: str, share: float) -> bool:
    """Deterministic per request: the same request id is always in or out of the sample."""
    if share >= 1:
        return True
    if share <= 0:
        return False
    try:
        bucket = int(request_id[:8], 16) / 0x1_0000_0000
    except ValueError:
        return False
    return bucket < share


def trace_wanted(request_id: str, share: float, *, error: bool) -> bool:
    """Written when served: every error, and the sampled share. (Rated ones are written when rated.)"""
    return error or sampled(request_id, share)
