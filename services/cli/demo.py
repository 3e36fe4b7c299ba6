"""`flywheel demo`: a scripted end-to-end run on embedded defaults that prints what happened and the numbers.

Act 1, hot reload: two real sklearn versions of a wine classifier are registered; v1 is champion on two
gateway replicas; a client keeps sending held-out samples to both replicas while `champion` moves to v2
in MLflow. Printed: requests sent, failed (must be 0), when each replica began serving v2, and the live
accuracy each version achieved on the traffic it served. Exit status 0 only if all of that holds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient
from rich.console import Console
from rich.table import Table

from services.cli.stack_runner import RunningService, StackRunner
from services.shared.sample_models import register_wine_version, wine_data

console = Console()


@dataclass
class Traffic:
    """Requests sent by the demo client: (sent_at, replica, version or None, correct or None)."""

    rows: list[tuple[float, str, str | None, bool | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, row: tuple[float, str, str | None, bool | None], error: str | None = None) -> None:
        with self.lock:
            self.rows.append(row)
            if error:
                self.errors.append(error)


class TrafficClient:
    """Threads sending held-out samples to every replica in turn until stopped."""

    def __init__(self, replicas: list[RunningService], model: str, threads: int = 4) -> None:
        data = wine_data()
        self.samples = [
            ({k: float(v) for k, v in row.items()}, int(label))
            for (_, row), label in zip(data.test_x.iterrows(), data.test_y, strict=True)
        ]
        self.replicas = replicas
        self.model = model
        self.traffic = Traffic()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, worker: int) -> None:
        i = worker
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                replica = self.replicas[i % len(self.replicas)]
                record, label = self.samples[i % len(self.samples)]
                i += 1
                sent = time.time()
                try:
                    resp = client.post(
                        f"{replica.url}/v1/models/{self.model}/predict", json={"inputs": record}
                    )
                except httpx.HTTPError as exc:
                    self.traffic.add((sent, replica.name, None, None), f"{replica.name}: {exc!r}")
                    continue
                if resp.status_code != 200:
                    self.traffic.add((sent, replica.name, None, None), f"{replica.name}: {resp.status_code}")
                    continue
                body = resp.json()
                self.traffic.add((sent, replica.name, str(body["version"]), body["outputs"] == label))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def _serving_since(replica: RunningService, model: str) -> tuple[str | None, float]:
    try:
        status = httpx.get(f"{replica.url}/v1/models/{model}", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return None, 0.0
    return status.get("aliases", {}).get("champion"), float(status.get("swapped_at", {}).get("champion", 0))


def wait_until_serving(
    replicas: list[RunningService], model: str, version: str, timeout_s: float = 60.0
) -> dict[str, float]:
    """Replica name -> wall time it began serving `version` as champion."""
    deadline = time.time() + timeout_s
    since: dict[str, float] = {}
    while time.time() < deadline and len(since) < len(replicas):
        for replica in replicas:
            served, at = _serving_since(replica, model)
            if served == version:
                since[replica.name] = at
        time.sleep(0.02)
    return since


def act_hot_reload(runner: StackRunner, tracking_uri: str, model: str) -> tuple[bool, dict[str, Any]]:
    client = MlflowClient(tracking_uri=tracking_uri)
    console.rule("[bold]Act 1: hot reload")
    v1, acc1 = register_wine_version(tracking_uri, model, "weak")
    v2, acc2 = register_wine_version(tracking_uri, model, "strong")
    console.print(f"registered {model} v{v1} (held-out accuracy {acc1:.3f}) and v{v2} ({acc2:.3f})")
    client.set_registered_model_alias(model, "champion", v1)
    replicas = runner.start_hot_reload(2, {"FLYWHEEL_MODELS": model})
    console.print(f"registry watcher, cache invalidation and {len(replicas)} gateway replicas are up")

    # The watcher's first poll publishes the existing champion; every replica preloads it.
    if len(wait_until_serving(replicas, model, v1)) < len(replicas):
        console.print("[red]replicas did not start serving v1")
        return False, {}
    console.print(f"both replicas serve v{v1}; starting the client")
    traffic = TrafficClient(replicas, model)
    traffic.start()
    time.sleep(2.0)
    moved_at = time.time()
    client.set_registered_model_alias(model, "champion", v2)
    console.print(f"moved alias champion -> v{v2} in MLflow while the client was sending requests")
    since = wait_until_serving(replicas, model, v2, timeout_s=30)
    time.sleep(2.0)
    traffic.stop()

    rows, errors = traffic.traffic.rows, traffic.traffic.errors
    switch_ms = {name: round((at - moved_at) * 1000, 1) for name, at in since.items()}
    late_old = [r for r in rows if r[2] == v1 and r[1] in since and r[0] > since[r[1]] + 0.05]
    table = Table(title="hot reload")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("requests sent", str(len(rows)))
    table.add_row("failed", str(len(errors)))
    for replica in replicas:
        table.add_row(
            f"{replica.name}: alias write -> serving v{v2} (incl. download + load)",
            f"{switch_ms.get(replica.name, 'never')} ms",
        )
    for version in (v1, v2):
        served = [r for r in rows if r[2] == version]
        if served:
            accuracy = sum(1 for r in served if r[3]) / len(served)
            table.add_row(f"v{version}: requests served / live accuracy", f"{len(served)} / {accuracy:.3f}")
    table.add_row("v1 answers sent after a replica switched", str(len(late_old)))
    console.print(table)
    ok = not errors and len(since) == len(replicas) and not late_old
    for error in errors[:5]:
        console.print(f"[red]error: {error}")
    return ok, {
        "requests": len(rows),
        "failed": len(errors),
        "switch_ms": switch_ms,
        "accuracy": {v1: acc1, v2: acc2},
    }


def run_demo(workdir: Path) -> int:
    model = f"wine_demo_{int(time.time())}"
    with StackRunner(workdir) as runner:
        endpoints = runner.start_infrastructure()
        console.print(
            f"MLflow {endpoints.mlflow_tracking_uri}  Kafka {endpoints.kafka_bootstrap_servers}  "
            f"Redis {endpoints.redis_url}"
        )
        ok, _ = act_hot_reload(runner, endpoints.mlflow_tracking_uri, model)
    console.rule("[bold green]demo passed" if ok else "[bold red]demo FAILED")
    return 0 if ok else 1
