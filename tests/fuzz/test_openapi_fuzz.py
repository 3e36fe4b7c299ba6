"""Schemathesis against every service's own OpenAPI, positive and negative cases, over real HTTP.

Rules: no 5xx, no hang (each request has a timeout), every status is one the operation documents, and
an admin action without a valid token is answered 401/403 and nothing else. Bounded for CI by
FLYWHEEL_FUZZ_EXAMPLES (examples per operation and generation mode).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import status_code_conformance

from services.cli.stack_runner import RunningService
from tests.fuzz.conftest import ADMIN_TOKEN, TALLY, TIMEOUT_S, FuzzStack

EXAMPLES = int(os.environ.get("FLYWHEEL_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
# Operations that are not under test here: Prometheus text, the HTML dashboard.
SKIPPED = {"GET /metrics", "GET /rollouts"}


def operations(stack: FuzzStack, service: RunningService) -> list[Any]:
    doc = stack.http.get(f"{service.url}/openapi.json", timeout=TIMEOUT_S).json()
    schema = schemathesis.openapi.from_dict(doc)
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if f"{op.method.upper()} {op.path}" not in SKIPPED]


def fuzz_service(
    stack: FuzzStack, service: RunningService, name: str, admin_paths: tuple[str, ...] = ()
) -> None:
    failures: list[str] = []
    for op in operations(stack, service):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(
                stack, service, op, name, mode, any(op.path.startswith(p) for p in admin_paths), failures
            )
    assert not failures, "\n".join(failures[:20])


def fuzz_operation(
    stack: FuzzStack,
    service: RunningService,
    op: Any,
    name: str,
    mode: GenerationMode,
    is_admin: bool,
    failures: list[str],
) -> None:
    label = f"{name} {op.method.upper()} {op.path}"
    strategy = op.as_strategy(mode)
    if "{name}" in op.path:  # half of the cases address the model that is really served
        strategy = st.one_of(strategy, op.as_strategy(mode, path_parameters={"name": stack.model}))

    @FUZZ
    @given(case=strategy, with_token=st.booleans())
    def run(case: Any, with_token: bool) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if is_admin and with_token else {}
        response = case.call(base_url=service.url, headers=headers, timeout=TIMEOUT_S)
        TALLY.add(label, response.status_code)
        where = f"{label} [{mode.value}] {case.as_curl_command()} -> {response.status_code}"
        if response.status_code >= 500:
            failures.append(f"{where}: {response.text[:300]}")
            return
        if is_admin and not with_token and response.status_code not in (401, 403):
            failures.append(f"{where}: admin action without a token not refused")
            return
        try:
            case.validate_response(response, checks=[status_code_conformance])
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # schemathesis raises a group of failures
            failures.append(f"{where}: undocumented status ({str(exc).splitlines()[0]})")

    with contextlib.suppress(Unsatisfiable):  # e.g. no invalid request for an operation without parameters
        run()


def test_gateway_openapi(fuzz_stack: FuzzStack) -> None:
    fuzz_service(fuzz_stack, fuzz_stack.gateway, "gateway")


def test_canary_control_openapi(fuzz_stack: FuzzStack) -> None:
    fuzz_service(fuzz_stack, fuzz_stack.canary, "canary", admin_paths=("/v1/rollouts/{model}/{action}",))


def test_registry_watcher_openapi(fuzz_stack: FuzzStack) -> None:
    fuzz_service(fuzz_stack, fuzz_stack.watcher, "watcher")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_ops_endpoints_answer(fuzz_stack: FuzzStack, path: str) -> None:
    for service in (fuzz_stack.gateway, fuzz_stack.canary, fuzz_stack.watcher):
        assert fuzz_stack.request(service, "GET", path, endpoint=f"GET {path}").status_code == 200
