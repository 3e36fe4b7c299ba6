"""Registry watcher configuration (environment variables, see README)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.shared.settings import FlywheelSettings


class WatcherSettings(FlywheelSettings):
    webhook_secret: SecretStr | None = Field(
        default=None, description="FLYWHEEL_WEBHOOK_SECRET: HMAC key shared with the MLflow webhook."
    )
    webhook_tolerance_s: int = Field(default=300, ge=1, description="Max clock skew of X-MLflow-Timestamp.")
    webhook_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    webhook_delivery_ttl_s: int = Field(
        default=3600, ge=1, description="How long delivery ids are remembered."
    )
    poll_interval_s: float = Field(default=10.0, ge=0, description="0 disables the poller.")
    poll_stages: bool = Field(default=False, description="Map registry stages to alias events.")
    watcher_host: str = "127.0.0.1"
    watcher_port: int = Field(default=8070, ge=1, le=65535)
    watcher_url: str | None = Field(
        default=None, description="URL MLflow should call, for `flywheel webhook register`."
    )
    registry_adopt: bool = Field(
        default=False,
        description="Adopt a Redis namespace whose alias state belongs to another MLflow registry (drops "
        "that state; the registry's aliases are then published as they are). Default: refuse.",
    )
    publish_timeout_s: float = Field(default=5.0, gt=0)
    outbox_interval_s: float = Field(default=1.0, gt=0)
