"""Debian's `wrk` as the HTTP load generator of the serving benchmarks: a C event loop on one thread,
so the generator is not what limits a Python server on this 2-core machine (a Python client pool is).

`run_wrk` POSTs one JSON body over `connections` keep-alive connections for `duration_s` and returns
req/s, p50/p99 (wrk's `--latency` distribution) and the failures (non-2xx answers and socket errors).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

_LUA = """\
local f = assert(io.open(os.getenv("FLYWHEEL_WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk_path() -> str | None:
    return shutil.which("wrk")


def to_ms(text: str) -> float:
    """wrk's latency text (`856.00us`, `1.23ms`, `1.01s`) in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse(output: str) -> dict[str, Any]:
    """The figures of one wrk run's text output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or total is None:
        raise ValueError(f"unreadable wrk output:\n{output}")
    percentiles = {int(p): to_ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.MULTILINE)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests": int(total.group(1)),
        "rps": float(rps.group(1)),
        "p50_ms": round(percentiles.get(50, float("nan")), 3),
        "p99_ms": round(percentiles.get(99, float("nan")), 3),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(n) for n in sockets.groups()) if sockets else 0),
    }


def run_wrk(url: str, body: bytes, duration_s: float, connections: int, workdir: Path) -> dict[str, Any]:
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not on PATH (Debian: apt-get install wrk)")
    workdir.mkdir(parents=True, exist_ok=True)
    script, payload = workdir / "post.lua", workdir / f"body-{abs(hash(body))}.json"
    script.write_text(_LUA)
    payload.write_bytes(body)
    argv = [wrk, "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency", "-s", str(script), url]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        env={"FLYWHEEL_WRK_BODY": str(payload), "PATH": "/usr/bin:/bin"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse(done.stdout)
