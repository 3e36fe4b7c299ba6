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
from services.gateway.domain.feedback_token import ServedFacts, TokenRejected
from services.gateway.domain.inputs import InputError
from services.gateway.domain.model_manager import ModelRef
from services.gateway.domain.outputs import check_correction
from services.gateway.domain.served import ServedRequest, request_id_of, trace_id_of
from services.gateway.entrypoints.deps import Gateway
from services.gateway.schemas import FeedbackRequest
from services.shared import trace_facts
from services.shared.carry import carry
from services.shared.kafka.publisher import PublishError

log = logging.getLogger(__name__)


async def record_feedback(gw: Gateway, body: FeedbackRequest) -> dict[str, Any]:
    """A rating of one served prediction -> FeedbackRecorded (before the 202) + MLflow trace feedback.

    Refused before anything is looked up or counted: feedback without a valid token for this request and
    user (401; 403 once expired or while no secret is configured), above the user's rate (429). A token
    carries the served facts (model, version, variant, rollout), so the rating is accepted at once on any
    replica; the request log only enriches it (inputs and outputs for datasets, the trace), waited for a
    moment (`ENRICH_WAIT_S`) because the serving replica writes it in batches. A repeated submission (same
    request, same user) answers with the first feedback id and is not counted again; when Redis or Kafka
    cannot confirm it, 503 asks for a retry (a broker dying mid-write may store it although unconfirmed:
    the retry is recognised and counts once). 404 only for a request no log and no trace knows and no
    token vouches for; a lookup that cannot be made is 503."""
    request_id = await _request_id(gw, body)
    facts = _authorize(gw, body, request_id)
    await _within_rate(gw, body.user_id)
    request = await _served(gw, body, request_id, facts)
    if body.trace_id and request.trace_id and body.trace_id != request.trace_id:
        raise HTTPException(422, detail={"field": "trace_id", "message": "does not belong to request_id"})
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
    if not request.inputs and request.served_at is None:
        metrics.FEEDBACK_UNENRICHED.inc()  # accepted on the token's facts; the log had no entry yet
    if request.trace_id:
        _record_on_trace(gw, request, body)
    return {"feedback_id": feedback_id, "duplicate": False}


async def _request_id(gw: Gateway, body: FeedbackRequest) -> str:
    """The rated request: as sent, or named by its trace id (`tr-` + the request id; an older trace id
    is looked up in the request log's mapping)."""
    if body.request_id:
        return body.request_id
    trace_id = body.trace_id or ""
    derived = request_id_of(trace_id)
    if derived and (
        gw.tokens is None or gw.tokens.check(body.feedback_token, derived, body.user_id, time.time()) is None
    ):
        return derived
    try:
        legacy = await gw.request_log.request_of_trace(trace_id)
    except (RedisError, OSError) as exc:
        raise HTTPException(503, detail=f"request log unavailable: {exc}", headers=RETRY) from exc
    return legacy or derived or ""


