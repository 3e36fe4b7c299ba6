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
