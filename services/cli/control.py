"""`flywheel status` and `flywheel rollout promote|abort MODEL`: operators' view and actions.

Status reads what the services keep in Redis (alias resolution, rollouts, traffic splits, feedback
summaries) and the aliases in MLflow, so it works without any service API being reachable. Rollout
actions go through the canary service's control API (its in-memory state owns the rollout), with the
admin token from FLYWHEEL_ADMIN_TOKEN.
"""

from __future__ import annotations

import json
from typing import Any, cast

import httpx
import redis
from pydantic import Field, SecretStr
from rich.console import Console
from rich.table import Table

from services.shared.redis_store import RedisKeys
from services.shared.settings import FlywheelSettings


class ControlSettings(FlywheelSettings):
    admin_token: SecretStr | None = None
    canary_url: str = Field(default="http://127.0.0.1:8090", description="Canary rollout control API.")


def rollout_action(settings: ControlSettings, model: str, action: str, reason: str | None) -> dict[str, Any]:
    if settings.admin_token is None:
        raise RuntimeError("FLYWHEEL_ADMIN_TOKEN is not set")
    resp = httpx.post(
        f"{settings.canary_url.rstrip('/')}/v1/rollouts/{model}/{action}",
        headers={"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"},
        json={"reason": reason, "actor": "cli"},
        timeout=30,
    )
    if resp.status_code != 200:
        detail = (
            resp.json().get("detail")
            if resp.headers.get("content-type", "").startswith("application/json")
            else resp.text
        )
        raise RuntimeError(f"{action} {model}: HTTP {resp.status_code}: {detail}")
    return cast(dict[str, Any], resp.json())


def status_rows(settings: ControlSettings) -> list[dict[str, Any]]:
    """One row per model known to Flywheel (resolution cache or rollouts)."""
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=3)
    keys = RedisKeys(settings.redis_prefix)
    models = set(cast(set[str], r.smembers(keys.resolution_models()))) | set(
        cast(set[str], r.smembers(keys.rollout_models()))
    )
    rows = []
    for model in sorted(m for m in models if settings.watches(m)):
        resolution = {
            alias: json.loads(value).get("version")
            for alias, value in cast(dict[str, str], r.hgetall(keys.resolution(model))).items()
        }
        state = r.get(keys.rollout_state(model))
        saved = (json.loads(cast(str, state)) or {}) if state else {}
        rollout, watch = saved.get("rollout"), saved.get("watch")
        split = r.get(keys.traffic_split(model))
        rows.append(
            {
                "model": model,
                "aliases": {a: v for a, v in resolution.items() if v is not None},
                "rollout": rollout,
                "watch": {"version": watch["rollout"]["challenger_version"], "until": watch["until"]}
                if watch
                else None,
                "traffic_split": json.loads(cast(str, split)) if split else None,
            }
        )
    return rows


def print_status(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="Flywheel status")
    for column in ("model", "aliases", "rollout", "step / weight", "challenger req / err / up"):
        table.add_column(column)
    for row in rows:
        rollout = row["rollout"]
        if rollout:
            totals = rollout.get("challenger_total") or {}
            up, down = totals.get("thumbs_up", 0), totals.get("thumbs_down", 0)
            rate = f"{up / (up + down):.0%}" if up + down else "-"
            rollout_cell = (
                f"{rollout['status']} v{rollout['challenger_version']} vs v{rollout['champion_version']}"
            )
            step_cell = f"{rollout['step'] + 1}/{len(rollout['policy']['weights'])} · {rollout['weight']:g}%"
            if rollout.get("shadow"):
                step_cell = "shadow step · 0%"
            totals_cell = f"{totals.get('requests', 0)} / {totals.get('errors', 0)} / {rate}"
        else:
            rollout_cell, step_cell, totals_cell = "-", "-", "-"
        if row.get("watch"):
            rollout_cell += f"; watching v{row['watch']['version']} until {row['watch']['until'][11:19]}"
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(row["aliases"].items())) or "-"
        table.add_row(row["model"], aliases, rollout_cell, step_cell, totals_cell)
    console.print(table)
