"""`flywheel bench shadow`: what the shadow step costs the users of the champion.

One gateway replica serves `champion` (v1) and has `challenger` (v2) loaded; the traffic split the canary
would write in a shadow step (weight 0, `shadow_share` of champion requests mirrored) is written to Redis
directly, switched between off (share 0) and on (share 0.5 and 1.0) round by round, so the machine's drift
hits every setting alike. Two loads: closed loop (wrk at each concurrency: the replica saturated, where
mirroring can only cost throughput) and open loop (requests due at a fixed rate, half the unmirrored
capacity, latency counted from when each was due: what users see on a replica with headroom). Reported per
setting: req/s, p50, p99, and how many requests were mirrored or dropped (slots busy, or no idle moment
within 2 s); the verdict is each setting's p99 as a ratio to the unmirrored p99 measured in the same run.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from mlflow import MlflowClient

from benchmarks.wrk import run_wrk, wrk_path
from services.cli.devstack.sample_models import register_wine_version, wine_data
from services.cli.stack_runner import StackRunner
from services.shared.redis_store import RedisKeys
from services.shared.traffic import TrafficSplit

SHARES = (0.0, 0.1, 0.5, 1.0)
#: The open-loop rate, as a share of the replica's closed-loop capacity measured unmirrored in the same run.
PACED_LOAD = 0.5
CALL_OUTCOMES = ("agreed", "differed", "error", "dropped")


def _paced(url: str, body: bytes, rate: float, duration_s: float) -> dict[str, Any]:
    """Open loop: request i is due at start + i/rate whatever happened before (as users arrive), and its
    latency counts from when it was due, so a stall shows in the numbers instead of pausing the load."""
    n = int(rate * duration_s)
    start = time.perf_counter() + 0.2
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=10.0) as client:
            for i in counter:
                due = start + i / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                resp = client.post(url, content=body, headers={"Content-Type": "application/json"})
                elapsed = (time.perf_counter() - due) * 1000
                with lock:
                    latencies.append(elapsed)
                    errors += resp.status_code != 200

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    arr = np.asarray(latencies)
    return {
        "rate_per_s": round(rate, 1),
        "requests": n,
        "errors": errors,
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
    }


def _shadow_calls(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    calls: dict[str, float] = {}
    for outcome, value in re.findall(
        r'flywheel_gateway_shadow_calls_total\{outcome="(\w+)"\} ([0-9.e+]+)', text
    ):
        calls[outcome] = float(value)
    return calls


def _merge(per_share: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians per share, summed mirrored calls, and p99 as a ratio to the unmirrored p99 of the same run."""
    merged: dict[str, dict[str, Any]] = {}
    for share, runs in per_share.items():
        merged[share] = {
            "p50_ms": round(statistics.median(x["p50_ms"] for x in runs), 2),
            "p99_ms": round(statistics.median(x["p99_ms"] for x in runs), 2),
            "errors": sum(x["errors"] for x in runs),
            "shadow_calls": {
                k: sum(x["shadow_calls"].get(k, 0) for x in runs)
                for k in ("agreed", "differed", "error", "dropped")
            },
        }
        if "rps" in runs[0]:
            merged[share]["rps"] = round(statistics.median(x["rps"] for x in runs), 1)
    unmirrored = merged["0.0"]["p99_ms"]
    for setting in merged.values():
        setting["p99_ratio_to_unmirrored"] = round(setting["p99_ms"] / unmirrored, 3) if unmirrored else None
    return merged


def run(duration_s: float, concurrencies: list[int], rounds: int, workdir: Path) -> dict[str, Any]:
    if wrk_path() is None:
        raise RuntimeError("wrk is not on PATH (Debian: apt-get install wrk)")
    with StackRunner(workdir) as runner:
        endpoints = runner.start_infrastructure()
        model = f"bench_shadow_{int(time.time())}"
        uri = endpoints.mlflow_tracking_uri
        v1, _ = register_wine_version(uri, model, "weak", experiment="bench")
        v2, _ = register_wine_version(uri, model, "strong", experiment="bench")
        client = MlflowClient(uri)
        client.set_registered_model_alias(model, "champion", v1)
        client.set_registered_model_alias(model, "challenger", v2)
        gateway = runner.start_gateway(
            "bench-shadow", {"FLYWHEEL_MODELS": model, "FLYWHEEL_TRACING_ENABLED": "false"}
        )
        record = {k: float(v) for k, v in wine_data().test_x.iloc[0].items()}
        assert gateway.url is not None
        base = gateway.url
        url, body = f"{gateway.url}/v1/models/{model}/predict", json.dumps({"inputs": record}).encode()
        for alias in ("challenger", "champion"):  # both loaded on the replica before measuring
            httpx.post(
                f"{url}?alias={alias}",
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=120,
            )
        r = redis.Redis.from_url(endpoints.redis_url)
        key = RedisKeys(runner.service_env().get("FLYWHEEL_REDIS_PREFIX", "flywheel")).traffic_split(model)

        def set_share(share: float) -> None:
            split = TrafficSplit(
                model=model,
                rollout_id="bench-shadow",
                weight=0.0,
                champion_version=v1,
                challenger_version=v2,
                shadow_share=share,
                updated_at=datetime.now(UTC),
            )
            r.set(key, split.model_dump_json())
            time.sleep(1.0)  # the replica refreshes its split every 0.5 s

        set_share(0.0)
        run_wrk(url, body, 2.0, 4, workdir / "wrk")  # warm-up

        def closed_loop(concurrency: int) -> dict[str, Any]:
            return run_wrk(url, body, duration_s, concurrency, workdir / "wrk")

        def per_share(load: Callable[[], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
            """`rounds` runs of `load` per mirrored share, the shares alternating round by round."""
            runs: dict[str, list[dict[str, Any]]] = {str(s): [] for s in SHARES}
            for _ in range(rounds):
                for share in SHARES:
                    set_share(share)
                    before = _shadow_calls(base)
                    got = load()
                    after = _shadow_calls(base)
                    got["shadow_calls"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                    runs[str(share)].append(got)
            set_share(0.0)
            return runs

        closed = {str(c): per_share(functools.partial(closed_loop, c)) for c in concurrencies}
        capacity = statistics.median(x["rps"] for x in closed[str(concurrencies[0])]["0.0"])
        paced = per_share(functools.partial(_paced, url, body, capacity * PACED_LOAD, duration_s))
    return {
        "benchmark": "shadow",
        "model": f"{model}: champion v1 (weak), challenger v2 (strong), one record per request",
        "load_generator": "wrk -t1 (keep-alive)",
        "duration_s_per_round": duration_s,
        "rounds": rounds,
        "closed_loop_by_concurrency": {level: _merge(runs) for level, runs in closed.items()},
        "open_loop": {
            "rate_per_s": round(capacity * PACED_LOAD, 1),
            "load": f"{PACED_LOAD:.0%} of the unmirrored closed-loop capacity at c={concurrencies[0]}",
            "by_share": _merge(paced),
        },
    }
