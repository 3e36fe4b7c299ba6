"""Entrypoint: `flywheel run registry-watcher` (or `python -m services.registry_watcher`)."""

from __future__ import annotations

import uvicorn

from services.registry_watcher.api import create_app
from services.registry_watcher.settings import WatcherSettings
from services.shared.logging_setup import configure_logging


def run() -> None:
    settings = WatcherSettings()
    configure_logging(settings.log_level, "registry-watcher")
    uvicorn.run(
        create_app(settings),
        host=settings.watcher_host,
        port=settings.watcher_port,
        log_level="warning",
        access_log=False,
    )
