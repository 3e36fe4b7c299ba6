"""`flywheel`: run the stack, its services, demos and benchmarks."""

from __future__ import annotations

import os
import secrets
import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer
from rich.console import Console

from services.cli import runners, up_registry
from services.cli.bench_commands import bench_app
from services.cli.devstack.process import die_with_this_process

if TYPE_CHECKING:
    from services.cli.stack_runner import StackRunner

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
webhook_app = typer.Typer(no_args_is_help=True, help="Manage Flywheel's MLflow webhook.")
app.add_typer(webhook_app, name="webhook")
rollout_app = typer.Typer(no_args_is_help=True, help="Act on canary rollouts (needs FLYWHEEL_ADMIN_TOKEN).")
app.add_typer(bench_app, name="bench")
topics_app = typer.Typer(no_args_is_help=True, help="Flywheel's Kafka topics (partitions, replication).")
app.add_typer(topics_app, name="topics")
app.add_typer(rollout_app, name="rollout")
console = Console(stderr=True)


@app.command()
def run(service: str = typer.Argument(..., help=f"One of: {', '.join(sorted(runners.SERVICES))}")) -> None:
    """Run one service in the foreground (configuration from the environment)."""
    try:
        target = runners.entrypoint(service)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="SERVICE") from None
    target()


def _rollout(model: str, action: str, reason: str | None) -> None:
    from services.cli.control import ControlSettings, rollout_action

    try:
        result = rollout_action(ControlSettings(), model, action, reason)
    except (RuntimeError, OSError) as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(1) from None
    for decision in result["decisions"]:
        console.print(f"{model}: {decision['decision']} -> {decision['state']} ({decision['reason']})")


ROLLOUT_ACTIONS = {
    "promote": "Promote the challenger now: champion moves to it, previous champion stays reachable.",
    "abort": "Abort the rollout: traffic back to the champion, challenger alias removed.",
    "pause": "Hold the rollout at its weight until resumed (traffic is measured; nothing is decided).",
    "resume": "Resume a paused rollout from where it stopped.",
}


def _register_rollout_action(action: str, help_text: str) -> None:
    def command(
        model: str = typer.Argument(..., help="Registered model name"),
        reason: str = typer.Option(None, help="Why (recorded in the decision)"),
    ) -> None:
        _rollout(model, action, reason)

    rollout_app.command(action, help=help_text)(command)


