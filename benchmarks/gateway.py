"""`flywheel bench gateway`: the gateway against the servers people would pick instead, and against the floor.

Servers, all on this machine at the same time, one worker process each, serving the same registered sklearn
version (the artifact downloaded once):
- `mlflow_models_serve` — MLflow's scoring server;
- `mlserver` — MLServer + mlserver-mlflow (what KServe runs for MLflow models; its own cached virtualenv,
  `services.cli.devstack.mlserver`), and `mlserver_batching` — the same with its adaptive batching on
  (`max_batch_size` 16, `max_batch_time` 2 ms: a fair peer to our batching);
- `floor_direct` / `floor_batched` — the floor: a minimal FastAPI + uvicorn server doing only JSON -> numpy
  -> predict -> JSON, directly and through a fixed 2 ms micro-batcher (`benchmarks/floor_server.py`);
- `flywheel_gateway` — the gateway with its default settings (alias routing, an InferenceRecorded event per
  request, traces sampled at 1 % plus errors and rated ones, micro-batching, the native sklearn path), and
  `flywheel_gateway_untraced` — the same with tracing off.

Load: Debian's `wrk` (one C thread, keep-alive connections, the same one-record body per server in its own
protocol) at each concurrency, servers alternating A, B, C, ... so drift of the shared machine hits all.
Reported per server and concurrency: req/s, p50, p99, errors, CPU-ms per request (the server's process tree,
from /proc), and the ratios the targets are stated in. The in-process floor: the estimator's own `predict`
on one numpy row (and pyfunc's, for reference); the gateway's overhead is its c=1 latency minus that.

Trace store load, measured after the comparison on its own: predictions at c=16 through a gateway tracing
every prediction (`FLYWHEEL_TRACE_SAMPLE=1`, the behaviour before traces were sampled) and through one with
the defaults; per 1,000 predictions, the traces handed to MLflow (and dropped) and the MLflow server's CPU
seconds until the export backlog drained.
Without wrk on PATH, a Python client pool stands in (and the result says so).
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from benchmarks.common import tree_cpu_seconds
from benchmarks.gateway_load import measure, metric_sum, serving_pid, wait_http
from benchmarks.wrk import wrk_path
from services.cli.devstack.mlserver import start_mlserver
from services.cli.devstack.process import ManagedProcess, free_port, python_module
from services.cli.devstack.sample_models import register_wine_version, wine_data
from services.cli.stack_runner import StackRunner
from services.gateway.adapters.model_loader import use_object_strings

PEERS = ("mlflow_models_serve", "mlserver", "mlserver_batching")
SERVERS = (*PEERS, "floor_direct", "floor_batched", "flywheel_gateway", "flywheel_gateway_untraced")
TARGET_OVERHEAD_P99_MS = 2.0
TARGET_TRACE_WRITES_PER_PREDICTION = 0.05


def _percentiles(took_s: list[float]) -> dict[str, float]:
    ms = np.asarray(took_s) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def _in_process_floor(model_dir: Path, record: dict[str, float], calls: int = 2000) -> dict[str, Any]:
    """p50/p99 of one-record predicts in this process: the estimator on a numpy row (what the floor server
    and the gateway's native path call), and MLflow pyfunc on a DataFrame with object strings (the general
    path, as the gateway runs it), the pandas option restored afterwards."""
    estimator = mlflow.sklearn.load_model(str(model_dir))
    names = list(record)
    row = np.array([[record[n] for n in names]], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = []
        for i in range(calls + 50):
            started = time.perf_counter()
            estimator.predict(np.array([[record[n] for n in names]], dtype=np.float64) if i % 2 else row)
            native.append(time.perf_counter() - started)
        previous = pd.get_option("future.infer_string")
        use_object_strings()
        try:
            model = mlflow.pyfunc.load_model(str(model_dir))
            pyfunc = []
            for _ in range(calls // 4 + 50):
                started = time.perf_counter()
                model.predict(pd.DataFrame([record]))
                pyfunc.append(time.perf_counter() - started)
        finally:
            pd.set_option("future.infer_string", previous)
    return {"native_numpy_row": _percentiles(native[50:]), "pyfunc_dataframe": _percentiles(pyfunc[50:])}


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
        "cpu_ms_per_request": round(statistics.median(r["cpu_ms_per_request"] for r in runs), 3),
        "rounds": [{k: round(r[k], 2) for k in ("rps", "p50_ms", "p99_ms", "errors")} for r in runs],
    }


def _ratios(c: int, merged: dict[str, dict[str, Any]]) -> dict[str, Any]:
    gw = merged["flywheel_gateway"]["rps"]
    best_mlserver = max(merged["mlserver"]["rps"], merged["mlserver_batching"]["rps"])
    ratios = {
        "vs_mlserver": round(gw / merged["mlserver"]["rps"], 3),
        "vs_best_mlserver": round(gw / best_mlserver, 3),
        "vs_mlflow_models_serve": round(gw / merged["mlflow_models_serve"]["rps"], 3),
        "vs_floor_direct": round(gw / merged["floor_direct"]["rps"], 3),
        "vs_floor_batched": round(gw / merged["floor_batched"]["rps"], 3),
        "untraced_vs_floor_direct": round(
            merged["flywheel_gateway_untraced"]["rps"] / merged["floor_direct"]["rps"], 3
        ),
    }
    if c == 1:
        met = ratios["vs_mlserver"] >= 1.5 and ratios["vs_floor_direct"] >= 0.5
        target = "gateway >= 1.5x MLServer and >= 0.5x floor_direct"
    elif c >= 16:
        met = ratios["vs_best_mlserver"] >= 3.0 and ratios["vs_floor_batched"] >= 0.5
        target = "gateway >= 3x the better MLServer and >= 0.5x floor_batched"
    else:
        met, target = None, "none at this concurrency"
    return {"ratios": ratios, "target": target, "meets_target": met}


def _trace_store_load(
    runner: StackRunner, model: str, body: bytes, mlflow_pid: int, duration_s: float, workdir: Path
) -> dict[str, Any]:
    """Per 1,000 predictions at c=16: traces handed to MLflow and MLflow's CPU until they are written."""
    found: dict[str, Any] = {}
    for label, sample in (("before_every_prediction", "1"), ("after_default_settings", None)):
        env = {"FLYWHEEL_MODELS": model}
        if sample is not None:
            env["FLYWHEEL_TRACE_SAMPLE"] = sample
        gateway = runner.start_gateway(f"bench-gw-trace-{label}", env)
        base = gateway.url or ""
        url = f"{base}/v1/models/{model}/predict"
        httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=60)
        exports = "flywheel_gateway_trace_exports_total"
        before = {o: metric_sum(base, exports, outcome=o) for o in ("exported", "failed", "dropped")}
        served_before = metric_sum(base, "flywheel_gateway_requests_total")
        cpu_before = tree_cpu_seconds(mlflow_pid)
        load = measure(url, body, duration_s, 16, workdir, wrk_path() is not None)
        deadline = time.monotonic() + 120  # until the export backlog is written
        while metric_sum(base, "flywheel_gateway_trace_export_backlog") > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)
        mlflow_cpu = tree_cpu_seconds(mlflow_pid) - cpu_before
        predictions = metric_sum(base, "flywheel_gateway_requests_total") - served_before
        outcomes = {o: metric_sum(base, exports, outcome=o) - n for o, n in before.items()}
        runner.stop_service(f"bench-gw-trace-{label}")
        per_1k = 1000 / predictions if predictions else float("nan")
        found[label] = {
            "predictions": int(predictions),
            "rps": load["rps"],
            "trace_writes_per_1k_predictions": round((outcomes["exported"] + outcomes["failed"]) * per_1k, 1),
            "traces_dropped_per_1k_predictions": round(outcomes["dropped"] * per_1k, 1),
            "mlflow_cpu_s_per_1k_predictions": round(mlflow_cpu * per_1k, 3),
        }
    after = found["after_default_settings"]["trace_writes_per_1k_predictions"] / 1000
    found["meets_target"] = after <= TARGET_TRACE_WRITES_PER_PREDICTION
    return found


