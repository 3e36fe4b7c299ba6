"""Cache invalidation configuration (environment variables with prefix FLYWHEEL_, see README)."""

from __future__ import annotations

from services.shared.fields import (
    consumer_group_field,
    metrics_host_field,
    metrics_port_field,
    port_field,
    positive_field,
)
from services.shared.settings import FlywheelSettings


class CacheInvalidationSettings(FlywheelSettings):
    invalidation_web_port: int = port_field(
        6070, "The worker's web port: /healthz, /readyz (partitions assigned), /metrics."
    )
    invalidation_group_id: str = consumer_group_field("flywheel-cache-invalidation")
    invalidation_metrics_host: str = metrics_host_field(
        "Bind address of the web port and of the /metrics port."
    )
    invalidation_metrics_port: int = metrics_port_field()
    invalidation_retry_initial_s: float = positive_field(
        0.2, "First back-off after a failed apply (Redis down); doubles."
    )
    invalidation_retry_max_s: float = positive_field(5.0, "Longest back-off.")
    invalidation_rebuild_check_s: float = positive_field(
        5.0,
        "How often the worker checks that the resolution cache is there (its epoch marker); when Redis "
        "came back empty it is rebuilt from the alias-changed topic.",
    )
