"""The gateway's second use case: record a rating of one served prediction.

A rating (`record_feedback`) is refused before anything is looked up or counted when it carries no valid
feedback token for this request and user (401/403) or exceeds the user's rate (429); then it is checked
against what was served (the request log; a correction against the model's output schema), deduplicated
per (request, user), published as FeedbackRecorded before the 202, and attached to the MLflow trace in the
background — the trace is written first when the prediction's was not (only a sampled share is written as
it is served): materialised from the request log under the trace id the response returned, with the
prediction's original timing, inputs, outputs and version. Errors are HTTP statuses (`HTTPException`) as the
API documents them.

Keys (the gateway's own): `{prefix}:feedback-seen:{request_id}:{user}` (the feedback id of a user's first
rating of a request: a repeat is answered as a duplicate) and `{prefix}:gateway:feedback-rate:{user}:{minute}`
(a user's ratings in one minute).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from typing import Any

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError

from events import FeedbackRecorded
from services.gateway import metrics
from services.gateway.domain.feedback_token import TokenRejected
from services.gateway.domain.inputs import InputError
from services.gateway.domain.model_manager import ModelRef
from services.gateway.domain.outputs import check_correction
from services.gateway.domain.served import ServedRequest
from services.gateway.entrypoints.deps import Gateway
from services.gateway.schemas import FeedbackRequest
from services.shared.carry import carry
from services.shared.kafka.publisher import PublishError

log = logging.getLogger(__name__)


async def record_feedback(gw: Gateway, body: FeedbackRequest) -> dict[str, Any]:
    """A rating of one served prediction -> FeedbackRecorded (before the 202) + MLflow trace feedback.

    A repeated submission (same request, same user) answers with the first feedback id and is not
    counted again; when Redis, MLflow or Kafka cannot confirm it, 503 asks for a retry (when a broker dies
    mid-write the rating may be stored although unconfirmed: the retry is recognised and counts once).
    Refused before anything is looked up or counted: feedback without a valid token for this request and
    user (401; 403 once expired or while no secret is configured), above the user's rate (429)."""
    request = await _served(gw, body)
    if body.trace_id and request.trace_id and body.trace_id != request.trace_id:
        raise HTTPException(422, detail={"field": "trace_id", "message": "does not belong to request_id"})
    _authorize(gw, body, request.request_id)
    await _within_rate(gw, body.user_id)
    await _check_correction(gw, request, body)
    feedback_id = uuid.uuid4().hex
    seen_key = gw.keys.key("feedback-seen", request.request_id, body.user_id or "anonymous")
    try:
        first = await gw.redis.set(seen_key, feedback_id, nx=True, ex=gw.settings.request_log_ttl_s)
        if not first:
            return {"feedback_id": await gw.redis.get(seen_key) or feedback_id, "duplicate": True}
    except (RedisError, OSError) as exc:
        raise HTTPException(503, detail=f"feedback store unavailable: {exc}") from exc
    try:
        event = carry(
            request,
            FeedbackRecorded,
            producer=f"gateway/{gw.replica}",
            feedback_id=feedback_id,
            rating=body.rating,
            corrected_output=body.corrected_output,
            comment=body.comment,
            user_id=body.user_id,
        )
        if gw.publisher is None:
            raise PublishError("inference/feedback events are disabled on this gateway")
        await gw.publisher.publish_events([event])
    except Exception as exc:
        await _forget(gw, seen_key)
        log.warning("feedback on %s not recorded: %s", request.request_id, exc)
        raise HTTPException(503, detail=f"feedback not recorded, retry later: {exc}") from exc
    if request.trace_id:
        if not request.traced and request.started_ns is not None:
            gw.tracer.write(request)  # its trace was not written when served: write it now
        _record_on_trace(gw, request.trace_id, body)
    return {"feedback_id": feedback_id, "duplicate": False}


def _authorize(gw: Gateway, body: FeedbackRequest, request_id: str) -> None:
    """Only whoever received the prediction can rate it: its feedback token (see domain/feedback_token)."""
    if gw.settings.feedback_open:
        return
    if gw.tokens is None:
        metrics.REJECTED.labels("feedback_tokens_not_configured").inc()
        raise HTTPException(403, detail="feedback is closed: no FLYWHEEL_FEEDBACK_SECRET to verify tokens")
    rejected = gw.tokens.check(body.feedback_token, request_id, body.user_id, time.time())
    if rejected is None:
        return
    metrics.REJECTED.labels(f"feedback_token_{rejected.value}").inc()
    if rejected is TokenRejected.EXPIRED:
        raise HTTPException(403, detail="feedback_token expired")
    raise HTTPException(
        401,
        detail=f"feedback_token {rejected.value}: send the token of the predict response, with its user_id",
    )


async def _within_rate(gw: Gateway, user_id: str | None) -> None:
    limit = gw.settings.feedback_rate_per_minute
    if not limit:
        return
    minute = int(time.time() // 60)
    key = gw.keys.key("gateway", "feedback-rate", user_id or "anonymous", str(minute))
    try:
        async with gw.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise HTTPException(503, detail=f"feedback store unavailable: {exc}") from exc
    if int(count) > limit:
        metrics.REJECTED.labels("feedback_rate").inc()
        raise HTTPException(
            429,
            detail=f"more than {limit} ratings per minute from this user",
            headers={"Retry-After": str(60 - int(time.time()) % 60)},
        )


async def _check_correction(gw: Gateway, request: ServedRequest, body: FeedbackRequest) -> None:
    """A correction becomes a training label: it must be an output the rated model could give."""
    if body.corrected_output is None:
        return
    try:
        loaded = await run_in_threadpool(gw.manager.load, ModelRef(request.model, version=request.version))
    except Exception as exc:
        raise HTTPException(503, detail=f"cannot check the correction against the model now: {exc}") from exc
    try:
        check_correction(body.corrected_output, loaded.output_fields)
    except InputError as exc:
        raise HTTPException(422, detail={"field": exc.field, "message": exc.message}) from exc


async def _served(gw: Gateway, body: FeedbackRequest) -> ServedRequest:
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
        traced=True,  # found through its trace
    )


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


_TRACE_WRITES: set[asyncio.Task[None]] = set()
_TRACE_WRITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
TRACE_WAIT_S = 120.0


def _record_on_trace(gw: Gateway, trace_id: str, body: FeedbackRequest) -> None:
    """Attach the feedback to the MLflow trace in the background.

    The event is already on Kafka (that is what counts); the trace may still be on its way to MLflow
    (written off the request path, by the export process), so the assessment is written as soon as the
    trace exists, waiting up to TRACE_WAIT_S. A failure is logged and counted.
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
