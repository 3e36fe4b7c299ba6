"""The load side of `flywheel bench gateway`: one measured run against one URL, and what the servers say.

`measure` drives a URL with `wrk` (or, without it, a pool of Python threads with keep-alive clients, which
the result names); `metric_sum` reads a counter or gauge from a service's Prometheus `/metrics`.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import summarize
from benchmarks.wrk import run_wrk
from services.cli.devstack.process import ManagedProcess


def python_load(url: str, body: bytes, duration_s: float, concurrency: int) -> dict[str, Any]:
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


def measure(
    url: str, body: bytes, duration_s: float, concurrency: int, workdir: Path, use_wrk: bool
) -> dict[str, Any]:
    if use_wrk:
        return run_wrk(url, body, duration_s, concurrency, workdir / "wrk")
    return python_load(url, body, duration_s, concurrency)


def serving_pid(process: ManagedProcess) -> int:
    assert process.proc is not None, f"{process.name} is not running"
    return process.proc.pid


def wait_http(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")


def metric_sum(base_url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`, from `base_url`/metrics."""
    text = httpx.get(f"{base_url}/metrics", timeout=5.0).text
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match["value"])
    return total
