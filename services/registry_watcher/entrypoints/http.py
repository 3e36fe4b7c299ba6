"""HTTP entrypoint of the registry watcher: the signed webhook endpoint (module-level router).

Status codes are part of the contract with MLflow's delivery: 2xx only once Kafka acknowledged the
event; 503 while Kafka or Redis is unreachable (MLflow retries on 5xx/429); 401 for missing, bad or
stale signatures; 400/422 for bodies that are not a usable payload; 413 above the size limit.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import LockError, RedisError

from events import AliasSource
from services.registry_watcher import metrics
from services.registry_watcher.adapters.alias_state import StateLost
from services.registry_watcher.domain.signature import SignatureRejected, verify
from services.registry_watcher.domain.webhook import IgnoredEvent, PayloadError, parse_payload
from services.registry_watcher.entrypoints.deps import WatcherDep
from services.registry_watcher.handlers import ConcurrentChange
from services.shared import http_json
from services.shared.kafka.publisher import PublishError
from services.shared.webhook_health import WebhookHealth

router = APIRouter(route_class=http_json.JsonPolicyRoute)

SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"


WEBHOOK_RESPONSES = http_json.documented(
    {
        200: "Published after Kafka's ack, unchanged, ignored, or a duplicate delivery.",
        400: "The body is not JSON.",
        401: "Missing, bad or stale signature, or missing delivery headers.",
        413: "Body larger than FLYWHEEL_WEBHOOK_MAX_BODY_BYTES.",
        422: "Not a usable payload (policy or contract); `field` names the culprit.",
        503: "Kafka or Redis unavailable: MLflow retries, the event waits in the outbox.",
    }
)


def _error(status: int, error: str, detail: str, **extra: object) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    content = {"error": error, "detail": detail, **extra}
    return http_json.SafeJSONResponse(content, status_code=status, headers=headers)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None when it exceeds `limit` bytes (checked before and while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/webhooks/mlflow", responses=WEBHOOK_RESPONSES)
async def mlflow_webhook(request: Request, watcher: WatcherDep) -> JSONResponse:
    """MLflow's signed delivery -> AliasChanged on Kafka (see the status codes above)."""
    cfg = watcher.settings
    metrics.RECEIVED.inc()
    body = await _read_limited(request, cfg.webhook_max_body_bytes)
    if body is None:
        metrics.REJECTED.labels(reason="too_large").inc()
        return _error(413, "too_large", f"body exceeds {cfg.webhook_max_body_bytes} bytes")
    if cfg.webhook_secret is None:
        metrics.REJECTED.labels(reason="no_secret_configured").inc()
        return _error(401, "no_secret_configured", "the receiver has no FLYWHEEL_WEBHOOK_SECRET")
    try:
        delivery = verify(
            secret=cfg.webhook_secret.get_secret_value(),
            body=body,
            signature=request.headers.get(SIGNATURE_HEADER),
            timestamp=request.headers.get(TIMESTAMP_HEADER),
            delivery_id=request.headers.get(DELIVERY_HEADER),
            now=time.time(),
            tolerance_s=cfg.webhook_tolerance_s,
        )
    except SignatureRejected as exc:
        metrics.REJECTED.labels(reason=exc.reason.value).inc()
        watcher.health.rejected_signature()
        return _error(401, exc.reason.value, exc.message)
    metrics.VERIFIED.inc()

    try:
        document = http_json.parse_body(body)
    except http_json.JsonPolicyError as exc:
        metrics.REJECTED.labels(reason="invalid_payload").inc()
        field = http_json.field_name(["body", *exc.loc]) if exc.loc else "body"
        return _error(422, "invalid_payload", exc.message, field=field)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        metrics.REJECTED.labels(reason="malformed_json").inc()
        return _error(400, "malformed_json", f"body is not JSON: {exc}")
    try:
        parsed = parse_payload(document)
    except PayloadError as exc:
        metrics.REJECTED.labels(reason="invalid_payload").inc()
        return _error(422, "invalid_payload", str(exc), field=exc.field)

    if not watcher.binding.ok:  # another registry's alias state, or not checked yet: publish nothing
        metrics.REJECTED.labels(reason=f"registry_{watcher.binding.status}").inc()
        return _error(503, f"registry_{watcher.binding.status}", watcher.binding.detail)
    delivery_key = watcher.state.key("delivery", delivery.delivery_id)
    try:
        if await watcher.redis.exists(delivery_key):
            metrics.DEDUP_HITS.labels(kind="delivery").inc()
            return JSONResponse({"status": "duplicate_delivery"}, status_code=200)
        if isinstance(parsed, IgnoredEvent):
            metrics.IGNORED.labels(kind=parsed.kind).inc()
            status: dict[str, object] = {"status": "ignored", "event": parsed.kind}
        elif not cfg.watches(parsed.model):
            metrics.IGNORED.labels(kind="unwatched_model").inc()
            status = {"status": "ignored", "event": "unwatched_model"}
        else:
            if parsed.observed_at is not None and parsed.observed_at > time.time() + cfg.webhook_tolerance_s:
                # A time from the future would make every real delivery of this alias look stale.
                parsed = dataclasses.replace(parsed, observed_at=None)
            watcher.health.delivery(time.time())
            result = await watcher.recorder.record(parsed, AliasSource.WEBHOOK)
            status = {
                "status": "published" if result.committed else "unchanged",
                "event_ids": [e.event_id for e in result.committed],
            }
        await watcher.redis.set(delivery_key, "1", ex=cfg.webhook_delivery_ttl_s)
    except (PublishError, LockError) as exc:
        return _error(503, "kafka_unavailable", f"event not acknowledged by Kafka yet: {exc}")
    except RedisError as exc:
        return _error(503, "redis_unavailable", f"alias state unavailable: {exc!r}")
    except ConcurrentChange as exc:
        return _error(503, "busy", str(exc))
    except StateLost as exc:  # Redis came back empty: restore, and have MLflow retry this delivery
        if watcher.keeper is not None:
            watcher.keeper.restore_soon()
        return _error(503, "state_lost", str(exc))
    return JSONResponse(status, status_code=200)


@router.get("/v1/webhook-health", response_model=WebhookHealth, tags=["ops"])
async def webhook_health(watcher: WatcherDep) -> WebhookHealth:
    """Whether MLflow's deliveries reach this watcher: `failing` (since when, with the likely causes)
    once the poller had to repair alias changes no delivery brought."""
    return watcher.health.report(time.time(), socket.gethostname())
