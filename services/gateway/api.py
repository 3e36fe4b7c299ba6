"""HTTP entrypoint of a gateway replica: predictions, model status, health, readiness, metrics.

Status codes: 404 for an unknown model or alias, 422 for inputs that do not match the model's signature
(the `field` names the culprit, e.g. `inputs[2].alcohol`), 503 when the model cannot be loaded at all,
502 when the model itself raised. A request is served by the version its alias pointed to when it began.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from redis.asyncio import Redis
from redis.exceptions import RedisError

from events import InferenceRecorded
from services.gateway import metrics
from services.gateway.core.inputs import InputError, parse_inputs
from services.gateway.feedback import FeedbackService
from services.gateway.feedback_api import add_feedback_routes, flush_trace_writes
from services.gateway.inference_events import InferenceEmitter
from services.gateway.model_loader import LoadedModel, MlflowModelLoader, dspy_lm_factory, warm_up
from services.gateway.model_manager import ModelManager, ModelRef
from services.gateway.reload_listener import ReloadListener
from services.gateway.reloader import Reloader
from services.gateway.request_log import RequestLog, ServedRequest
from services.gateway.schemas import PredictRequest, PredictResponse
from services.gateway.serving_table import ServingTable
from services.gateway.settings import GatewaySettings
from services.gateway.tracing import PredictionTracer
from services.gateway.traffic_router import TrafficRouter, routing_key
from services.shared import http_json
from services.shared.http_ops import ReadinessCheck, add_ops_routes
from services.shared.identifiers import AliasQuery, ModelName, VersionQuery
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.redis_store import RedisKeys, async_redis
from services.shared.resolution import ResolutionReader

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything a replica needs, built once per process."""

    settings: GatewaySettings
    replica: str
    redis: Redis
    keys: RedisKeys
    loader: MlflowModelLoader
    manager: ModelManager[LoadedModel]
    table: ServingTable
    reloader: Reloader
    listener: ReloadListener
    tracer: PredictionTracer
    emitter: InferenceEmitter
    publisher: KafkaPublisher | None
    router: TrafficRouter
    request_log: RequestLog
    feedback: FeedbackService
    started: asyncio.Event


def build_gateway(settings: GatewaySettings, loader: MlflowModelLoader | None = None) -> Gateway:
    redis = async_redis(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix)
    secret = settings.dspy_api_key.get_secret_value() if settings.dspy_api_key else None
    loader = loader or MlflowModelLoader(
        settings.mlflow_tracking_uri, dspy_lm_factory(settings.dspy_lm, secret, settings.dspy_api_base)
    )
    manager: ModelManager[LoadedModel] = ModelManager(
        loader, ttl_s=settings.model_ttl_s, max_size=settings.model_cache_size
    )
    table = ServingTable()
    reloader = Reloader(
        table,
        manager,
        retry_initial_s=settings.reload_retry_initial_s,
        retry_max_s=settings.reload_retry_max_s,
    )
    listener = ReloadListener(
        redis, keys, reloader, table, settings, reconcile_interval_s=settings.reconcile_interval_s
    )
    publisher = (
        KafkaPublisher(
            settings.kafka_bootstrap_servers,
            profile_named(settings.kafka_profile),
            client_id=f"flywheel-gateway-{settings.replica_name()}",
            bulk=True,  # inferences and feedback are consumed from committed offsets only
        )
        if settings.inference_events_enabled
        else None
    )
    emitter = InferenceEmitter(
        publisher,
        max_queue=settings.inference_queue_size,
        batch_size=settings.inference_batch_size,
        flush_ms=settings.inference_flush_ms,
    )
    tracer = PredictionTracer(
        settings.mlflow_tracking_uri, settings.trace_experiment, enabled=settings.tracing_enabled
    )
    return Gateway(
        settings=settings,
        replica=settings.replica_name(),
        redis=redis,
        keys=keys,
        loader=loader,
        manager=manager,
        table=table,
        reloader=reloader,
        listener=listener,
        tracer=tracer,
        emitter=emitter,
        publisher=publisher,
        router=TrafficRouter(redis, keys),
        request_log=RequestLog(redis, keys, settings.request_log_ttl_s),
        feedback=FeedbackService(settings.mlflow_tracking_uri),
        started=asyncio.Event(),
    )


PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown model, alias or version, or a model this gateway does not serve."},
    413: {"description": "Body larger than the limit."},
    422: {"description": "Invalid body or inputs; `field` names the culprit (e.g. `inputs[3].alcohol`)."},
    502: {"description": "The model raised while predicting."},
    503: {"description": "The model cannot be loaded or resolved right now (retry later)."},
}


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return 1 << 30


def create_app(settings: GatewaySettings | None = None, loader: MlflowModelLoader | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = build_gateway(settings, loader)
        app.state.gateway = gw
        await run_in_threadpool(warm_up)
        await run_in_threadpool(gw.tracer.prepare)
        gw.emitter.start()
        gw.listener.start()
        # Preload before declaring readiness: wait for the first reconciliation's loads (bounded).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gw.listener.subscribed.wait(), timeout=5.0)
            await asyncio.sleep(0)
            await asyncio.wait_for(_settle(gw), timeout=60.0)
        gw.started.set()
        log.info("gateway replica %s ready, serving %s", gw.replica, gw.table.served())
        try:
            yield
        finally:
            await gw.listener.stop()
            await gw.reloader.close()
            await run_in_threadpool(gw.emitter.stop)
            await flush_trace_writes()
            await run_in_threadpool(gw.tracer.close)
            if gw.publisher is not None:
                gw.publisher.close()
            await gw.redis.aclose()

    app = FastAPI(title="Flywheel gateway", version="0.1.0", lifespan=lifespan)
    http_json.install(app)

    def gateway() -> Gateway:
        gw: Gateway = app.state.gateway
        return gw

    async def serving_started() -> bool:
        return gateway().started.is_set()

    def checks() -> dict[str, ReadinessCheck]:
        # Redis and Kafka are not readiness conditions: without them a replica keeps serving.
        return {"models_preloaded": serving_started}

    add_ops_routes(app, checks)
    add_feedback_routes(app, gateway)

    async def first_load(gw: Gateway, name: str, alias: str) -> LoadedModel:
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

    async def choose_alias(
        gw: Gateway, name: str, alias: str | None, body: PredictRequest
    ) -> tuple[str, str, str | None]:
        """(alias, variant, rollout id): an explicit alias wins; else the canary split decides, sticky per
        user (or per request content) and only once the challenger is loaded on this replica."""
        champion, challenger = gw.settings.champion_alias, gw.settings.challenger_alias
        if alias is not None:
            return alias, ("challenger" if alias == challenger else "champion"), None
        route = await gw.router.route(name, routing_key(body.user_id, body.inputs))
        if route.variant == "challenger":
            loaded = gw.table.get(name, challenger)
            split = gw.router.split(name)
            if loaded is not None and split is not None and loaded.version == split.challenger_version:
                return challenger, "challenger", route.rollout_id
        return champion, "champion", route.rollout_id

    async def pinned(gw: Gateway, name: str, version: str) -> LoadedModel:
        try:
            return await run_in_threadpool(gw.manager.load, ModelRef(name, version=version))
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc):
                raise HTTPException(404, detail=f"model {name!r} has no version {version!r}") from exc
            raise HTTPException(503, detail=f"cannot load {name} version {version}: {exc}") from exc

    @app.post(
        "/v1/models/{name}/predict",
        response_model=PredictResponse,
        tags=["serving"],
        responses=PREDICT_RESPONSES,
    )
    async def predict(
        name: ModelName, body: PredictRequest, alias: AliasQuery = None, version: VersionQuery = None
    ) -> PredictResponse:
        gw = gateway()
        started = time.perf_counter()
        if not gw.settings.watches(name):
            raise HTTPException(404, detail=f"model {name!r} is not served by this gateway")
        if version is not None:
            loaded, variant, served_alias = await pinned(gw, name, version), "pinned", None
            rollout_id = None
        else:
            served_alias, variant, rollout_id = await choose_alias(gw, name, alias, body)
            loaded = gw.table.get(name, served_alias) or await first_load(gw, name, served_alias)
        try:
            parsed = parse_inputs(body.inputs, loaded.input_fields, max_rows=gw.settings.max_batch_rows)
        except InputError as exc:
            metrics.REJECTED.labels("invalid_input").inc()
            raise HTTPException(422, detail={"field": exc.field, "message": exc.message}) from exc
        request_id = uuid.uuid4().hex
        params = dict(body.params or {})

        def run() -> tuple[Any, str | None, BaseException | None]:
            with gw.tracer.trace(
                request_id=request_id,
                model=loaded,
                alias=served_alias,
                variant=variant,
                replica=gw.replica,
                user_id=body.user_id,
                inputs=body.inputs,
            ) as handle:
                try:
                    outputs = loaded.predict(parsed.records, params)
                except Exception as exc:
                    return None, handle.trace_id, exc
                result = outputs[0] if parsed.single and len(outputs) == 1 else outputs
                handle.set_outputs(result)
                return result, handle.trace_id, None

        outputs, trace_id, error = await run_in_threadpool(run)
        latency_ms = (time.perf_counter() - started) * 1000
        status = "ok" if error is None else "error"
        metrics.REQUESTS.labels(name, loaded.version, variant, status).inc()
        metrics.LATENCY.labels(name).observe(latency_ms / 1000)
        limit = gw.settings.max_logged_payload_bytes
        logged_inputs = body.inputs if _json_size(body.inputs) <= limit else None
        logged_outputs = outputs if error is None and _json_size(outputs) <= limit else None
        event = InferenceRecorded(
            producer=f"gateway/{gw.replica}",
            model=name,
            version=loaded.version,
            alias=served_alias,
            variant=variant,
            rollout_id=rollout_id,
            request_id=request_id,
            trace_id=trace_id,
            replica=gw.replica,
            user_id=body.user_id,
            status=status,
            error_type=type(error).__name__ if error else None,
            latency_ms=latency_ms,
            inputs=logged_inputs,
            outputs=logged_outputs,
        )
        gw.emitter.emit(event)
        if error is None:
            served = ServedRequest(
                request_id=request_id,
                model=name,
                version=loaded.version,
                variant=variant,
                rollout_id=rollout_id,
                trace_id=trace_id,
                user_id=body.user_id,
                inputs=logged_inputs,
                outputs=logged_outputs,
                served_at=event.occurred_at,
            )
            gw.request_log.remember(served)
        if error is not None:
            if "schema" in str(error).lower() and "enforce" in str(error).lower():
                raise HTTPException(422, detail={"field": "inputs", "message": str(error)[:500]})
            log.warning(
                "model %s version %s raised %s: %s", name, loaded.version, type(error).__name__, error
            )
            raise HTTPException(
                502,
                detail={
                    "message": f"model {name} version {loaded.version} failed: {type(error).__name__}",
                    "request_id": request_id,
                    "trace_id": trace_id,
                },
            )
        return PredictResponse(
            outputs=outputs,
            model=name,
            version=loaded.version,
            alias=served_alias,
            variant=variant,
            request_id=request_id,
            trace_id=trace_id,
        )

    @app.get("/v1/models/{name}", tags=["serving"], responses={404: {"description": "Not served here."}})
    async def model_status(name: ModelName) -> dict[str, Any]:
        gw = gateway()
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
            "swapped_at": gw.table.swapped_at(name),
            "resolution_cache": resolution,
            "reload_errors": {a: e for (m, a), e in gw.reloader.last_error.items() if m == name},
            "traffic_split": split.model_dump(mode="json") if (split := gw.router.split(name)) else None,
            "cache": gw.manager.get_cache_stats().as_dict(),
            "inference_events_pending": gw.emitter.pending(),
        }

    return app


async def _settle(gw: Gateway) -> None:
    """Wait for the reloads the first reconciliation started."""
    await gw.listener.reconcile()
    while gw.reloader._tasks:
        await asyncio.gather(*list(gw.reloader._tasks.values()), return_exceptions=True)
