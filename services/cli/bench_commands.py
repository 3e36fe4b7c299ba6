"""`flywheel bench ...`: the benchmarks as commands. Each measures side by side in one run (the machines
are shared and noisy) and prints one line of JSON, last (`benchmarks/` holds the measurements)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; each prints one JSON line.")


def _print_json(doc: object) -> None:
    """The result as the last line of stdout, one line of JSON (`| tail -1 | jq .` to read it)."""
    import json

    typer.echo(json.dumps(doc, separators=(",", ":")))


@bench_app.callback()
def bench_json_only() -> None:
    """Benchmarks print one JSON line and little else: no MLflow run URLs, progress bars or warnings
    (the services they start log to files in the workdir)."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # also for the helpers they start
    warnings.filterwarnings("ignore")
    for noisy in ("mlflow", "alembic", "urllib3", "kafka", "aiokafka", "git"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


BROKER_OPTION = typer.Option(
    "both", help="Embedded broker(s) to measure, one after the other: both, apache or tansu"
)


def _brokers(choice: str) -> list[str]:
    from benchmarks.common import brokers_to_run

    try:
        return brokers_to_run(choice)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--broker") from None


@bench_app.command("webhook")
def bench_webhook(
    changes: int = typer.Option(200, min=100, help="Alias moves measured on the webhook path"),
    poller_changes: int = typer.Option(30, min=5, help="Alias moves measured on the poller-only path"),
    poll_interval: float = typer.Option(1.0, help="Poll interval of the poller-only run (s)"),
    workdir: Path = typer.Option(Path(".flywheel/bench-webhook")),
    broker: str = BROKER_OPTION,
) -> None:
    """Alias write in MLflow -> event on Kafka: p50/p95/p99, webhook path and poller path."""
    from benchmarks.webhook import run as run_bench

    _print_json(run_bench(changes, poller_changes, poll_interval, workdir.resolve(), _brokers(broker)))


@bench_app.command("propagation")
def bench_propagation(
    moves: int = typer.Option(60, min=50, help="Alias moves measured on the webhook path"),
    poller_moves: int = typer.Option(15, min=5, help="Alias moves measured on the poller-only path"),
    poll_interval: float = typer.Option(1.0, help="Poll interval of the poller-only run (s)"),
    replicas: int = typer.Option(2, min=1, help="Gateway replicas"),
    workdir: Path = typer.Option(Path(".flywheel/bench-propagation")),
    broker: str = BROKER_OPTION,
) -> None:
    """Alias write -> every gateway replica serving the new version: p50/p95/p99, both paths."""
    from benchmarks.propagation import run as run_bench

    _print_json(run_bench(moves, poller_moves, poll_interval, replicas, workdir.resolve(), _brokers(broker)))


@bench_app.command("feedback")
def bench_feedback(
    events: int = typer.Option(5000, min=100, help="Feedback events per run"),
    workdir: Path = typer.Option(Path(".flywheel/bench-feedback")),
    broker: str = BROKER_OPTION,
    instances: str = typer.Option(
        "1", help="Worker instances in one consumer group, e.g. 1,2 (each measured, scale-out ratio)"
    ),
) -> None:
    """Feedback produce -> aggregated count vs bare aiokafka produce -> consume, on each broker."""
    from benchmarks.feedback import run as run_bench

    try:
        counts = [int(c) for c in instances.replace("|", ",").split(",") if c.strip()]
    except ValueError:
        raise typer.BadParameter(f"--instances {instances!r}: expected counts like 1,2") from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter(f"--instances {instances!r}: expected counts of at least 1")
    _print_json(run_bench(events, workdir.resolve(), _brokers(broker), counts))


@bench_app.command("memory")
def bench_memory(
    duration: float = typer.Option(20.0, min=2.0, help="Seconds of load (predictions + feedback)"),
    concurrency: int = typer.Option(4, min=1, help="Concurrent clients"),
    workdir: Path = typer.Option(Path(".flywheel/bench-memory")),
) -> None:
    """RSS of every service (gateway with two loaded versions, each worker): at rest and peak under load."""
    from benchmarks.memory import run as run_bench

    _print_json(run_bench(duration, concurrency, workdir.resolve()))


@bench_app.command("dataset-writer")
def bench_dataset_writer(
    rows: int = typer.Option(200_000, min=1000, help="Synthetic example rows"),
    repeats: int = typer.Option(3, min=1, help="Timed repetitions (median reported)"),
) -> None:
    """Dataset writer throughput: rows/s for Parquet and JSONL (target >= 100,000 rows/s Parquet)."""
    from benchmarks.dataset_writer import run as run_bench

    _print_json(run_bench(rows, repeats))


def _register_load_bench(name: str, doc: str, duration_s: float, concurrency_levels: str, what: str) -> None:
    """`flywheel bench NAME`: a benchmark that drives servers at several concurrency levels, in
    alternating rounds (`benchmarks/NAME.py`'s `run(duration, levels, rounds, workdir)`)."""

    def command(
        duration: float = typer.Option(duration_s, min=1.0, help=f"Seconds per measured round and {what}"),
        concurrency: str = typer.Option(
            concurrency_levels, help="Concurrent keep-alive connections, e.g. 1,4"
        ),
        rounds: int = typer.Option(2, min=1, help=f"Alternating rounds per {what} and concurrency"),
        workdir: Path = typer.Option(Path(f".flywheel/bench-{name}")),
    ) -> None:
        import importlib

        run_bench = importlib.import_module(f"benchmarks.{name}").run
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
        _print_json(run_bench(duration, levels, rounds, workdir.resolve()))

    bench_app.command(name, help=doc)(command)


_register_load_bench(
    "gateway",
    "Gateway vs `mlflow models serve`, MLServer (with and without adaptive batching) and the floor "
    "(a minimal FastAPI server, direct and micro-batched) on the same model: req/s, p50/p99, CPU-ms per "
    "request, ratios; then the trace store's load per 1,000 predictions.",
    8.0,
    "1,4,16,64",
    "server",
)
_register_load_bench(
    "shadow",
    "Champion p50/p99 with the shadow step mirroring 0 %, 50 % and 100 % of requests, side by side.",
    8.0,
    "1,4",
    "setting",
)
