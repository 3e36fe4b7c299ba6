"""One row per model as operators look at it: aliases, what each replica serves, the rollout, the watch,
feedback totals, and links into the MLflow UI.

Read from what the services already keep in Redis (the alias resolution cache, the canary's state and
traffic split, the feedback summary, the fleet heartbeats), so the read API, the console and
`flywheel status` show the same facts from the same code and need no service to answer. Synchronous
(redis-py): the CLI calls it directly, the HTTP API in a thread.
"""

from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import quote

import redis
from pydantic import BaseModel, Field

from services.shared.console.ledger import DatasetVersion, Ledger, RetrainingRun
from services.shared.feedback_summary import read_summary_sync
from services.shared.fleet import ReplicaStatus, read_fleet
from services.shared.redis_store import RedisKeys
from services.shared.resolution import parse_entries
from services.shared.settings import FlywheelSettings
from services.shared.webhook_health import WebhookHealth, read_webhook_health, unknown


class RolloutBrief(BaseModel):
    rollout_id: str
    status: str
    champion_version: str | None
    challenger_version: str
    step: int = Field(description="0-based step of the weights ladder.")
    steps: int
    weight: float = Field(description="Challenger traffic share in percent.")
    shadow: bool = Field(description="In the shadow step (mirrored requests only).")
    started_at: str | None = None
    totals: dict[str, dict[str, Any]] = Field(description="Per variant: requests, errors, thumbs up/down.")


class WatchBrief(BaseModel):
    version: str = Field(description="The promoted version under watch.")
    previous_version: str | None
    until: str


class ModelOverview(BaseModel):
    model: str
    aliases: dict[str, str] = Field(description="alias -> version, as the resolution cache holds it.")
    replicas: dict[str, dict[str, str]] = Field(
        description="replica -> alias -> version it serves for this model right now."
    )
    rollout: RolloutBrief | None = None
    watch: WatchBrief | None = None
    traffic_split: dict[str, Any] | None = None
    feedback: dict[str, Any] | None = Field(
        default=None, description="Totals of the feedback summary (all versions) and when it was updated."
    )
    mlflow_url: str | None = Field(default=None, description="The model's page in the MLflow UI.")
    latest_dataset: DatasetVersion | None = None
    latest_retraining: RetrainingRun | None = None


class StatusReport(BaseModel):
    """Everything `flywheel status` shows: every known model and the gateway fleet."""

    models: list[ModelOverview]
    fleet: list[ReplicaStatus]
    ledger_error: str | None = Field(
        default=None, description="Why datasets and retraining runs are missing (Kafka could not be read)."
    )
    webhook: WebhookHealth = Field(
        default_factory=lambda: unknown("not read"),
        description="Whether MLflow's webhook deliveries reach the registry watcher.",
    )


def mlflow_model_url(settings: FlywheelSettings, model: str, version: str | None = None) -> str | None:
    ui = settings.mlflow_ui()
    if ui is None:
        return None
    page = f"{ui}/#/models/{quote(model, safe='')}"
    return f"{page}/versions/{quote(version, safe='')}" if version else page


def _json(value: object) -> Any:
    return json.loads(cast(str, value)) if value else None


def _rollout(saved: dict[str, Any] | None) -> tuple[RolloutBrief | None, WatchBrief | None]:
    if not saved:
        return None, None
    rollout, watch = saved.get("rollout"), saved.get("watch")
    brief = None
    if rollout:
        brief = RolloutBrief(
            rollout_id=rollout["rollout_id"],
            status=rollout["status"],
            champion_version=rollout.get("champion_version"),
            challenger_version=rollout["challenger_version"],
            step=rollout["step"],
            steps=len(rollout["policy"]["weights"]),
            weight=rollout["weight"],
            shadow=bool(rollout.get("shadow")),
            started_at=rollout.get("started_at"),
            totals={
                "champion": rollout.get("champion_total") or {},
                "challenger": rollout.get("challenger_total") or {},
            },
        )
    watch_brief = None
    if watch:
        watched = watch["rollout"]
        watch_brief = WatchBrief(
            version=watched["challenger_version"],
            previous_version=watched.get("champion_version"),
            until=watch["until"],
        )
    return brief, watch_brief


def known_models(client: redis.Redis, keys: RedisKeys, settings: FlywheelSettings) -> list[str]:
    """Every model Flywheel has seen: resolution cache, rollouts, feedback."""
    models: set[str] = set()
    for key in (keys.resolution_models(), keys.rollout_models(), keys.feedback_models()):
        models |= set(cast(set[str], client.smembers(key)))
    return sorted(m for m in models if settings.watches(m))


def model_overview(
    client: redis.Redis,
    keys: RedisKeys,
    settings: FlywheelSettings,
    model: str,
    fleet: list[ReplicaStatus],
) -> ModelOverview:
    resolution = parse_entries(cast(dict[str, str], client.hgetall(keys.resolution(model))))
    aliases = {alias: e.version for alias, e in resolution.items() if e.version is not None}
    rollout, watch = _rollout(_json(client.get(keys.rollout_state(model))))
    summary = read_summary_sync(client, keys, model)
    replicas = {
        s.replica: {a.alias: a.version for a in s.serving if a.model == model}
        for s in fleet
        if any(a.model == model for a in s.serving)
    }
    return ModelOverview(
        model=model,
        aliases=dict(sorted(aliases.items())),
        replicas=replicas,
        rollout=rollout,
        watch=watch,
        traffic_split=_json(client.get(keys.traffic_split(model))),
        feedback=(
            {
                "totals": summary["totals"],
                "updated_at": summary.get("updated_at"),
                "earlier_counts_lost": bool(summary.get("earlier_counts_lost")),
                "counts_since": summary.get("counts_since"),
            }
            if summary
            else None
        ),
        mlflow_url=mlflow_model_url(settings, model),
    )


def with_ledger(overview: ModelOverview, ledger: Ledger | None) -> ModelOverview:
    if ledger is None:
        return overview
    return overview.model_copy(
        update={
            "latest_dataset": ledger.datasets[0] if ledger.datasets else None,
            "latest_retraining": ledger.retraining[0] if ledger.retraining else None,
        }
    )


def status_report(
    client: redis.Redis,
    settings: FlywheelSettings,
    ledgers: dict[str, Ledger] | None,
    ledger_error: str | None = None,
) -> StatusReport:
    """Every known model (those with only a ledger too) and the fleet, read once. `ledgers=None`:
    Kafka could not be read (`ledger_error` says why); the report says so instead of failing."""
    keys = RedisKeys(settings.redis_prefix)
    fleet = read_fleet(client, keys)
    names = sorted(set(known_models(client, keys, settings)) | set(ledgers or {}))
    models = [
        with_ledger(model_overview(client, keys, settings, m, fleet), (ledgers or {}).get(m)) for m in names
    ]
    return StatusReport(
        models=models, fleet=fleet, ledger_error=ledger_error, webhook=read_webhook_health(client, keys)
    )
