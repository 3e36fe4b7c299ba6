"""Entrypoint: `flywheel run gateway` (or `python -m services.gateway`); one process per replica."""

from __future__ import annotations

import uvicorn

from services.gateway.api import create_app
from services.gateway.settings import GatewaySettings
from services.shared.logging_setup import configure_logging


def run() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, f"gateway[{settings.replica_name()}]")
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level="warning",
        access_log=False,
    )
