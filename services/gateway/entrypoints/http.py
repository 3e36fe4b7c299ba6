"""HTTP entrypoints of a gateway replica (module-level routers; the use cases are in `handlers.py`).

Status codes: 404 for an unknown model or alias, 422 for inputs that do not match the model's signature
(the `field` names the culprit, e.g. `inputs[2].alcohol`), 503 when the model cannot be loaded at all,
502 when the model itself raised. Feedback: 202 `{"feedback_id"}`, 404 for an unknown request, 503 when
it cannot be confirmed now (retry: a retried rating never counts twice).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response
from redis.exceptions import RedisError

from services.gateway import handlers
from services.gateway.entrypoints.deps import GatewayDep
from services.gateway.feedback import record_feedback
from services.gateway.schemas import FeedbackRequest, PredictRequest, PredictResponse
from services.shared import http_json
from services.shared.identifiers import AliasQuery, ModelName, VersionQuery
from services.shared.resolution import ResolutionReader

router = APIRouter(route_class=http_json.JsonPolicyRoute)

PREDICT_RESPONSES = http_json.documented(
    {
        404: "Unknown model, alias or version, or a model this gateway does not serve.",
        422: "Invalid body or inputs; `field` names the culprit (e.g. `inputs[3].alcohol`).",
        502: "The model raised while predicting.",
        503: "The model cannot be loaded or resolved right now (retry later).",
    }
)


@router.post(
    "/v1/models/{name}/predict",
    response_model=PredictResponse,
    tags=["serving"],
    responses=PREDICT_RESPONSES,
)
async def predict(
    gw: GatewayDep,
    name: ModelName,
    body: PredictRequest,
    alias: AliasQuery = None,
    version: VersionQuery = None,
) -> Response:
    # Rendered here, once: returned as a model, FastAPI would validate it against the response model
    # again before serialising it (the handler built it from validated parts a moment ago).
    answer = await handlers.predict(gw, name, body, alias, version)
    return Response(answer.model_dump_json(), media_type="application/json")


@router.get("/v1/models/{name}", tags=["serving"], responses={404: {"description": "Not served here."}})
async def model_status(gw: GatewayDep, name: ModelName) -> dict[str, Any]:
    """Served versions per alias (and since when), resolution cache, reload errors, split, cache stats."""
    served = gw.table.aliases(name)
    resolution: dict[str, str | None] = {}
    try:
        entries = await ResolutionReader(gw.redis, gw.keys).read(name)
        resolution = {a: e.version for a, e in entries.items()}
    except (RedisError, OSError):
        pass
    if not served and not resolution:
        raise HTTPException(404, detail=f"model {name!r} is not served and not in the resolution cache")
    return {
        "model": name,
        "replica": gw.replica,
        "aliases": served,
        "paths": {  # how each served version is predicted: the native fast path, else its flavour
            alias: (loaded.native or loaded.flavour) if (loaded := gw.table.get(name, alias)) else None
            for alias in served
        },
        "swapped_at": gw.table.swapped_at(name),
        "resolution_cache": resolution,
        "reload_errors": {a: e for (m, a), e in gw.reloader.last_error.items() if m == name},
        "traffic_split": split.model_dump(mode="json") if (split := gw.router.split(name)) else None,
        "cache": gw.manager.get_cache_stats().as_dict(),
        "inference_events_pending": gw.emitter.pending(),
    }


@router.post(
    "/v1/feedback",
    status_code=202,
    tags=["feedback"],
    responses=http_json.documented(
        {
            401: "No valid feedback_token for this request and user_id.",
            403: "The token expired, or feedback is closed (no FLYWHEEL_FEEDBACK_SECRET).",
            404: "No served prediction with this request_id / trace_id.",
            429: "Too many ratings from this user this minute (Retry-After).",
            503: "MLflow, Redis or Kafka could not confirm it; retry (a retried rating never counts twice).",
        }
    ),
)
async def feedback(gw: GatewayDep, body: FeedbackRequest) -> dict[str, Any]:
    return await record_feedback(gw, body)


@router.get(
    "/v1/requests/{request_id}",
    tags=["serving"],
    responses=http_json.documented(
        {
            404: "No prediction with this request id in the request log (unknown, or older than its TTL).",
            503: "Redis cannot be read right now; retry.",
        }
    ),
)
async def which_version_answered(
    gw: GatewayDep, request_id: Annotated[str, Path(min_length=1, max_length=128)]
) -> dict[str, Any]:
    """Which model version (and variant of which rollout) answered a request: the request log, kept
    FLYWHEEL_REQUEST_LOG_TTL_S; inputs, outputs and the user stay out of this answer."""
    try:
        served = await gw.request_log.by_request(request_id)
    except (RedisError, OSError) as exc:
        detail = f"request log unavailable: {exc}"
        raise HTTPException(503, detail=detail, headers={"Retry-After": "5"}) from exc
    if served is None:
        raise HTTPException(404, detail=f"no prediction with request_id {request_id!r} in the request log")
    return served.model_dump(mode="json", include=ANSWERED_BY)


ANSWERED_BY = {"request_id", "model", "version", "variant", "rollout_id", "trace_id", "served_at"}
