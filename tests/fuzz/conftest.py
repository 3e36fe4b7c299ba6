"""A running stack for the hostile-input suite: watcher, gateway and canary as deployed (subprocesses).

Every service is reached over HTTP with a timeout, so a hang fails as surely as a 5xx. Results are
tallied per endpoint (requests tried, 5xx) and printed at the end of the session.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from services.cli.devstack.stack import Endpoints
from services.cli.stack_runner import RunningService, StackRunner
from tests.support import unique

pytestmark = pytest.mark.fuzz
ADMIN_TOKEN = "fuzz-admin-token"
WEBHOOK_SECRET = "fuzz-webhook-secret"
TIMEOUT_S = 20.0


@dataclass
class Tally:
    tried: Counter[str] = field(default_factory=Counter)
    server_errors: Counter[str] = field(default_factory=Counter)

    def add(self, endpoint: str, status: int) -> None:
        self.tried[endpoint] += 1
        if status >= 500:
            self.server_errors[endpoint] += 1


TALLY = Tally()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY.tried:
        return
    terminalreporter.section("hostile input: requests per endpoint (5xx)")
    for endpoint, count in sorted(TALLY.tried.items()):
        terminalreporter.write_line(f"{count:6d} ({TALLY.server_errors[endpoint]} x 5xx)  {endpoint}")
    terminalreporter.write_line(f"{sum(TALLY.tried.values()):6d} requests in all")


@dataclass
class FuzzStack:
    endpoints: Endpoints
    model: str
    watcher: RunningService
    gateway: RunningService
    canary: RunningService
    http: httpx.Client

    def request(
        self, service: RunningService, method: str, path: str, *, endpoint: str, **kw: object
    ) -> httpx.Response:
        """One request with a timeout (a hang raises), tallied under `endpoint`."""
        resp = self.http.request(method, f"{service.url}{path}", timeout=TIMEOUT_S, **kw)  # type: ignore[arg-type]
        TALLY.add(endpoint, resp.status_code)
        return resp


@pytest.fixture(scope="session")
def fuzz_stack(
    base_stack: Endpoints, wine_model: tuple[str, dict[str, float]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzStack]:
    model, _ = wine_model
    MlflowClient(base_stack.mlflow_tracking_uri).set_registered_model_alias(model, "champion", "1")
    env = {
        "FLYWHEEL_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLYWHEEL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "FLYWHEEL_REDIS_PREFIX": unique("fuzz"),
        "FLYWHEEL_MODELS": model,
        "FLYWHEEL_POLL_INTERVAL_S": "1",
        "FLYWHEEL_TRACING_ENABLED": "false",
    }
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    runner = StackRunner.attach(workdir, base_stack, {**os.environ, **env})
    try:
        watcher = runner.start_watcher(env, register=False)
        gateway = runner.start_gateway("gateway-fuzz", env)
        canary = runner.start_canary(env)
        with httpx.Client() as http:
            yield FuzzStack(base_stack, model, watcher, gateway, canary, http)
    finally:
        runner.stop()
