"""Pydantic field declarations of the kinds every service's settings (and the canary policy) repeat.

Each helper fixes the bounds of one kind of value (a port, a count, a share, a duration), so that kind
means the same range everywhere; the default and the description stay at the declaration, because they
are the service's. The workers' own plumbing (consumer group, Faust web port, /metrics) is declared the
same way in each worker, so those helpers also carry the shared description.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

CONSUMER_GROUP_DESCRIPTION = (
    "Kafka consumer group (= Faust app id); a new id replays the topic from the start."
)
WORKER_PORT_DESCRIPTION = "Port the Faust worker binds (web server off, bound anyway)."
METRICS_HOST_DESCRIPTION = "Bind address of /metrics."


def port_field(default: int, description: str | None = None) -> Any:
    """A TCP port to listen on (1-65535)."""
    return Field(default=default, ge=1, le=65535, description=description)


def count_field(default: int, description: str | None = None, *, minimum: int = 1) -> Any:
    """A number of things: at least one, or at least `minimum` (0 where 0 means none or at once)."""
    return Field(default=default, ge=minimum, description=description)


def share_field(default: float, description: str | None = None) -> Any:
    """A fraction from 0 to 1 inclusive: a rate, or a difference of two rates."""
    return Field(default=default, ge=0, le=1, description=description)


def probability_field(default: float, description: str | None = None) -> Any:
    """A fraction strictly between 0 and 1: a significance level, a hold-out fraction."""
    return Field(default=default, gt=0, lt=1, description=description)


def positive_field(default: float, description: str | None = None, *, zero_allowed: bool = False) -> Any:
    """A duration (its unit in the field's name), a ratio, a weight: above 0, or with `zero_allowed` also 0
    (where 0 means off, or at once)."""
    if zero_allowed:
        return Field(default=default, ge=0, description=description)
    return Field(default=default, gt=0, description=description)


def consumer_group_field(default: str, description: str | None = CONSUMER_GROUP_DESCRIPTION) -> Any:
    """A worker's Kafka consumer group id (also its Faust app id)."""
    return Field(default=default, min_length=1, description=description)


def worker_port_field(default: int, description: str = WORKER_PORT_DESCRIPTION) -> Any:
    """The port a worker's Faust web server binds."""
    return port_field(default, description)


def metrics_host_field(description: str = METRICS_HOST_DESCRIPTION) -> Any:
    """Bind address of a worker's web and /metrics ports (local only by default)."""
    return Field(default="127.0.0.1", description=description)


def metrics_port_field() -> Any:
    """A worker's Prometheus /metrics port: 0, the default, serves none."""
    return Field(default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 = not served.")
