"""`flywheel bench gateway`: the gateway against the two servers people would pick instead, side by side.

Peers: `mlflow models serve` (MLflow's scoring server) and **MLServer** + `mlserver-mlflow` (what KServe
runs for MLflow models; its own cached virtualenv, `services.cli.devstack.mlserver`). The three run on
this machine at the same time, one worker process each, and serve the same registered sklearn version
(the artifact downloaded once); the gateway does its whole job meanwhile: alias routing, one MLflow trace
per request, an InferenceRecorded event per request. A second gateway with tracing off runs beside it, so
the price of the trace is measured, not guessed.

Load: Debian's `wrk` (one C thread, keep-alive connections, the same one-record body per server in its
own protocol) at each concurrency, servers alternating A, B, C, A, B, C so drift of the shared machine
hits all. Reported per server and concurrency: req/s, p50, p99, errors, and CPU seconds per 1,000
requests (the server's process tree, from /proc). The floor: the same input predicted in-process by the
loaded pyfunc model (p50/p99); the gateway's overhead is its c=1 latency minus that floor.
Targets: gateway req/s >= 1.0x the best peer at every concurrency; overhead p99 <= 2 ms.
Without wrk on PATH, a Python client pool stands in (and the result says so).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from benchmarks.common import summarize, tree_cpu_seconds
from benchmarks.wrk import run_wrk, wrk_path
from services.cli.devstack.mlserver import start_mlserver
from services.cli.devstack.process import ManagedProcess, free_port, python_module
from services.cli.devstack.sample_models import register_wine_version, wine_data
from services.cli.stack_runner import StackRunner
from services.gateway.adapters.model_loader import use_object_strings

TARGET_RATIO = 1.0
TARGET_OVERHEAD_P99_MS = 2.0


def _python_load(url: str, body: bytes, duration_s: float, concurrency: int) -> dict[str, Any]:
    """Threads with keep-alive connections: the stand-in when wrk is missing."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration_s

    def worker() -> None:
        nonlocal errors
        local: list[float] = []
        failed = 0
        headers = {"Content-Type": "application/json"}
        with httpx.Client(timeout=10.0) as client:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    ok = client.post(url, content=body, headers=headers).status_code == 200
                except httpx.HTTPError:
                    ok = False
                local.append((time.perf_counter() - started) * 1000)
                failed += 0 if ok else 1
        with lock:
            latencies.extend(local)
            errors += failed

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


def _in_process_floor(
    model_dir: Path, record: dict[str, float], calls: int = 2000, *, object_strings: bool = False
) -> dict[str, float]:
    """p50/p99 of `predict` on the loaded pyfunc model, one record, in this process; with
    `object_strings`, as the gateway runs it (`use_object_strings`), the option restored afterwards."""
    if object_strings:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            previous = pd.get_option("future.infer_string")
            use_object_strings()
        try:
            return _in_process_floor(model_dir, record, calls)
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pd.set_option("future.infer_string", previous)
    model = mlflow.pyfunc.load_model(str(model_dir))
    frame = pd.DataFrame([record])
    for _ in range(50):
        model.predict(frame)
    took = []
    for _ in range(calls):
        started = time.perf_counter()
        model.predict(pd.DataFrame([record]))
        took.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(float(np.percentile(took, 50)), 3),
        "p99_ms": round(float(np.percentile(took, 99)), 3),
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
        "cpu_s_per_1k_requests": round(statistics.median(r["cpu_s_per_1k"] for r in runs), 3),
        "rounds": [{k: round(r[k], 2) for k in ("rps", "p50_ms", "p99_ms", "errors")} for r in runs],
    }


