"""`flywheel bench gateway`: the gateway against `mlflow models serve` on the same model, side by side.

Both servers run on this machine at the same time with one worker process each and serve the same
registered sklearn version; the load generator (threads with keep-alive HTTP connections, same
concurrency, same one-record payload) measures each for `duration_s`, alternating A, B, A, B so drift
of the machine hits both. The gateway does its whole job meanwhile: alias routing, one MLflow trace per
request and an InferenceRecorded event per request. Target: gateway throughput >= 0.9x the baseline.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient

from benchmarks.common import summarize
from services.cli.devstack.process import ManagedProcess, free_port, python_module
from services.cli.devstack.sample_models import register_wine_version, wine_data
from services.cli.stack_runner import StackRunner


def _load(url: str, payload: dict[str, Any], duration_s: float, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration_s

    def worker() -> None:
        nonlocal errors
        local: list[float] = []
        local_errors = 0
        with httpx.Client(timeout=10.0) as client:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    ok = client.post(url, json=payload).status_code == 200
                except httpx.HTTPError:
                    ok = False
                local.append((time.perf_counter() - started) * 1000)
                local_errors += 0 if ok else 1
        with lock:
            latencies.extend(local)
            errors += local_errors

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        **summarize(latencies),
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(r["requests"] for r in runs)
    return {
        "requests": total,
        "errors": sum(r["errors"] for r in runs),
        "rps": round(sum(r["rps"] for r in runs) / len(runs), 1),
        "p50_ms": round(sum(r["p50_ms"] for r in runs) / len(runs), 2),
        "p99_ms": round(max(r["p99_ms"] for r in runs), 2),
        "rounds": [{k: r[k] for k in ("rps", "p50_ms", "p99_ms", "errors")} for r in runs],
    }


def run(duration_s: float, concurrency: int, rounds: int, workdir: Path) -> dict[str, Any]:
    with StackRunner(workdir) as runner:
        endpoints = runner.start_infrastructure()
        model = f"bench_gateway_{int(time.time())}"
        version, _ = register_wine_version(endpoints.mlflow_tracking_uri, model, "strong", experiment="bench")
        MlflowClient(endpoints.mlflow_tracking_uri).set_registered_model_alias(model, "champion", version)

        serve_port = free_port()
        serve = ManagedProcess(
            "mlflow-models-serve",
            python_module(
                "mlflow",
                "models",
                "serve",
                "-m",
                f"models:/{model}/{version}",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(serve_port),
                "-w",
                "1",
            ),
            log_path=workdir / "logs" / "mlflow-models-serve.log",
            env={**runner.service_env(), "MLFLOW_TRACKING_URI": endpoints.mlflow_tracking_uri},
        )
        serve.start().wait_ready(lambda: _ok(f"http://127.0.0.1:{serve_port}/ping"), 120)
        gateway = runner.start_gateway("bench-gw", {"FLYWHEEL_MODELS": model})
        try:
            record = {k: float(v) for k, v in wine_data().test_x.iloc[0].items()}
            targets: dict[str, tuple[str, dict[str, Any]]] = {
                "mlflow_models_serve": (
                    f"http://127.0.0.1:{serve_port}/invocations",
                    {"dataframe_records": [record]},
                ),
                "flywheel_gateway": (f"{gateway.url}/v1/models/{model}/predict", {"inputs": record}),
            }
            for url, payload in targets.values():  # warm up both (first trace, connection pools)
                _load(url, payload, 2.0, concurrency)
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            for _ in range(rounds):
                for name, (url, payload) in targets.items():
                    results[name].append(_load(url, payload, duration_s, concurrency))
        finally:
            serve.stop()
        merged = {name: _merge(runs) for name, runs in results.items()}
        ratio = merged["flywheel_gateway"]["rps"] / merged["mlflow_models_serve"]["rps"]
        return {
            "benchmark": "gateway",
            "model": f"{model}/{version} (sklearn pipeline, 13 features, one record per request)",
            "concurrency": concurrency,
            "duration_s_per_round": duration_s,
            "rounds": rounds,
            "gateway_features": [
                "alias routing",
                "MLflow trace per request",
                "InferenceRecorded per request",
            ],
            "results": merged,
            "throughput_ratio": round(ratio, 3),
            "target_ratio": 0.9,
            "meets_target": ratio >= 0.9,
        }


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
