"""Entrypoint: `flywheel run gateway` (or `python -m services.gateway`); one process per replica."""

from __future__ import annotations

import os

import uvicorn

from services.gateway.api import create_app
from services.gateway.settings import GatewaySettings
from services.shared.logging_setup import configure_logging


def run() -> None:
    # MLflow's client retries a failed call 7 times with doubling back-off (about 2 minutes) — on the
    # request path that is a hung request. The reloader has its own back-off; a request fails fast.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    settings = GatewaySettings()
    configure_logging(settings.log_level, f"gateway[{settings.replica_name()}]")
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level="warning",
        access_log=False,
    )
