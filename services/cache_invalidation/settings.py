"""Cache invalidation configuration (environment variables with prefix FLYWHEEL_, see README)."""

from __future__ import annotations

from pydantic import Field

from services.shared.settings import FlywheelSettings


class CacheInvalidationSettings(FlywheelSettings):
    invalidation_web_port: int = Field(
        default=6070,
        ge=1,
        le=65535,
        description="The worker's web port: /healthz, /readyz (partitions assigned), /metrics.",
    )
    invalidation_group_id: str = Field(
        default="flywheel-cache-invalidation",
        min_length=1,
        description="Kafka consumer group (= Faust app id); a new id replays the topic from the start.",
    )
    invalidation_metrics_host: str = Field(
        default="127.0.0.1", description="Bind address of the web port and of the /metrics port."
    )
    invalidation_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 = not served."
    )
    invalidation_retry_initial_s: float = Field(
        default=0.2, gt=0, description="First back-off after a failed apply (Redis down); doubles."
    )
    invalidation_retry_max_s: float = Field(default=5.0, gt=0, description="Longest back-off.")
