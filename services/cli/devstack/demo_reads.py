"""What the demo reads to tell its story: where an alias points in MLflow, and a rollout as the canary's
control API shows it. Both tolerate a busy or restarting server (the story waits, it does not crash)."""

from __future__ import annotations

import time
from typing import Any

import httpx
from mlflow import MlflowClient

from services.cli.stack_runner import RunningService


def alias_of(client: MlflowClient, model: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except Exception:
        return None


def alias_becomes(client: MlflowClient, model: str, alias: str, version: str, timeout_s: float = 30) -> bool:
    """The registry may lag the rollout's view by a moment (and a busy server answers slowly)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if alias_of(client, model, alias) == version:
            return True
        time.sleep(0.5)
    return False


def rollout_view(canary: RunningService, model: str) -> dict[str, Any] | None:
    try:
        resp = httpx.get(f"{canary.url}/v1/rollouts/{model}", timeout=5)
    except httpx.HTTPError:
        return None
    return resp.json() if resp.status_code == 200 else None
