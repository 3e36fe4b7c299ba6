"""How a service process starts (`flywheel run <service>`, `python -m services.<service>`): logging is
configured first, then the process serves its HTTP API or runs its Faust worker until it is stopped.

Shared so that every service logs its (masked) settings, binds /metrics and quiets uvicorn the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import uvicorn
from fastapi import FastAPI
from prometheus_client import start_http_server

from services.shared.consumer import ConsumerRuntime
from services.shared.faust_app import run_worker
from services.shared.logging_setup import configure_logging
from services.shared.mlflow_environment import skip_absent_environment_probes
from services.shared.settings import FlywheelSettings

SettingsT = TypeVar("SettingsT", bound=FlywheelSettings)


def serve_http(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` until SIGTERM/SIGINT. No access log and only uvicorn's warnings: the services log
    what matters themselves."""
    skip_absent_environment_probes()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def run_consumer_worker(
    settings: SettingsT,
    build_runtime: Callable[[SettingsT], ConsumerRuntime],
    *,
    service: str,
    log: logging.Logger,
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Run the worker `build_runtime` wires until SIGTERM/SIGINT: logging configured for `service`
    (e.g. "cache-invalidation"), its settings logged with secrets masked on `log` (the service's own
    logger), and Prometheus /metrics served on `metrics_port` unless it is 0."""
    configure_logging(settings.log_level, service)
    log.info("starting %s: %s", service.replace("-", " "), settings.safe_summary())
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host)
    skip_absent_environment_probes()
    run_worker(build_runtime(settings).build(), settings.log_level)
