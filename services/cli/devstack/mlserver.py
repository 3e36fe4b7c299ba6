"""MLServer (Seldon's inference server, what KServe runs for MLflow models) as a managed local peer for
`flywheel bench gateway`.

MLServer cannot share Flywheel's environment: mlserver 1.7.1 pins `fastapi<0.116` and `protobuf<7`. It
gets its own virtualenv in a per-user cache keyed by version (`~/.cache/flywheel/mlserver/<version>/`,
`FLYWHEEL_MLSERVER_CACHE` moves it), built once with pip from PyPI with *this* environment's mlflow,
scikit-learn, pandas and numpy versions, so both load the same model artifact the same way. A cache is
complete only once its marker file is written. `uvloop` is pinned below 0.22: with newer ones MLServer's
worker start fails (SeldonIO/MLServer#2286).

The server runs with `parallel_workers: 0` (inference in the server process: one process, as the other
servers in the benchmark run one worker), metrics off, and gRPC on a free port (it cannot be disabled).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version as installed
from pathlib import Path
from typing import Any

import httpx

from services.cli.devstack.process import ManagedProcess, free_port

DEFAULT_MLSERVER_VERSION = "1.7.1"
_COMPLETE = ".flywheel-complete"
_SAME_AS_HERE = ("mlflow", "scikit-learn", "pandas", "numpy")


def cache_dir(version: str, env: dict[str, str] | None = None) -> Path:
    env = env if env is not None else dict(os.environ)
    if env.get("FLYWHEEL_MLSERVER_CACHE"):
        return Path(env["FLYWHEEL_MLSERVER_CACHE"]) / version
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "flywheel" / "mlserver" / version


def requirements(version: str) -> list[str]:
    return [
        f"mlserver=={version}",
        f"mlserver-mlflow=={version}",
        "uvloop<0.22",
        *(f"{name}=={installed(name)}" for name in _SAME_AS_HERE),
    ]


def ensure_mlserver(version: str = DEFAULT_MLSERVER_VERSION, timeout_s: float = 1800.0) -> Path:
    """The `mlserver` executable of a cached virtualenv for `version`, built when missing."""
    root = cache_dir(version)
    executable = root / "venv" / "bin" / "mlserver"
    if (root / _COMPLETE).exists() and executable.exists():
        return executable
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root / "venv")], check=True, timeout=120)
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--prefer-binary"]
    done = subprocess.run([*pip, *requirements(version)], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"installing MLServer {version} failed:\n{done.stderr[-3000:]}")
    (root / _COMPLETE).write_text(" ".join(requirements(version)) + "\n")
    return executable


def start_mlserver(
    model_dir: Path,
    name: str,
    workdir: Path,
    version: str = DEFAULT_MLSERVER_VERSION,
    *,
    max_batch_size: int = 0,
    max_batch_time_s: float = 0.0,
) -> tuple[ManagedProcess, str]:
    """Serve the MLflow model in `model_dir` as `name`; returns the process and its base URL, ready.
    With `max_batch_size` > 1, MLServer's adaptive batching gathers up to that many requests or waits
    up to `max_batch_time_s` (its `max_batch_size` / `max_batch_time` model settings)."""
    executable = ensure_mlserver(version)
    home = workdir / "mlserver" / name
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_endpoint": None,
        "parallel_workers": 0,
    }
    (home / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings: dict[str, Any] = {
        "name": name,
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model_dir)},
    }
    if max_batch_size > 1:
        model_settings |= {"max_batch_size": max_batch_size, "max_batch_time": max_batch_time_s}
    (home / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    process = ManagedProcess(
        f"mlserver-{name}",
        [str(executable), "start", str(home)],
        log_path=workdir / "logs" / f"mlserver-{name}.log",
        env={k: v for k, v in os.environ.items() if not k.startswith("MLSERVER_")},
        cwd=home,
    )
    url = f"http://127.0.0.1:{port}"
    process.start().wait_ready(lambda: _ok(f"{url}/v2/models/{name}/ready"), 180)
    return process, url


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
