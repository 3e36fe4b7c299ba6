"""`flywheel status` and `flywheel rollout promote|abort MODEL`: operators' view and actions.

Status prints the console's `StatusReport` (services/shared/console/overview.py), read directly from
Redis (aliases, fleet, rollouts, feedback) and Kafka (datasets, retraining runs), so it works without any
service API being reachable and shows exactly what `/v1/status` answers. Rollout
actions go through the canary service's control API (its in-memory state owns the rollout), with the
admin token from FLYWHEEL_ADMIN_TOKEN.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import httpx
import redis
from pydantic import Field, SecretStr
from rich.console import Console
from rich.table import Table

from services.shared.console.ledger import read_ledger
from services.shared.console.overview import StatusReport, status_report
from services.shared.kafka.history_reader import HistoryUnavailable
from services.shared.settings import FlywheelSettings
from services.shared.webhook_health import WebhookHealth


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


def read_status(settings: ControlSettings) -> StatusReport:
    """What the console's /v1/status answers, read here directly: Redis for the live state, Kafka for
    datasets and retraining runs (reported as missing, not fatal, when Kafka cannot be read)."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=3)
    try:
        ledgers, error = read_ledger(settings, None, links=False), None
    except HistoryUnavailable as exc:
        ledgers, error = None, str(exc)
    return status_report(client, settings, ledgers, error)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def print_status(report: StatusReport, console: Console) -> None:
    table = Table(title="Flywheel status")
    for column in ("model", "aliases", "replicas", "rollout", "step / weight", "challenger req / err / up"):
        table.add_column(column)
    table.add_column("feedback: ratings / up")
    table.add_column("dataset / retraining")
    for row in report.models:
        rollout = row.rollout
        if rollout:
            totals = rollout.totals.get("challenger", {})
            up, down = totals.get("thumbs_up", 0), totals.get("thumbs_down", 0)
            rollout_cell = f"{rollout.status} v{rollout.challenger_version} vs v{rollout.champion_version}"
            step_cell = (
                "shadow step · 0%"
                if rollout.shadow
                else f"{rollout.step + 1}/{rollout.steps} · {rollout.weight:g}%"
            )
            rate = _pct(up / (up + down) if up + down else None)
            totals_cell = f"{totals.get('requests', 0)} / {totals.get('errors', 0)} / {rate}"
        else:
            rollout_cell, step_cell, totals_cell = "-", "-", "-"
        if row.watch:
            rollout_cell += f"; watching v{row.watch.version} until {row.watch.until[11:19]}"
        aliases = ", ".join(f"{a}=v{v}" for a, v in row.aliases.items()) or "-"
        stale = [
            r for r, served in row.replicas.items() if any(row.aliases.get(a) != v for a, v in served.items())
        ]
        replicas = f"{len(row.replicas)}" + (f" ([red]{len(stale)} behind[/])" if stale else "")
        fb = row.feedback["totals"] if row.feedback else None
        feedback_cell = f"{fb['thumbs_up'] + fb['thumbs_down']} / {_pct(fb['thumbs_up_rate'])}" if fb else "-"
        if row.feedback and row.feedback.get("earlier_counts_lost"):
            since = str(row.feedback.get("counts_since"))[:19]
            feedback_cell += f" [yellow](counted since {since}: Redis lost the earlier counts)[/]"
        ds, rt = row.latest_dataset, row.latest_retraining
        ledger_cell = f"{f'v{ds.dataset_version} ({ds.rows} rows)' if ds else '-'} / " + (
            f"{rt.outcome}{f' v{rt.version}' if rt.version else ''}" if rt else "-"
        )
        table.add_row(
            row.model, aliases, replicas, rollout_cell, step_cell, totals_cell, feedback_cell, ledger_cell
        )
    console.print(table)
    fleet = Table(title="Gateway fleet")
    for column in ("replica", "state", "serving", "last swap", "swaps / failed loads", "reload errors"):
        fleet.add_column(column)
    for replica in report.fleet:
        serving = ", ".join(f"{s.model}@{s.alias}=v{s.version}" for s in replica.serving) or "-"
        swap = replica.last_swap
        swap_cell = (
            f"{swap.model}@{swap.alias} v{swap.previous_version} -> v{swap.version} at {swap.at:%H:%M:%S}"
            if swap
            else "-"
        )
        errors = "; ".join(f"{e.model}@{e.alias}: {e.message}" for e in replica.reload_errors) or "none"
        fleet.add_row(
            replica.replica,
            "ready" if replica.ready else "preloading",
            serving,
            swap_cell,
            f"{replica.swaps} / {replica.failed_loads}",
            errors,
        )
    console.print(fleet)
    console.print(webhook_line(report.webhook))
    if report.ledger_error:
        console.print(f"[yellow]datasets and retraining runs unavailable: {report.ledger_error}")


def webhook_line(health: WebhookHealth) -> str:
    """`flywheel status`'s line on MLflow's webhook deliveries (the likely causes when they fail)."""
    if health.status == "ok":
        return "webhook deliveries: ok"
    if health.status == "unknown":
        return f"webhook deliveries: unknown ({'; '.join(health.causes) or 'no report'})"
    since = datetime.fromtimestamp(health.failing_since or 0).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"[red]webhook deliveries failing since {since}[/]: the poller repaired {health.repaired_changes} "
        f"alias change(s) no delivery brought ({health.delivered_changes} delivered meanwhile); Flywheel "
        "runs on the poller alone. Likely:"
    ]
    lines += [f"  - {cause}" for cause in health.causes]
    return "\n".join(lines)
