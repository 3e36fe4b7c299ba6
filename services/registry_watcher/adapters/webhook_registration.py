"""`flywheel webhook register --url URL`: create or update Flywheel's MLflow webhook, idempotently.

The webhook is found by name; when it exists its URL, events, secret and status are updated in place,
so running the command twice leaves one webhook.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx
from mlflow import MlflowClient
from mlflow.entities.webhook import WebhookEvent, WebhookStatus, WebhookTestResult

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


def check_delivery(client: MlflowClient, webhook_id: str, attempts: int = 8) -> DeliveryCheck:
    """Ask MLflow to send `attempts` test deliveries now (signed, to the registered URL) and say what came
    back; ok only when every one arrived.

    Several, because one proves little: an MLflow server with several workers and no
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY stores the webhook's secret under one worker's random key, and
    the other workers cannot decrypt it (InvalidSignature in MLflow's log) — a single test may happen to
    reach the one worker that can. The test uses a `registered_model.created` payload, which the watcher
    verifies and then ignores, so it proves reachability and the shared secret without publishing
    anything. It cannot prove that alias changes are delivered yet: MLflow caches its webhook list
    (MLFLOW_WEBHOOK_CACHE_TTL, 60 s by default), so a webhook registered on a running server fires for alias
    changes only after that (the watcher reports `webhook deliveries failing` when they never do)."""
    failures: list[str] = []
    statuses: set[str] = set()
    for _ in range(attempts):
        try:
            result = _test_on_a_new_connection(client, webhook_id)
        except Exception as exc:
            failures.append(f"MLflow could not send a test delivery: {exc}"[:300])
            continue
        if result.success:
            statuses.add(str(result.response_status))
            continue
        status = f"HTTP {result.response_status}" if result.response_status else "no answer"
        failures.append(
            f"test delivery failed ({status}): {result.error_message or result.response_body}"[:300]
        )
    if not failures:
        return DeliveryCheck(
            True, f"{attempts} of {attempts} test deliveries answered {', '.join(sorted(statuses))}"
        )
    detail = f"{len(failures)} of {attempts} test deliveries failed; first: {failures[0]}"
    if len(failures) < attempts:
        detail += (
            " — some arrive, others not: an MLflow server with several workers and no "
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY? (set one key on every worker)"
        )
    return DeliveryCheck(False, detail)


def _test_on_a_new_connection(client: MlflowClient, webhook_id: str) -> WebhookTestResult:
    """One test delivery, asked for on a connection of its own, so that several of them reach several of
    the server's workers (MLflow's client keeps its connections alive: every call would meet one worker)."""
    uri = client.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return client.test_webhook(webhook_id, event="registered_model.created")
    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    headers = {"Connection": "close"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    resp = httpx.post(
        f"{uri.rstrip('/')}/api/2.0/mlflow/webhooks/{webhook_id}/test",
        json={"event": {"entity": "REGISTERED_MODEL", "action": "CREATED"}},
        headers=headers,
        auth=auth,
        timeout=30.0,
    )
    if resp.status_code != 200:
        raise RuntimeError(f"HTTP {resp.status_code} from MLflow: {resp.text[:200]}")
    body = resp.json().get("result", {})
    return WebhookTestResult(
        success=bool(body.get("success")),
        response_status=body.get("response_status"),
        response_body=body.get("response_body"),
        error_message=body.get("error_message"),
    )
