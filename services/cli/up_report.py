"""The table `flywheel up` prints once everything runs: where each part listens, and what to open."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from services.cli.stack_runner import StackRunner
from services.shared.settings import redact_url


def up_table(runner: StackRunner, admin_token: str, logs: Path) -> Table:
    """A port that is not the part's default (it was taken) shows as `(8080 taken → 41234)`."""
    endpoints, moved = runner.endpoints, runner.ports.moved
    assert endpoints is not None, "start_infrastructure first"
    table = Table(title="Flywheel is up", show_header=False)
    table.add_row("MLflow", endpoints.mlflow_tracking_uri + moved("mlflow"))
    table.add_row(
        "Kafka",
        f"{endpoints.kafka_bootstrap_servers}: {endpoints.kafka_broker}, "
        f"{endpoints.kafka_profile} client profile ({endpoints.kafka_reason}){moved('kafka')}",
    )
    table.add_row("Redis", redact_url(endpoints.redis_url) + moved("redis"))
    watcher = runner.services["registry-watcher"]
    table.add_row(
        "registry watcher", f"{watcher.url}  (webhook: {watcher.url}/webhooks/mlflow){moved(watcher.name)}"
    )
    if runner.webhook_check is not None:
        state = "ok" if runner.webhook_check.ok else "[red]NOT DELIVERED[/]"
        table.add_row("webhook delivery", f"{state}: {runner.webhook_check.detail}")
    for name, svc in runner.services.items():
        if svc.url and svc is not watcher:
            table.add_row(name, svc.url + moved(name))
    canary = runner.services.get("canary-rollout")
    if canary is not None:
        table.add_row("console", f"{canary.url}/console")
        table.add_row("admin token", admin_token)
    table.add_row("started here", ", ".join(endpoints.started) or "nothing (all configured)")
    table.add_row("logs", str(logs))
    return table
