"""Registry watcher configuration (environment variables, see README)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.shared.fields import count_field, port_field, positive_field
from services.shared.settings import FlywheelSettings


class WatcherSettings(FlywheelSettings):
    webhook_secret: SecretStr | None = Field(
        default=None, description="FLYWHEEL_WEBHOOK_SECRET: HMAC key shared with the MLflow webhook."
    )
    webhook_tolerance_s: int = count_field(300, "Max clock skew of X-MLflow-Timestamp.")
    webhook_max_body_bytes: int = count_field(1024 * 1024, minimum=1024)
    webhook_delivery_ttl_s: int = count_field(3600, "How long delivery ids are remembered.")
    poll_interval_s: float = positive_field(10.0, "0 disables the poller.", zero_allowed=True)
    webhook_health_grace_s: float = positive_field(
        60.0,
        "Changes the poller repairs this soon after the watcher started do not count as failed deliveries "
        "(MLflow caches its webhook list for 60 s; a restart repairs what happened while it was down).",
        zero_allowed=True,
    )
    webhook_health_window_s: float = positive_field(
        600.0, "Deliveries count as failing until this long passed without a repair (and one arrived)."
    )
    poll_stages: bool = Field(default=False, description="Map registry stages to alias events.")
    watcher_host: str = "127.0.0.1"
    watcher_port: int = port_field(8070)
    watcher_url: str | None = Field(
        default=None, description="URL MLflow should call, for `flywheel webhook register`."
    )
    registry_adopt: bool = Field(
        default=False,
        description="Adopt a Redis namespace whose alias state belongs to another MLflow registry (drops "
        "that state; the registry's aliases are then published as they are). Default: refuse.",
    )
    publish_timeout_s: float = positive_field(5.0)
    outbox_interval_s: float = positive_field(1.0)
