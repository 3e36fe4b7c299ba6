"""How every HTTP service's app is made (`service_app`), and the operational endpoints each exposes:
/healthz, /readyz, /metrics.

Readiness runs the service's dependency checks (each an async callable returning None or raising) and
answers 503 naming the dependency that is down, so orchestrators route traffic only to ready replicas.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from services.shared import http_json

ReadinessCheck = Callable[[], Awaitable[object]]

# FastAPI's native OpenTelemetry instrumentation asks the global OTel providers on every request whether
# it is on (they are installed here, with MLflow): our services report through Prometheus instead.
NO_NATIVE_TELEMETRY: Any = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def service_app(title: str, version: str, **options: Any) -> FastAPI:
    """A service's FastAPI app under the shared JSON policy (`http_json.install`), without FastAPI's
    per-request OpenTelemetry checks."""
    app = FastAPI(title=title, version=version, telemetry=NO_NATIVE_TELEMETRY, **options)
    http_json.install(app)
    return app


def add_ops_routes(
    app: FastAPI,
    checks: Callable[[], Mapping[str, ReadinessCheck]],
    registry: CollectorRegistry = REGISTRY,
    timeout_s: float = 2.0,
) -> None:
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "A dependency is unavailable."}})
    async def readyz() -> JSONResponse:
        """Readiness: every dependency check passed."""
        results: dict[str, str] = {}
        for name, check in checks().items():
            try:
                outcome = await asyncio.wait_for(check(), timeout=timeout_s)
            except Exception as exc:
                results[name] = f"unavailable: {type(exc).__name__}"
            else:
                results[name] = "ok" if outcome is not False else "unavailable"
        ready = all(v == "ok" for v in results.values())
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> PlainTextResponse:
        """Prometheus exposition."""
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)
