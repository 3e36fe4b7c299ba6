"""`flywheel`: run the stack, its services, demos and benchmarks."""

from __future__ import annotations

import os

import typer
from rich.console import Console

from services.cli import runners

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
webhook_app = typer.Typer(no_args_is_help=True, help="Manage Flywheel's MLflow webhook.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; each prints one JSON document.")
app.add_typer(webhook_app, name="webhook")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)


@app.command()
def run(service: str = typer.Argument(..., help=f"One of: {', '.join(sorted(runners.SERVICES))}")) -> None:
    """Run one service in the foreground (configuration from the environment)."""
    try:
        target = runners.entrypoint(service)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="SERVICE") from None
    target()


@webhook_app.command("register")
def webhook_register(
    url: str = typer.Option(..., help="URL MLflow calls, e.g. http://watcher:8070/webhooks/mlflow"),
    tracking_uri: str = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help="MLflow server"),
    secret: str = typer.Option(None, envvar="FLYWHEEL_WEBHOOK_SECRET", help="HMAC secret", show_default=False),
) -> None:
    """Create or update Flywheel's webhook on the MLflow server (idempotent)."""
    from mlflow import MlflowClient

    from services.registry_watcher.webhook_registration import register_webhook

    if not tracking_uri:
        raise typer.BadParameter("set MLFLOW_TRACKING_URI or pass --tracking-uri", param_hint="--tracking-uri")
    if not secret:
        console.print("[yellow]warning:[/] no FLYWHEEL_WEBHOOK_SECRET: deliveries will be unsigned and refused")
    reg = register_webhook(MlflowClient(tracking_uri=tracking_uri), url, secret)
    verb = "created" if reg.created else "updated"
    console.print(f"webhook {reg.webhook_id} {verb}: {reg.url}")


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    app()


if __name__ == "__main__":
    main()
