"""`POST /v1/feedback`: a rating of one served prediction -> MLflow trace feedback + FeedbackRecorded.

404 when the request/trace is unknown; 422 naming the field for a bad rating or oversized comment or
correction; a repeated submission (same request, same user) answers 202 with the first feedback id and
is not recorded or counted again; 503 (retry later) when MLflow or Kafka cannot take it, in which case
nothing was counted and the same submission may be sent again. The event is the record that counts;
the assessment on the MLflow trace follows in the background as soon as the trace is stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator
from redis.exceptions import RedisError

from events import FeedbackRating, FeedbackRecorded
from services.gateway import metrics
from services.gateway.request_log import ServedRequest
from services.shared.identifiers import REQUEST_ID_PATTERN, TRACE_ID_PATTERN
from services.shared.kafka.publisher import PublishError

if TYPE_CHECKING:
    from services.gateway.api import Gateway

log = logging.getLogger(__name__)

MAX_COMMENT = 2000
MAX_CORRECTION_BYTES = 16_384


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(
        default=None, pattern=REQUEST_ID_PATTERN, description="`request_id` of the predict response."
    )
    trace_id: str | None = Field(
        default=None, pattern=TRACE_ID_PATTERN, description="`trace_id` of the predict response."
    )
    rating: FeedbackRating
    corrected_output: JsonValue = None
    comment: str | None = Field(default=None, max_length=MAX_COMMENT)
    user_id: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("corrected_output")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if value is not None and len(json.dumps(value)) > MAX_CORRECTION_BYTES:
            raise ValueError(f"corrected_output is larger than {MAX_CORRECTION_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _one_reference(self) -> FeedbackRequest:
        if self.request_id is None and self.trace_id is None:
            raise ValueError("request_id or trace_id is required")
        return self


def add_feedback_routes(app: FastAPI, gateway: Callable[[], Gateway]) -> None:
    async def served(gw: Gateway, body: FeedbackRequest) -> ServedRequest:
        try:
            found = (
                await gw.request_log.by_request(body.request_id)
                if body.request_id
                else await gw.request_log.by_trace(body.trace_id or "")
            )
        except (RedisError, OSError):
            found = None
        if found is not None:
            return found
        try:  # the log expired or Redis is down: MLflow's traces are the source of truth
            meta = await run_in_threadpool(_lookup, gw, body)
        except Exception as exc:
            raise HTTPException(503, detail=f"cannot look up the request: {exc}") from exc
        if meta is None:
            ref = f"request_id {body.request_id!r}" if body.request_id else f"trace_id {body.trace_id!r}"
            raise HTTPException(404, detail=f"no served prediction with {ref}")
        return ServedRequest(
            request_id=meta.get("flywheel.request_id", body.request_id or ""),
            model=meta.get("flywheel.model", ""),
            version=meta.get("flywheel.version", ""),
            variant=meta.get("flywheel.variant") or None,
            trace_id=meta.get("trace_id"),
        )

    @app.post(
        "/v1/feedback",
        status_code=202,
        tags=["feedback"],
        responses={
            404: {"description": "No served prediction with this request_id / trace_id."},
            413: {"description": "Body larger than the limit."},
            422: {"description": "Invalid body; `field` names the culprit."},
            503: {"description": "MLflow, Redis or Kafka cannot take it now; nothing was counted, retry."},
        },
    )
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        gw = gateway()
        request = await served(gw, body)
        if body.trace_id and request.trace_id and body.trace_id != request.trace_id:
            raise HTTPException(422, detail={"field": "trace_id", "message": "does not belong to request_id"})
        feedback_id = uuid.uuid4().hex
        seen_key = gw.keys.feedback_seen(request.request_id, body.user_id or "anonymous")
        try:
            first = await gw.redis.set(seen_key, feedback_id, nx=True, ex=gw.settings.request_log_ttl_s)
            if not first:
                return {"feedback_id": await gw.redis.get(seen_key) or feedback_id, "duplicate": True}
        except (RedisError, OSError) as exc:
            raise HTTPException(503, detail=f"feedback store unavailable: {exc}") from exc
        try:
            event = FeedbackRecorded(
                producer=f"gateway/{gw.replica}",
                feedback_id=feedback_id,
                model=request.model,
                version=request.version,
                variant=request.variant,
                rollout_id=request.rollout_id,
                request_id=request.request_id,
                trace_id=request.trace_id,
                rating=body.rating,
                corrected_output=body.corrected_output,
                comment=body.comment,
                user_id=body.user_id,
                inputs=request.inputs,
                outputs=request.outputs,
                served_at=request.served_at,
            )
            if gw.publisher is None:
                raise PublishError("inference/feedback events are disabled on this gateway")
            await gw.publisher.publish_events([event])
        except Exception as exc:
            await _forget(gw, seen_key)
            log.warning("feedback on %s not recorded: %s", request.request_id, exc)
            raise HTTPException(503, detail=f"feedback not recorded, retry later: {exc}") from exc
        if request.trace_id:
            _record_on_trace(gw, request.trace_id, body)
        return {"feedback_id": feedback_id, "duplicate": False}


_TRACE_WRITES: set[asyncio.Task[None]] = set()
_TRACE_WRITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
TRACE_WAIT_S = 120.0


def _record_on_trace(gw: Gateway, trace_id: str, body: FeedbackRequest) -> None:
    """Attach the feedback to the MLflow trace in the background.

    The event is already on Kafka (that is what counts); the trace of a prediction served a moment ago may
    still be on its way to MLflow (traces are exported off the request path), so the assessment is written
    as soon as the trace exists, waiting up to TRACE_WAIT_S. A failure is logged and counted.
    """

    async def write() -> None:
        loop = asyncio.get_running_loop()
        async with _TRACE_WRITERS.setdefault(loop, asyncio.Semaphore(4)):
            try:
                await run_in_threadpool(
                    gw.feedback.record_feedback,
                    trace_id,
                    body.rating.value,
                    body.corrected_output,
                    body.comment,
                    body.user_id,
                    TRACE_WAIT_S,
                )
                metrics.FEEDBACK_ON_TRACE.labels("recorded").inc()
            except Exception as exc:
                metrics.FEEDBACK_ON_TRACE.labels("failed").inc()
                log.warning("feedback not attached to trace %s: %s", trace_id, exc)

    task = asyncio.get_running_loop().create_task(write())
    _TRACE_WRITES.add(task)
    task.add_done_callback(_TRACE_WRITES.discard)


async def flush_trace_writes(timeout_s: float = 10.0) -> None:
    """Wait (bounded) for pending trace assessments, e.g. at shutdown."""
    if _TRACE_WRITES:
        await asyncio.wait(list(_TRACE_WRITES), timeout=timeout_s)


def _lookup(gw: Gateway, body: FeedbackRequest) -> dict[str, str] | None:
    if body.request_id:
        return gw.feedback.find_request(body.request_id)
    import mlflow

    mlflow.set_tracking_uri(gw.settings.mlflow_tracking_uri)
    try:
        trace = mlflow.get_trace(body.trace_id or "")
    except Exception:
        return None
    if trace is None:
        return None
    return {"trace_id": trace.info.trace_id, **dict(trace.info.trace_metadata or {})}


async def _forget(gw: Gateway, key: str) -> None:
    try:
        await gw.redis.delete(key)
    except (RedisError, OSError):
        log.warning("could not clear %s; a retry of this feedback will be reported as duplicate", key)


__all__ = ["FeedbackRequest", "add_feedback_routes"]