def _authorize(gw: Gateway, body: FeedbackRequest, request_id: str) -> ServedFacts | None:
    """Only whoever received the prediction can rate it: its feedback token (see domain/feedback_token).
    Returns the served facts the token carries (None for a token of the first form, or open feedback)."""
    if gw.settings.feedback_open and not body.feedback_token:
        return None
    if gw.tokens is None:
        if gw.settings.feedback_open:
            return None
        metrics.REJECTED.labels("feedback_tokens_not_configured").inc()
        raise HTTPException(403, detail="feedback is closed: no FLYWHEEL_FEEDBACK_SECRET to verify tokens")
    verified = gw.tokens.verify(body.feedback_token, request_id, body.user_id, time.time())
    if verified.rejected is None:
        return verified.facts
    if gw.settings.feedback_open:
        return None
    metrics.REJECTED.labels(f"feedback_token_{verified.rejected.value}").inc()
    if verified.rejected is TokenRejected.EXPIRED:
        raise HTTPException(403, detail="feedback_token expired")
    raise HTTPException(
        401,
        detail=f"feedback_token {verified.rejected.value}: send the token of the predict response, "
        "with its user_id",
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


async def _served(
    gw: Gateway, body: FeedbackRequest, request_id: str, facts: ServedFacts | None
) -> ServedRequest:
    """What was served: the request log's entry (waited for a moment), else the token's facts, else the
    MLflow trace. 503 when it cannot be looked up now, 404 only when nothing knows or vouches for it."""
    log_down: Exception | None = None
    try:
        found = await gw.request_log.wait_for(request_id, ENRICH_WAIT_S)
    except (RedisError, OSError) as exc:
        found, log_down = None, exc
    if found is not None:
        return found
    if facts is not None:  # served, says the token: rate it now, without inputs and outputs
        return ServedRequest(
            request_id=request_id,
            model=facts.model,
            version=facts.version,
            variant=facts.variant,
            rollout_id=facts.rollout_id,
            trace_id=trace_id_of(request_id) if gw.tracer.enabled else None,
            user_id=body.user_id,
        )
    try:  # the log expired, or Redis is down: MLflow's traces (written for the sampled and rated ones)
        meta = await run_in_threadpool(_lookup, gw, body, request_id)
    except Exception as exc:
        raise HTTPException(503, detail=f"cannot look up the request: {exc}", headers=RETRY) from exc
    if meta is not None:
        return ServedRequest(
            request_id=meta.get(trace_facts.REQUEST_ID, request_id),
            model=meta.get(trace_facts.MODEL, ""),
            version=meta.get(trace_facts.VERSION, ""),
            variant=meta.get(trace_facts.VARIANT) or None,
            trace_id=meta.get("trace_id"),
            traced=True,  # found through its trace
        )
    if log_down is not None:
        raise HTTPException(503, detail=f"request log unavailable: {log_down}", headers=RETRY)
    if body.feedback_token and gw.tokens is not None and not gw.settings.feedback_open:
        # A valid token of the first form proves the prediction was served: its entry is on its way.
        raise HTTPException(503, detail="the rated prediction is not visible yet; retry", headers=RETRY)
    ref = f"request_id {body.request_id!r}" if body.request_id else f"trace_id {body.trace_id!r}"
    raise HTTPException(404, detail=f"no served prediction with {ref}")


def _lookup(gw: Gateway, body: FeedbackRequest, request_id: str) -> dict[str, str] | None:
    if body.request_id or not body.trace_id:
        return gw.feedback.find_request(request_id)
    import mlflow

    mlflow.set_tracking_uri(gw.settings.mlflow_tracking_uri)
    try:
        trace = mlflow.get_trace(body.trace_id or "")
    except Exception:
        return None
    if trace is None:
        return None
    info = trace.info
    return {"trace_id": info.trace_id, **trace_facts.facts_of(info.tags, info.trace_metadata)}


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
ENRICH_WAIT_S = 0.25  # how long a rating waits for the serving replica's request log entry (batched 20 ms)
RETRY = {"Retry-After": "1"}


def _record_on_trace(gw: Gateway, request: ServedRequest, body: FeedbackRequest) -> None:
    """Attach the feedback to the MLflow trace in the background, writing the trace first when it was not
    written as the prediction was served.

    The event is already on Kafka (that is what counts). A rating accepted on its token's facts alone
    waits (up to TRACE_WAIT_S) for the serving replica's request log entry, from which the trace is
    materialised; the trace may then still be on its way to MLflow (written by the export process), so the
    assessment is written as soon as the trace exists, waiting up to TRACE_WAIT_S. A failure is logged
    and counted."""
    trace_id = request.trace_id or ""

    async def write() -> None:
        loop = asyncio.get_running_loop()
        async with _TRACE_WRITERS.setdefault(loop, asyncio.Semaphore(4)):
            try:
                served = request
                if not request.traced and request.served_at is None:  # the token's facts only
                    entry = await gw.request_log.wait_for(request.request_id, TRACE_WAIT_S)
                    if entry is None:
                        raise LookupError("no request log entry to write its trace from")
                    served = entry
                if not served.traced and served.started_ns is not None:
                    gw.tracer.write(served, linked=True)  # not written when served: write it now
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