def run(duration_s: float, concurrencies: list[int], rounds: int, workdir: Path) -> dict[str, Any]:
    use_wrk = wrk_path() is not None
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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
        floor = _in_process_floor(model_dir, record)
        env = {**runner.service_env(), "MLFLOW_TRACKING_URI": endpoints.mlflow_tracking_uri}
        processes: list[ManagedProcess] = []

        def start(name: str, argv: list[str], ping: str) -> int:
            process = ManagedProcess(name, argv, log_path=workdir / "logs" / f"{name}.log", env=env)
            processes.append(process.start())
            process.wait_ready(lambda: wait_http(ping), 120)
            return serving_pid(process)

        ports = {name: free_port() for name in ("serve", "floor_direct", "floor_batched")}
        serve_argv = ["models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1"]
        serve_pid = start(
            "mlflow-models-serve",
            python_module("mlflow", *serve_argv, "-p", str(ports["serve"]), "-w", "1"),
            f"http://127.0.0.1:{ports['serve']}/ping",
        )
        floor_pids = {
            mode: start(
                f"floor-{mode}",
                python_module(
                    "benchmarks.floor_server",
                    "--model-dir",
                    str(model_dir),
                    "--port",
                    str(ports[f"floor_{mode}"]),
                    "--mode",
                    mode,
                ),
                f"http://127.0.0.1:{ports[f'floor_{mode}']}/ping",
            )
            for mode in ("direct", "batched")
        }
        mlserver, mlserver_url = start_mlserver(model_dir, "wine", workdir)
        batching, batching_url = start_mlserver(
            model_dir, "wine_batching", workdir, max_batch_size=16, max_batch_time_s=0.002
        )
        processes += [mlserver, batching]
        gateway = runner.start_gateway("bench-gw", {"FLYWHEEL_MODELS": model})
        untraced = runner.start_gateway(
            "bench-gw-untraced", {"FLYWHEEL_MODELS": model, "FLYWHEEL_TRACING_ENABLED": "false"}
        )
        mlflow_pid = runner.infrastructure_pid("mlflow") or 0
        try:
            v2 = {
                "inputs": [
                    {"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in record.items()
                ]
            }
            ours = json.dumps({"inputs": record}).encode()
            targets: dict[str, tuple[str, bytes, int]] = {
                "mlflow_models_serve": (
                    f"http://127.0.0.1:{ports['serve']}/invocations",
                    json.dumps({"dataframe_records": [record]}).encode(),
                    serve_pid,
                ),
                "mlserver": (
                    f"{mlserver_url}/v2/models/wine/infer",
                    json.dumps(v2).encode(),
                    serving_pid(mlserver),
                ),
                "mlserver_batching": (
                    f"{batching_url}/v2/models/wine_batching/infer",
                    json.dumps(v2).encode(),
                    serving_pid(batching),
                ),
                "floor_direct": (
                    f"http://127.0.0.1:{ports['floor_direct']}/predict",
                    ours,
                    floor_pids["direct"],
                ),
                "floor_batched": (
                    f"http://127.0.0.1:{ports['floor_batched']}/predict",
                    ours,
                    floor_pids["batched"],
                ),
                "flywheel_gateway": (
                    f"{gateway.url}/v1/models/{model}/predict",
                    ours,
                    serving_pid(gateway.process),
                ),
                "flywheel_gateway_untraced": (
                    f"{untraced.url}/v1/models/{model}/predict",
                    ours,
                    serving_pid(untraced.process),
                ),
            }
            for url, body, _ in targets.values():  # first request (a lazy model load), then warm up
                resp = httpx.post(
                    url, content=body, headers={"Content-Type": "application/json"}, timeout=120
                )
                assert resp.status_code == 200, (url, resp.status_code, resp.text[:300])
                measure(url, body, 2.0, 4, workdir, use_wrk)
            results: dict[int, dict[str, list[dict[str, Any]]]] = {}
            for concurrency in concurrencies:
                per_server = results[concurrency] = {name: [] for name in targets}
                for _ in range(rounds):
                    for name, (url, body, pid) in targets.items():
                        cpu_before = tree_cpu_seconds(pid)
                        got = measure(url, body, duration_s, concurrency, workdir, use_wrk)
                        cpu = tree_cpu_seconds(pid) - cpu_before
                        got["cpu_ms_per_request"] = (
                            1000 * cpu / got["requests"] if got["requests"] else float("nan")
                        )
                        per_server[name].append(got)
            for process in processes:  # the trace-store phase runs without the peers
                process.stop()
            processes.clear()
            runner.stop_service("bench-gw-untraced")
            trace_load = _trace_store_load(runner, model, ours, mlflow_pid, duration_s, workdir)
        finally:
            for process in processes:
                process.stop()
    by_concurrency: dict[str, Any] = {}
    for concurrency, per_server in results.items():
        merged = {name: _merge(runs) for name, runs in per_server.items()}
        by_concurrency[str(concurrency)] = {"results": merged, **_ratios(concurrency, merged)}
    c1 = by_concurrency.get("1", {}).get("results", {})
    base = floor["native_numpy_row"]
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
        "date": started_at,
        "model": f"{model}/{version} (sklearn pipeline, 13 features, one record per request)",
        "load_generator": "wrk -t1 (keep-alive)" if use_wrk else "python threads (wrk not on PATH)",
        "duration_s_per_round": duration_s,
        "rounds": rounds,
        "servers": list(SERVERS),
        "in_process_predict_floor": floor,
        "by_concurrency": by_concurrency,
        "overhead_over_native_predict_at_c1": overhead,
        "overhead_target_p99_ms": TARGET_OVERHEAD_P99_MS,
        "meets_overhead_target": gateway_overhead <= TARGET_OVERHEAD_P99_MS,
        "trace_store_load": trace_load,
        "meets_targets": all(v["meets_target"] is not False for v in by_concurrency.values())
        and gateway_overhead <= TARGET_OVERHEAD_P99_MS
        and bool(trace_load.get("meets_target")),
    }
