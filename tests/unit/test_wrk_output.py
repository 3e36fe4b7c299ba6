"""Reading wrk's text output (the gateway benchmark's load generator): rates, percentiles, failures."""

from __future__ import annotations

import pytest

from benchmarks.wrk import parse, to_ms

OK = """Running 5s test @ http://127.0.0.1:18080/v2/models/wine/infer
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    32.50ms    5.10ms  60.12ms   80.00%
    Req/Sec   123.40     10.20   140.00     70.00%
  Latency Distribution
     50%   31.98ms
     75%   35.56ms
     90%   39.43ms
     99%   45.54ms
  615 requests in 5.00s, 374.77KB read
Requests/sec:    122.88
Transfer/sec:     74.95KB
"""

FAILING = OK.replace(
    "  615 requests in 5.00s, 374.77KB read\n",
    "  615 requests in 5.00s, 374.77KB read\n  Socket errors: connect 0, read 3, write 0, timeout 1\n"
    "  Non-2xx or 3xx responses: 401\n",
)


def test_rates_percentiles_and_no_errors() -> None:
    assert parse(OK) == {"requests": 615, "rps": 122.88, "p50_ms": 31.98, "p99_ms": 45.54, "errors": 0}


def test_non_2xx_answers_and_socket_errors_are_failures() -> None:
    assert parse(FAILING)["errors"] == 401 + 3 + 1


@pytest.mark.parametrize(("text", "ms"), [("856.00us", 0.856), ("1.23ms", 1.23), ("1.01s", 1010.0)])
def test_latency_units(text: str, ms: float) -> None:
    assert to_ms(text) == pytest.approx(ms)


def test_unreadable_output_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse("wrk: connection refused")
