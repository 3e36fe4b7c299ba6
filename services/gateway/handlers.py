"""The gateway's first use case: serve a prediction.

A prediction goes through these steps, each a function here:
1. `route` — which loaded version serves it: a pinned `?version=`, an explicit `?alias=`, else the canary
   split (sticky per user, or per request content; the challenger only once it is loaded here); an alias
   this replica has not served yet is resolved (resolution cache, else MLflow) and loaded once;
2. `check_inputs` — the inputs against the model's signature (422 naming the field);
3. `call_model` — the model call, batched with concurrent requests to the same version (`batching.py`);
4. `inference_event` / `served_request` — what is reported (InferenceRecorded, off the request path) and
   remembered for feedback (the request log); the response carries the prediction's trace id, and the
   trace is written now only when it is wanted now (sampled, or an error: `adapters/tracing.py`) — a rated
   prediction's trace is written when it is rated (`feedback.py`);
5. in a rollout's shadow step, a sample of champion requests is mirrored to the challenger after the
   answer is built (`shadow.py`).
Each request reads its model once, so requests in flight finish on the version they started with.

Errors are HTTP statuses (`HTTPException`) as the API documents them. A rating of a prediction:
`feedback.py`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError

from events import InferenceRecorded
from services.gateway import metrics
from services.gateway.adapters.model_loader import LoadedModel
from services.gateway.domain.feedback_token import ServedFacts
from services.gateway.domain.inputs import InputError, ParsedInputs, parse_inputs
from services.gateway.domain.model_manager import ModelRef
from services.gateway.domain.served import ServedRequest, new_request_id
from services.gateway.entrypoints.deps import Gateway
from services.gateway.schemas import PredictRequest, PredictResponse
from services.gateway.shadow import MirroredRequest
from services.shared.carry import carry
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
    chosen = await gw.router.route(name, body.user_id, body.inputs)
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


async def call_model(
    gw: Gateway, loaded: LoadedModel, parsed: ParsedInputs, params: dict[str, Any] | None
) -> tuple[Any, BaseException | None]:
    """(outputs, error) of the model call: one output for a single record sent as an object."""
    try:
        outputs = await gw.predictions.call(loaded, parsed.records, dict(params or {}))
    except Exception as exc:
        return None, exc
    return (outputs[0] if parsed.single and len(outputs) == 1 else outputs), None


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


def served_request(
    event: InferenceRecorded, target: Target, started_ns: int, error: BaseException | None
) -> ServedRequest:
    """What feedback on this prediction will need (the request log), and its trace."""
    return carry(
        event,
        ServedRequest,
        trusted=True,  # the event validated the same facts a moment ago
        served_at=event.occurred_at,
        started_ns=started_ns,
        model_id=target.loaded.model_id,
        error=str(error)[:1000] if error is not None else None,
    )


async def predict(
    gw: Gateway, name: str, body: PredictRequest, alias: str | None, version: str | None
) -> PredictResponse:
    gw.shadow.serving += 1  # mirrored shadow calls wait while users are served
    try:
        return await _predict(gw, name, body, alias, version)
    finally:
        gw.shadow.serving -= 1


async def _predict(
    gw: Gateway, name: str, body: PredictRequest, alias: str | None, version: str | None
) -> PredictResponse:
    started_ns, started = time.time_ns(), time.perf_counter()
    gw.predictions.arriving += 1  # on its way to a batch: a batch may wait for it (batching.py)
    try:
        target = await route(gw, name, body, alias, version)
        parsed = check_inputs(gw, target, body)
    finally:
        gw.predictions.arrived()
    request_id = new_request_id()
    trace_id = gw.tracer.trace_id(request_id)
    outputs, error = await call_model(gw, target.loaded, parsed, body.params)
    latency_ms = (time.perf_counter() - started) * 1000
    status = "ok" if error is None else "error"
    metrics.REQUESTS.labels(name, target.loaded.version, target.variant, status).inc()
    metrics.LATENCY.labels(name, target.variant).observe(latency_ms / 1000)
    event = inference_event(gw, name, target, body, request_id, trace_id, outputs, error, latency_ms)
    gw.emitter.emit(event)
    served = served_request(event, target, started_ns, error)
    if gw.tracer.wanted_now(request_id, error=error is not None):
        served.traced = gw.tracer.write(served, linked=error is not None)
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
    gw.request_log.remember(served)
    if target.variant == "champion" and (
        shadow := gw.shadow.challenger_for(name, target.rollout_id, request_id)
    ):
        gw.shadow.mirror(MirroredRequest(name, shadow, body, parsed, request_id, target.rollout_id, outputs))
    token = (
        gw.tokens.issue(
            request_id,
            body.user_id,
            time.time(),
            ServedFacts(name, target.loaded.version, target.variant, target.rollout_id),
        )
        if gw.tokens is not None
        else None
    )
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
