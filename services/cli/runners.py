"""Service name -> entrypoint, for `flywheel run NAME` (used by `flywheel up`, compose and k8s)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

SERVICES: dict[str, str] = {
    "registry-watcher": "services.registry_watcher.bootstrap:run",
    "gateway": "services.gateway.bootstrap:run",
    "canary-rollout": "services.canary_rollout.bootstrap:run",
    "cache-invalidation": "services.cache_invalidation.bootstrap:run",
    "feedback-aggregation": "services.feedback_aggregation.bootstrap:run",
    "retrainer": "services.retrainer.bootstrap:run",
}


def entrypoint(name: str) -> Callable[[], None]:
    try:
        target = SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(sorted(SERVICES))}") from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)
