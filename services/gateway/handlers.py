"""The gateway's use cases: serve a prediction, and record a rating of one.

A prediction goes through four steps, each a function here:
1. `route` — which loaded version serves it: a pinned `?version=`, an explicit `?alias=`, else the canary
   split (sticky per user, or per request content; the challenger only once it is loaded here); an alias
   this replica has not served yet is resolved (resolution cache, else MLflow) and loaded once;
2. `check_inputs` — the inputs against the model's signature (422 naming the field);
3. `predict_traced` — the model call inside one MLflow trace (built in process, stored off the request path);
4. `inference_event` / `served_request` — what is reported (InferenceRecorded, off the request path) and
   remembered for feedback (the request log).
Each request reads its model once, so requests in flight finish on the version they started with.

A rating (`record_feedback`) is checked against what was served, deduplicated per (request, user),
published as FeedbackRecorded before the 202, and attached to the MLflow trace in the background.
Errors are HTTP statuses (`HTTPException`) as the API documents them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError

from events import FeedbackRecorded, InferenceRecorded
from services.gateway import metrics
from services.gateway.adapters.model_loader import LoadedModel
from services.gateway.adapters.request_log import ServedRequest
from services.gateway.adapters.traffic_router import routing_key
from services.gateway.domain.feedback_token import TokenRejected
from services.gateway.domain.inputs import InputError, ParsedInputs, parse_inputs
from services.gateway.domain.model_manager import ModelRef
from services.gateway.domain.outputs import check_correction
from services.gateway.entrypoints.deps import Gateway
from services.gateway.schemas import FeedbackRequest, PredictRequest, PredictResponse
from services.shared.kafka.publisher import PublishError
from services.shared.resolution import ResolutionReader

log = logging.getLogger(__name__)


# --- a prediction ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    loaded: LoadedModel
    variant: str  # champion | challenger | pinned
    alias: str | None
    rollout_id: str | None


async def route(
    gw: Gateway, name: str, body: PredictRequest, alias: str | None, version: str | None
) -> Target:
    if not gw.settings.watches(name):
        raise HTTPException(404, detail=f"model {name!r} is not served by this gateway")
    if version is not None:
        return Target(await _pinned(gw, name, version), "pinned", None, None)
    served_alias, variant, rollout_id = await _choose_alias(gw, name, alias, body)
    loaded = gw.table.get(name, served_alias) or await _first_load(gw, name, served_alias)
    return Target(loaded, variant, served_alias, rollout_id)


async def _choose_alias(
    gw: Gateway, name: str, alias: str | None, body: PredictRequest
) -> tuple[str, str, str | None]:
    """(alias, variant, rollout id): an explicit alias wins; else the canary split decides, sticky per
    user (or per request content) and only once the challenger is loaded on this replica."""
    champion, challenger = gw.settings.champion_alias, gw.settings.challenger_alias
    if alias is not None:
        return alias, ("challenger" if alias == challenger else "champion"), None
    chosen = await gw.router.route(name, routing_key(body.user_id, body.inputs))
    if chosen.variant == "challenger":
        loaded = gw.table.get(name, challenger)
        split = gw.router.split(name)
        if loaded is not None and split is not None and loaded.version == split.challenger_version:
            return challenger, "challenger", chosen.rollout_id
    return champion, "champion", chosen.rollout_id


async def _first_load(gw: Gateway, name: str, alias: str) -> LoadedModel:
    """An alias this replica has not served yet: resolve (cache, else MLflow) and load it once."""
    version: str | None = None
    known = False
    try:
        entries = await ResolutionReader(gw.redis, gw.keys).read(name)
        if alias in entries:
            known, version = True, entries[alias].version
    except (RedisError, OSError):
        pass
    if not known:
        try:
            version = await run_in_threadpool(gw.loader.resolve, name, alias)
        except Exception as exc:
            raise HTTPException(503, detail=f"cannot resolve {name}@{alias}: {exc}") from exc
    if version is None:
        raise HTTPException(404, detail=f"model {name!r} has no alias {alias!r}")
    try:
        return await gw.reloader.ensure(name, alias, version)
    except LookupError as exc:
        raise HTTPException(503, detail=str(exc)) from exc


async def _pinned(gw: Gateway, name: str, version: str) -> LoadedModel:
    try:
        return await run_in_threadpool(gw.manager.load, ModelRef(name, version=version))
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc):
            raise HTTPException(404, detail=f"model {name!r} has no version {version!r}") from exc
        raise HTTPException(503, detail=f"cannot load {name} version {version}: {exc}") from exc


def check_inputs(gw: Gateway, target: Target, body: PredictRequest) -> ParsedInputs:
    try:
        return parse_inputs(body.inputs, target.loaded.input_fields, max_rows=gw.settings.max_batch_rows)
    except InputError as exc:
        metrics.REJECTED.labels("invalid_input").inc()
        raise HTTPException(422, detail={"field": exc.field, "message": exc.message}) from exc


def predict_traced(
    gw: Gateway, target: Target, body: PredictRequest, parsed: ParsedInputs, request_id: str
) -> tuple[Any, str | None, BaseException | None]:
    """(outputs, trace id, error) of the model call inside its trace (blocking: run in a thread)."""
    params = dict(body.params or {})
    with gw.tracer.trace(
        request_id=request_id,
        model=target.loaded,
        alias=target.alias,
        variant=target.variant,
        replica=gw.replica,
        user_id=body.user_id,
        inputs=body.inputs,
    ) as handle:
        try:
            outputs = target.loaded.predict(parsed.records, params)
        except Exception as exc:
            return None, handle.trace_id, exc
        result = outputs[0] if parsed.single and len(outputs) == 1 else outputs
        handle.set_outputs(result)
        return result, handle.trace_id, None


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return 1 << 30


def inference_event(
    gw: Gateway,
    name: str,
    target: Target,
    body: PredictRequest,
    request_id: str,
    trace_id: str | None,
    outputs: Any,
    error: BaseException | None,
    latency_ms: float,
) -> InferenceRecorded:
    """What this prediction reports (payloads above the size limit are left out of the event)."""
    limit = gw.settings.max_logged_payload_bytes
    return InferenceRecorded(
        producer=f"gateway/{gw.replica}",
        model=name,
        version=target.loaded.version,
        alias=target.alias,
        variant=target.variant,
        rollout_id=target.rollout_id,
        request_id=request_id,
        trace_id=trace_id,
        replica=gw.replica,
        user_id=body.user_id,
        status="ok" if error is None else "error",
        error_type=type(error).__name__ if error else None,
        latency_ms=latency_ms,
        inputs=body.inputs if _json_size(body.inputs) <= limit else None,
        outputs=outputs if error is None and _json_size(outputs) <= limit else None,
    )


def served_request(event: InferenceRecorded) -> ServedRequest:
    """What feedback on this prediction will need, for the request log."""
    return ServedRequest(
        request_id=event.request_id,
        model=event.model,
        version=event.version,
        variant=event.variant,
        rollout_id=event.rollout_id,
        trace_id=event.trace_id,
        user_id=event.user_id,
        inputs=event.inputs,
        outputs=event.outputs,
        served_at=event.occurred_at,
    )


async def predict(
    gw: Gateway, name: str, body: PredictRequest, alias: str | None, version: str | None
) -> PredictResponse:
    started = time.perf_counter()
    target = await route(gw, name, body, alias, version)
    parsed = check_inputs(gw, target, body)
    request_id = uuid.uuid4().hex
    outputs, trace_id, error = await run_in_threadpool(predict_traced, gw, target, body, parsed, request_id)
    latency_ms = (time.perf_counter() - started) * 1000
    status = "ok" if error is None else "error"
    metrics.REQUESTS.labels(name, target.loaded.version, target.variant, status).inc()
    metrics.LATENCY.labels(name).observe(latency_ms / 1000)
    event = inference_event(gw, name, target, body, request_id, trace_id, outputs, error, latency_ms)
    gw.emitter.emit(event)
    if error is not None:
        if "schema" in str(error).lower() and "enforce" in str(error).lower():
            raise HTTPException(422, detail={"field": "inputs", "message": str(error)[:500]})
        log.warning(
            "model %s version %s raised %s: %s", name, target.loaded.version, type(error).__name__, error
        )
        raise HTTPException(
            502,
            detail={
                "message": f"model {name} version {target.loaded.version} failed: {type(error).__name__}",
                "request_id": request_id,
                "trace_id": trace_id,
            },
        )
    gw.request_log.remember(served_request(event))
    token = gw.tokens.issue(request_id, body.user_id, time.time()) if gw.tokens is not None else None
    return PredictResponse(
        outputs=outputs,
        model=name,
        version=target.loaded.version,
        alias=target.alias,
        variant=target.variant,
        request_id=request_id,
        trace_id=trace_id,
        feedback_token=token,
    )


# --- a rating -------------------------------------------------------------------------------------
async def record_feedback(gw: Gateway, body: FeedbackRequest) -> dict[str, Any]:
    """A rating of one served prediction -> FeedbackRecorded (before the 202) + MLflow trace feedback.

    A repeated submission (same request, same user) answers with the first feedback id and is not
    counted again; when Redis, MLflow or Kafka cannot take it, nothing was counted (503, retry).
    Refused before anything is looked up or counted: feedback without a valid token for this request and
    user (401; 403 once expired or while no secret is configured), above the user's rate (429)."""
    request = await _served(gw, body)
    if body.trace_id and request.trace_id and body.trace_id != request.trace_id:
        raise HTTPException(422, detail={"field": "trace_id", "message": "does not belong to request_id"})
    _authorize(gw, body, request.request_id)
    await _within_rate(gw, body.user_id)
    await _check_correction(gw, request, body)
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
    key = gw.keys.feedback_rate(user_id or "anonymous", minute)
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