for _action, _help in ROLLOUT_ACTIONS.items():
    _register_rollout_action(_action, _help)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table")) -> None:
    """Every model (aliases, replicas, rollout, feedback, datasets, retraining) and the gateway fleet:
    what the console and GET /v1/status show."""
    from services.cli.control import ControlSettings, print_status, read_status

    try:
        report = read_status(ControlSettings())
    except Exception as exc:
        console.print(f"[red]cannot read Flywheel state: {exc}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        print_status(report, Console(width=max(Console().width, 160)))


@app.command()
def history(
    model: str = typer.Argument(..., help="Registered model name"),
    since: str = typer.Option(None, help="RFC 3339 time, or an age such as 2h / 3d (default: all)"),
    until: str = typer.Option(None, help="RFC 3339 time (default: now)"),
    holds: bool = typer.Option(False, "--holds/--no-holds", help="Also list the canary's hold decisions"),
    at: str = typer.Option(None, "--at", help="Only say which version each alias pointed to at this time"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
) -> None:
    """What was live when: every alias change (and who made it) and canary decision, from Kafka."""
    from services.cli.history import history_command

    try:
        history_command(model, since, until, holds, at, as_json, console)
    except ValueError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(2) from None
    except RuntimeError as exc:
        console.print(f"[red]cannot read the history: {exc}")
        raise typer.Exit(1) from None


@app.command("export-dataset")
def export_dataset(
    model: str = typer.Option(..., help="Registered model name"),
    rating: str = typer.Option(None, help="thumbs_up or thumbs_down (default: both)"),
    since: datetime = typer.Option(None, help="Traces from this time (ISO 8601, UTC if no zone)"),
    until: datetime = typer.Option(None, help="Traces before this time"),
    fmt: str = typer.Option("jsonl", "--format", help="csv, json, jsonl or parquet"),
    output: Path = typer.Option(None, help="File to write (default: {model}-{rating}.{format})"),
    limit: int = typer.Option(None, min=1, help="At most this many traces"),
    tracking_uri: str = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help="MLflow server"),
    trace_experiment: str = typer.Option("flywheel/serving", envvar="FLYWHEEL_TRACE_EXPERIMENT"),
) -> None:
    """Training data from MLflow traces with feedback (corrected outputs preferred), streamed to a file."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from services.feedback_aggregation.adapters.data_exporter import RATINGS, DataExporter
    from services.feedback_aggregation.adapters.dataset_writer import ExportFormat

    if fmt not in ("csv", "json", "jsonl", "parquet"):
        raise typer.BadParameter("must be csv, json, jsonl or parquet", param_hint="--format")
    if rating is not None and rating not in RATINGS:
        raise typer.BadParameter(f"must be one of {', '.join(RATINGS)}", param_hint="--rating")
    if not tracking_uri:
        raise typer.BadParameter(
            "set MLFLOW_TRACKING_URI or pass --tracking-uri", param_hint="--tracking-uri"
        )
    path = output or Path(f"{model}-{rating or 'all'}.{fmt}")
    exporter = DataExporter(tracking_uri, trace_experiment)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} traces"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"exporting {model}", total=limit)
        written = exporter.export_streaming(
            model,
            rating,
            cast(ExportFormat, fmt),
            path,
            start_date=since,
            end_date=until,
            limit=limit,
            on_trace=lambda: progress.advance(task),
        )
    console.print(
        f"wrote {written.rows} examples to {path} ({written.size_bytes} bytes, "
        f"sha256 {written.sha256[:12]}); "
        f"skipped {exporter.skipped} thumbs-down traces without a correction"
    )


@webhook_app.command("register")
def webhook_register(
    url: str = typer.Option(..., help="URL MLflow calls, e.g. http://watcher:8070/webhooks/mlflow"),
    tracking_uri: str = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help="MLflow server"),
    secret: str = typer.Option(
        None, envvar="FLYWHEEL_WEBHOOK_SECRET", help="HMAC secret", show_default=False
    ),
) -> None:
    """Create or update Flywheel's webhook on the MLflow server (idempotent)."""
    from mlflow import MlflowClient

    from services.registry_watcher.adapters.webhook_registration import check_delivery, register_webhook

    if not tracking_uri:
        raise typer.BadParameter(
            "set MLFLOW_TRACKING_URI or pass --tracking-uri", param_hint="--tracking-uri"
        )
    if not secret:
        console.print(
            "[yellow]warning:[/] no FLYWHEEL_WEBHOOK_SECRET: deliveries will be unsigned and refused"
        )
    client = MlflowClient(tracking_uri=tracking_uri)
    reg = register_webhook(client, url, secret)
    verb = "created" if reg.created else "updated"
    console.print(f"webhook {reg.webhook_id} {verb}: {reg.url}")
    check = check_delivery(client, reg.webhook_id)
    if not check.ok:
        console.print(f"[red]deliveries do not arrive:[/] {check.detail}")
        raise typer.Exit(1)
    console.print(
        f"{check.detail}; MLflow delivers alias changes to it once its webhook cache expires "
        "(MLFLOW_WEBHOOK_CACHE_TTL, 60 s by default) — until then the watcher's poller catches up"
    )


def _topic_report(create: bool) -> None:
    from events import ALL_TOPICS
    from services.shared.kafka.admin import check_topics, ensure_topics_for
    from services.shared.settings import FlywheelSettings

    settings = FlywheelSettings()
    report = ensure_topics_for(settings) if create else check_topics(settings, ALL_TOPICS, "flywheel")
    for topic in report.created:
        console.print(
            f"created {topic}: {settings.kafka_partitions} partitions, "
            f"replication factor {settings.kafka_replication_factor}"
        )
    for problem in report.problems():
        console.print(f"[yellow]{problem}")
    if report.problems():
        raise typer.Exit(1)
    console.print(f"{len(ALL_TOPICS)} topics as configured")


@topics_app.command("ensure")
def topics_ensure() -> None:
    """Create missing topics (FLYWHEEL_KAFKA_PARTITIONS, FLYWHEEL_KAFKA_REPLICATION_FACTOR); exit 1 when
    existing ones differ from that configuration (they are never changed)."""
    _topic_report(create=True)


@topics_app.command("check")
def topics_check() -> None:
    """Say which topics are missing or differ from the configuration; exit 1 if any."""
    _topic_report(create=False)


@app.command()
def up(
    workdir: Path = typer.Option(Path(".flywheel"), help="State, logs and embedded servers' data"),
    poll_interval: float = typer.Option(None, envvar="FLYWHEEL_POLL_INTERVAL_S", help="Poller interval (s)"),
    stable_ports: bool = typer.Option(
        True,
        "--stable-ports/--ephemeral-ports",
        help="Each part on its default port when free (MLflow 5000, watcher 8070, gateways 8080…, "
        "canary 8090, …), or on random free ports",
    ),
) -> None:
    """Start the whole stack; embedded MLflow/Redis/Kafka for whatever is not configured. Ctrl-C stops it."""
    from services.cli.devstack.ports import Ports
    from services.cli.stack_runner import StackRunner
    from services.cli.up_report import up_table

    env = dict(os.environ)
    if poll_interval is not None:
        env["FLYWHEEL_POLL_INTERVAL_S"] = str(poll_interval)
    die_with_this_process()  # nothing started below outlives this process, even killed with SIGKILL
    _earlier_stacks(stable_ports)
    record = up_registry.record_this(workdir.resolve())
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    runner = StackRunner(workdir.resolve(), env, ports=Ports(stable=stable_ports))
    try:
        with console.status("starting infrastructure"):
            runner.start_infrastructure()
        env.setdefault("FLYWHEEL_ADMIN_TOKEN", secrets.token_urlsafe(24))
        runner.env = env
        with console.status("starting services"):
            runner.start_all()
        token = (
            "FLYWHEEL_ADMIN_TOKEN (as set)"
            if "FLYWHEEL_ADMIN_TOKEN" in os.environ
            else env["FLYWHEEL_ADMIN_TOKEN"]
        )
        Console().print(up_table(runner, token, workdir.resolve() / "logs"))
        _record_processes(record, runner)
        console.print("press Ctrl-C to stop")
        while not stopping.wait(0.5):
            for name, svc in runner.services.items():
                if not svc.process.alive():
                    console.print(f"[red]{name} exited[/]; see {svc.process.log_path}")
                    raise typer.Exit(1)
    finally:
        console.print("stopping")
        runner.stop()
        record.remove()


def _earlier_stacks(stable_ports: bool) -> None:
    """Say so when a stack of `flywheel up`'s own still runs (and holds the default ports); stop what an
    `up` killed before it could stop its children left behind."""
    for other in up_registry.records():
        if other.pid == os.getpid():
            continue
        if other.up_alive():
            held = ", ".join(f"{name} {where}" for name, where in sorted(other.addresses.items()))
            message = f"a Flywheel stack is already running: `flywheel up` pid {other.pid} "
            message += f"(workdir {other.workdir})" + (f", holding {held}" if held else "")
            if stable_ports:
                console.print(
                    f"[red]{message}[/]. Stop it first (Ctrl-C in its terminal, or `kill {other.pid}`), "
                    "or start this one with --ephemeral-ports."
                )
                raise typer.Exit(1)
            console.print(f"[yellow]{message}[/]; this one runs on other ports.")
            continue
        stopped = up_registry.stop_orphans(other)
        if stopped:
            console.print(
                f"stopped {len(stopped)} processes that an earlier `flywheel up` (pid {other.pid}, gone) "
                f"left running: {', '.join(sorted(stopped))}"
            )


def _record_processes(record: up_registry.UpRecord, runner: StackRunner) -> None:
    for name, process in runner.managed().items():
        if process.pid is not None:
            record.children[name] = process.pid
            record.commands[str(process.pid)] = up_registry.cmdline(process.pid) or ""
    record.addresses = {name: url for name, service in runner.services.items() if (url := service.url)}
    record.save()


@app.command()
def demo(workdir: Path = typer.Option(Path(".flywheel/demo"), help="Logs and embedded data")) -> None:
    """Scripted end-to-end scenario on embedded defaults; prints what happened; exit 0/1."""
    from services.cli.devstack.demo import run_demo

    die_with_this_process()  # the demo's stack goes with it, however it ends
    raise typer.Exit(run_demo(workdir.resolve()))


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    app()


if __name__ == "__main__":
    main()