def run(duration_s: float, concurrencies: list[int], rounds: int, workdir: Path) -> dict[str, Any]:
    use_wrk = wrk_path() is not None
    with StackRunner(workdir) as runner:
        endpoints = runner.start_infrastructure()
        model = f"bench_gateway_{int(time.time())}"
        version, _ = register_wine_version(endpoints.mlflow_tracking_uri, model, "strong", experiment="bench")
        MlflowClient(endpoints.mlflow_tracking_uri).set_registered_model_alias(model, "champion", version)
        mlflow.set_tracking_uri(endpoints.mlflow_tracking_uri)
        model_dir = Path(
            mlflow.artifacts.download_artifacts(f"models:/{model}/{version}", dst_path=str(workdir / "model"))
        )
        record = {k: float(v) for k, v in wine_data().test_x.iloc[0].items()}
        floor = {
            "pandas_default": _in_process_floor(model_dir, record),
            "object_strings": _in_process_floor(model_dir, record, object_strings=True),
        }

        serve_port = free_port()
        serve = ManagedProcess(
            "mlflow-models-serve",
            python_module(
                "mlflow",
                "models",
                "serve",
                "-m",
                str(model_dir),
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
        mlserver, mlserver_url = start_mlserver(model_dir, "wine", workdir)
        gateway = runner.start_gateway(
            "bench-gw", {"FLYWHEEL_MODELS": model, "FLYWHEEL_TRACING_ENABLED": "true"}
        )
        # The same gateway without its MLflow trace per request: what tracing costs, measured beside it.
        untraced = runner.start_gateway(
            "bench-gw-untraced", {"FLYWHEEL_MODELS": model, "FLYWHEEL_TRACING_ENABLED": "false"}
        )
        try:
            v2 = {
                "inputs": [
                    {"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in record.items()
                ]
            }
            targets: dict[str, tuple[str, bytes, int]] = {
                "mlflow_models_serve": (
                    f"http://127.0.0.1:{serve_port}/invocations",
                    json.dumps({"dataframe_records": [record]}).encode(),
                    _pid(serve),
                ),
                "mlserver": (f"{mlserver_url}/v2/models/wine/infer", json.dumps(v2).encode(), _pid(mlserver)),
                "flywheel_gateway": (
                    f"{gateway.url}/v1/models/{model}/predict",
                    json.dumps({"inputs": record}).encode(),
                    _pid(gateway.process),
                ),
                "flywheel_gateway_untraced": (
                    f"{untraced.url}/v1/models/{model}/predict",
                    json.dumps({"inputs": record}).encode(),
                    _pid(untraced.process),
                ),
            }
            for url, body, _ in targets.values():  # first request (a lazy model load), then warm up
                httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=120)
                _measure(url, body, 2.0, 4, workdir, use_wrk)
            results: dict[int, dict[str, list[dict[str, Any]]]] = {}
            for concurrency in concurrencies:
                per_target = results[concurrency] = {name: [] for name in targets}
                for _ in range(rounds):
                    for name, (url, body, pid) in targets.items():
                        cpu_before = tree_cpu_seconds(pid)
                        got = _measure(url, body, duration_s, concurrency, workdir, use_wrk)
                        cpu = tree_cpu_seconds(pid) - cpu_before
                        got["cpu_s_per_1k"] = (
                            1000 * cpu / got["requests"] if got["requests"] else float("nan")
                        )
                        per_target[name].append(got)
        finally:
            serve.stop()
            mlserver.stop()
    by_concurrency: dict[str, Any] = {}
    for concurrency, per_target in results.items():
        merged = {name: _merge(runs) for name, runs in per_target.items()}
        best_peer = max(("mlflow_models_serve", "mlserver"), key=lambda n: merged[n]["rps"])
        ratio = merged["flywheel_gateway"]["rps"] / merged[best_peer]["rps"]
        untraced_ratio = merged["flywheel_gateway_untraced"]["rps"] / merged[best_peer]["rps"]
        by_concurrency[str(concurrency)] = {
            "results": merged,
            "best_peer": best_peer,
            "throughput_ratio_vs_best_peer": round(ratio, 3),
            "untraced_ratio_vs_best_peer": round(untraced_ratio, 3),
            "meets_target": ratio >= TARGET_RATIO,
        }
    c1 = by_concurrency.get("1", {}).get("results", {})
    base = floor["object_strings"]  # what the gateway runs (FLYWHEEL_PANDAS_OBJECT_STRINGS), the lower floor
    overhead = {
        name: {
            "p50_ms": round(r["p50_ms"] - base["p50_ms"], 3),
            "p99_ms": round(r["p99_ms"] - base["p99_ms"], 3),
        }
        for name, r in c1.items()
    }
    gateway_overhead = overhead.get("flywheel_gateway", {}).get("p99_ms", float("inf"))
    return {
        "benchmark": "gateway",
        "model": f"{model}/{version} (sklearn pipeline, 13 features, one record per request)",
        "load_generator": "wrk -t1 (keep-alive)" if use_wrk else "python threads (wrk not on PATH)",
        "duration_s_per_round": duration_s,
        "rounds": rounds,
        "gateway_features": ["alias routing", "MLflow trace per request", "InferenceRecorded per request"],
        "in_process_predict_floor": floor,
        "by_concurrency": by_concurrency,
        "overhead_over_floor_at_c1": overhead,
        "overhead_target_p99_ms": TARGET_OVERHEAD_P99_MS,
        "meets_overhead_target": gateway_overhead <= TARGET_OVERHEAD_P99_MS,
        "target_ratio": TARGET_RATIO,
        "meets_target": all(v["meets_target"] for v in by_concurrency.values()),
    }


def _measure(
    url: str, body: bytes, duration_s: float, concurrency: int, workdir: Path, use_wrk: bool
) -> dict[str, Any]:
    if use_wrk:
        return run_wrk(url, body, duration_s, concurrency, workdir / "wrk")
    return _python_load(url, body, duration_s, concurrency)


def _pid(process: ManagedProcess) -> int:
    assert process.proc is not None, f"{process.name} is not running"
    return process.proc.pid


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
