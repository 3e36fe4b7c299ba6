"""`flywheel webhook register --url URL`: create or update Flywheel's MLflow webhook, idempotently.

The webhook is found by name; when it exists its URL, events, secret and status are updated in place,
so running the command twice leaves one webhook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.webhook import WebhookEvent, WebhookStatus

WEBHOOK_NAME = "flywheel-registry-watcher"
ALIAS_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")


@dataclass(frozen=True)
class Registration:
    webhook_id: str
    created: bool
    url: str


def register_webhook(
    client: MlflowClient, url: str, secret: str | None, name: str = WEBHOOK_NAME
) -> Registration:
    events: list[Any] = [WebhookEvent(*e.split(".")) for e in ALIAS_EVENTS]
    existing = None
    token = None
    while existing is None:
        page = client.list_webhooks(max_results=100, page_token=token)
        existing = next((w for w in page if w.name == name), None)
        token = page.token
        if not token:
            break
    if existing is None:
        hook = client.create_webhook(name=name, url=url, events=events, secret=secret)
        return Registration(hook.webhook_id, True, url)
    client.update_webhook(
        existing.webhook_id, url=url, events=events, secret=secret, status=WebhookStatus.ACTIVE
    )
    return Registration(existing.webhook_id, False, url)


@dataclass(frozen=True)
class DeliveryCheck:
    ok: bool
    detail: str


def check_delivery(client: MlflowClient, webhook_id: str) -> DeliveryCheck:
    """Ask MLflow to send a test delivery now (signed, to the registered URL) and say what came back.

    The test uses a `registered_model.created` payload, which the watcher verifies and then ignores,
    so it proves reachability and the shared secret without publishing anything. It cannot prove that
    alias changes are delivered yet: MLflow caches its webhook list (MLFLOW_WEBHOOK_CACHE_TTL, 60 s by
    default), so a webhook registered on a running server fires for alias changes only after that."""
    try:
        result = client.test_webhook(webhook_id, event="registered_model.created")
    except Exception as exc:
        return DeliveryCheck(False, f"MLflow could not send a test delivery: {exc}")
    if result.success:
        return DeliveryCheck(True, f"test delivery answered {result.response_status}")
    status = f"HTTP {result.response_status}" if result.response_status else "no answer"
    return DeliveryCheck(
        False, f"test delivery failed ({status}): {result.error_message or result.response_body}"
    )
