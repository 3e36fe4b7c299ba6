"""One logging format for every service (stdout, level from FLYWHEEL_LOG_LEVEL)."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO", service: str = "flywheel") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "aiokafka", "urllib3", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
