"""`flywheel bench memory`: resident memory of every Flywheel process, at rest and under load.

The whole stack runs as deployed (one process per service, on Apache Kafka when Java is here): the
watcher, cache invalidation, a gateway serving two loaded versions of one model (champion and
challenger), the canary rollout worker, feedback aggregation and the retrainer. RSS is read from
`/proc/<pid>/status` (VmRSS) for each service's process *and its children* (the gateway's trace export
child), after a quiet period ("at rest"), then sampled every 0.25 s while the demo's simulated users post
predictions and rate each answer, at the given concurrency ("under load": the peak).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient

from benchmarks.common import children
from services.cli.devstack.demo_traffic import TrafficClient
from services.cli.devstack.sample_models import register_wine_version
from services.cli.stack_runner import RunningService, StackRunner

MIB = 1024 * 1024


def _rss_bytes(pid: int) -> int:
    """VmRSS of `pid` and, recursively, of its children (0 for a process that is gone)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    except OSError:
        return 0
    return total + sum(_rss_bytes(child) for child in children(pid))


def _rss_of(services: dict[str, RunningService]) -> dict[str, int]:
    out = {}
    for name, service in services.items():
        proc = service.process.proc
        out[name] = _rss_bytes(proc.pid) if proc is not None else 0
    return out


def run(duration_s: float, concurrency: int, workdir: Path) -> dict[str, Any]:
    with StackRunner(workdir) as runner:
        endpoints = runner.start_infrastructure()
        model = f"bench_memory_{int(time.time())}"
        client = MlflowClient(endpoints.mlflow_tracking_uri)
        for kind, alias in (("weak", "champion"), ("strong", "challenger")):
            version, _ = register_wine_version(endpoints.mlflow_tracking_uri, model, kind, experiment="bench")
            client.set_registered_model_alias(model, alias, version)
        env = {"FLYWHEEL_MODELS": model, "FLYWHEEL_TRACING_ENABLED": "true"}
        runner.start_all(replicas=1, extra_env=env)
        gateway = next(s for name, s in runner.services.items() if name.startswith("gateway"))
        deadline = time.time() + 120
        while time.time() < deadline:  # both versions loaded on the replica
            served = httpx.get(f"{gateway.url}/v1/models/{model}", timeout=5).json().get("aliases", {})
            if {"champion", "challenger"} <= set(served):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the gateway did not load champion and challenger: {served}")
        time.sleep(5.0)
        at_rest = _rss_of(runner.services)
        peak = dict(at_rest)
        with TrafficClient([gateway], model, concurrency, users=True, feedback=True) as load:
            end = time.time() + duration_s
            while time.time() < end:
                for name, rss in _rss_of(runner.services).items():
                    peak[name] = max(peak.get(name, 0), rss)
                time.sleep(0.25)
        return {
            "benchmark": "memory",
            "broker": endpoints.kafka_broker,
            "model_versions_loaded_on_gateway": served,
            "load": {
                "seconds": duration_s,
                "concurrency": concurrency,
                "predictions": len(load.traffic.rows),
                "feedback_accepted": load.feedback_sent,
                "failed": len(load.traffic.errors),
            },
            "rss_mib": {
                name: {
                    "at_rest": round(at_rest.get(name, 0) / MIB, 1),
                    "under_load_peak": round(peak[name] / MIB, 1),
                }
                for name in sorted(peak)
            },
        }
