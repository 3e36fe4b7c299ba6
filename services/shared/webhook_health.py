"""Whether MLflow's webhook deliveries reach the registry watcher: the contract between the watcher (which
writes it) and `flywheel status`, `/v1/status` and the console (which read it).

A change the poller has to repair — it found an alias move that no delivery had brought — means a delivery
failed; Flywheel then runs on the poller alone (intermediate moves are never published, propagation becomes
the poll interval), which must not go unnoticed. The watcher rewrites this record every poll cycle with a
time to live of a few cycles: a missing record means no watcher is polling (status `unknown`).
"""

from __future__ import annotations

from typing import Literal

import redis
from pydantic import BaseModel, Field

from services.shared.redis_store import RedisKeys

WebhookStatus = Literal["ok", "failing", "unknown"]

CAUSES = {
    "no_delivery": "no delivery has reached the watcher: is the webhook registered (`flywheel webhook "
    "register --url ...`), is its URL reachable from the MLflow server, and does the MLflow server allow it "
    "(MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true for an http or "
    "private address)?",
    "some_dropped": "some deliveries arrive, others do not: an MLflow server with several workers and no "
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY (each worker encrypts webhook secrets under its own random key; "
    "the others log InvalidSignature and drop every delivery) — set one key on every worker",
    "signature_rejected": "deliveries were refused for their signature: FLYWHEEL_WEBHOOK_SECRET differs from "
    "the secret the webhook was registered with (register it again)",
}


class WebhookHealth(BaseModel):
    status: WebhookStatus
    failing_since: float | None = Field(default=None, description="Unix time of the first repair.")
    last_delivery_at: float | None = Field(default=None, description="Last verified alias delivery.")
    last_repair_at: float | None = Field(default=None, description="Last change no delivery brought.")
    repaired_changes: int = Field(default=0, description="Changes repaired by the poller while failing.")
    delivered_changes: int = Field(default=0, description="Alias deliveries received while failing.")
    rejected_signatures: int = Field(default=0, description="Deliveries refused for their signature.")
    causes: list[str] = Field(default_factory=list, description="The likely causes, most likely first.")
    watcher: str = ""
    updated_at: float = 0.0


def unknown(why: str) -> WebhookHealth:
    return WebhookHealth(status="unknown", causes=[why])


def read_webhook_health(client: redis.Redis, keys: RedisKeys) -> WebhookHealth:
    raw = client.get(keys.webhook_health())
    if not raw:
        return unknown("no registry watcher has reported recently")
    try:
        return WebhookHealth.model_validate_json(raw)
    except ValueError:
        return unknown("the watcher's report is unreadable")
