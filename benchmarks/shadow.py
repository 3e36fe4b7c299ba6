"""`flywheel bench shadow`: what the shadow step costs the users of the champion.

One gateway replica serves `champion` (v1) and has `challenger` (v2) loaded; the traffic split the canary
would write in a shadow step (weight 0, `shadow_share` of champion requests mirrored) is written to Redis
directly, switched between off (share 0) and on (share 0.5 and 1.0) round by round, so the machine's drift
hits every setting alike. Load: wrk at each concurrency. Reported per setting: req/s, p50, p99, and how
many requests were mirrored or dropped (the replica's shadow slots busy: `FLYWHEEL_SHADOW_MAX_IN_FLIGHT`);
the verdict is each setting's p99 as a ratio to the unmirrored p99 measured in the same rounds.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from mlflow import MlflowClient

from benchmarks.wrk import run_wrk, wrk_path
from services.cli.devstack.sample_models import register_wine_version, wine_data
from services.cli.stack_runner import StackRunner
from services.shared.redis_store import RedisKeys
from services.shared.traffic import TrafficSplit

SHARES = (0.0, 0.5, 1.0)


def _shadow_calls(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    calls: dict[str, float] = {}
    for outcome, value in re.findall(
        r'flywheel_gateway_shadow_calls_total\{outcome="(\w+)"\} ([0-9.e+]+)', text
    ):
        calls[outcome] = float(value)
    return calls


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
        results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for concurrency in concurrencies:
            per_share = results[str(concurrency)] = {str(s): [] for s in SHARES}
            for _ in range(rounds):
                for share in SHARES:
                    set_share(share)
                    before = _shadow_calls(base)
                    got = run_wrk(url, body, duration_s, concurrency, workdir / "wrk")
                    after = _shadow_calls(base)
                    got["shadow_calls"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                    per_share[str(share)].append(got)
        set_share(0.0)
    report: dict[str, Any] = {}
    for level, per_share in results.items():
        merged: dict[str, dict[str, Any]] = {
            share: {
                "rps": round(statistics.median(x["rps"] for x in runs), 1),
                "p50_ms": round(statistics.median(x["p50_ms"] for x in runs), 2),
                "p99_ms": round(statistics.median(x["p99_ms"] for x in runs), 2),
                "errors": sum(x["errors"] for x in runs),
                "shadow_calls": {
                    k: sum(x["shadow_calls"].get(k, 0) for x in runs)
                    for k in ("agreed", "differed", "error", "dropped")
                },
            }
            for share, runs in per_share.items()
        }
        off = merged["0.0"]["p99_ms"]
        for setting in merged.values():
            setting["p99_ratio_to_unmirrored"] = round(setting["p99_ms"] / off, 3) if off else None
        report[level] = merged
    return {
        "benchmark": "shadow",
        "model": f"{model}: champion v1 (weak), challenger v2 (strong), one record per request",
        "load_generator": "wrk -t1 (keep-alive)",
        "duration_s_per_round": duration_s,
        "rounds": rounds,
        "by_concurrency": report,
    }
