"""`flywheel up` on a machine without Java: it says so, starts Tansu (the zero-Java fallback) with the
`embedded` client profile, and an alias change made in MLflow arrives on Kafka. The MLflow server and
Redis of the test session are passed in, so only the broker and the services are `up`'s own."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from benchmarks.common import descendants
from events import ALIAS_CHANGED, AliasChanged
from services.cli.devstack.stack import Endpoints
from services.registry_watcher.adapters.webhook_registration import WEBHOOK_NAME
from tests.support import TopicReader, unique

pytestmark = [pytest.mark.e2e, pytest.mark.tansu]


def test_flywheel_up_without_java_starts_tansu_and_publishes_alias_changes(
    base_stack: Endpoints, tmp_path: Path
) -> None:
    model = unique("up")
    client = MlflowClient(base_stack.mlflow_tracking_uri)
    client.create_registered_model(model)
    client.create_model_version(model, source="s3://flywheel-tests/model", run_id=None)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "FLYWHEEL_EMBEDDED_KAFKA", "FLYWHEEL_KAFKA_PROFILE")
    }
    env |= {
        # No java (nor mvn) on PATH: only the virtualenv's own programs.
        "PATH": str(Path(sys.executable).parent),
        "MLFLOW_TRACKING_URI": base_stack.mlflow_tracking_uri,
        "REDIS_URL": base_stack.redis_url,
        "FLYWHEEL_REDIS_PREFIX": unique("up"),
        "FLYWHEEL_MODELS": model,
        "FLYWHEEL_POLL_INTERVAL_S": "1",
        "COLUMNS": "400",
    }
    out = tmp_path / "up.out"
    # Ephemeral ports, as every test: `up`'s default ports (8080, …) would collide with parallel runs.
    argv = [
        sys.executable,
        "-m",
        "services.cli.main",
        "up",
        "--workdir",
        str(tmp_path / "up"),
        "--ephemeral-ports",
    ]
    with out.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_until_up(proc, out)
        text = out.read_text(errors="replace")
        assert "tansu, embedded client profile" in text and "no java on PATH" in text, text
        bootstrap = re.search(r"Kafka\s+│?\s*(127\.0\.0\.1:\d+): tansu", text)
        assert bootstrap, text
        canary = re.search(r"canary-rollout\s+│?\s*(http://127\.0\.0\.1:\d+)", text)
        assert canary and re.search(rf"console\s+│?\s*{canary.group(1)}/console", text), text
        assert "taken →" not in text, text  # ephemeral ports are never "taken"
        endpoints = Endpoints(
            base_stack.mlflow_tracking_uri, bootstrap.group(1), base_stack.redis_url, "embedded"
        )
        reader = TopicReader(endpoints, ALIAS_CHANGED)
        try:
            client.set_registered_model_alias(model, "champion", "1")
            events = reader.wait_for(lambda e: isinstance(e, AliasChanged) and e.model == model, 1, 30)
        finally:
            reader.close()
        assert [(e.alias, e.version) for e in events] == [("champion", "1")]  # type: ignore[attr-defined]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        # `up` pointed the shared MLflow's webhook at its own watcher, which is gone now: drop it, so
        # that MLflow does not spend its (single) delivery worker on retries to a dead port.
        for hook in client.list_webhooks(max_results=100):
            if hook.name == WEBHOOK_NAME:
                client.delete_webhook(hook.webhook_id)
    assert code == 0, out.read_text(errors="replace")


def _wait_until_up(proc: subprocess.Popen[bytes], out: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while "press Ctrl-C to stop" not in out.read_text(errors="replace"):
        assert proc.poll() is None, out.read_text(errors="replace")
        assert time.monotonic() < deadline, out.read_text(errors="replace")
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_flywheel_up_killed_with_sigkill_leaves_no_process_behind(
    base_stack: Endpoints, tmp_path: Path
) -> None:
    """Every part `up` started dies with it (`child_guard`), grandchildren too; while it runs, a second
    `up` on the default ports says a stack of its own holds them and stops."""
    model = unique("upkill")
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "FLYWHEEL_KAFKA_PROFILE")
    }
    env |= {
        "MLFLOW_TRACKING_URI": base_stack.mlflow_tracking_uri,
        "REDIS_URL": base_stack.redis_url,
        "FLYWHEEL_EMBEDDED_KAFKA": "tansu",
        "FLYWHEEL_REDIS_PREFIX": unique("upkill"),
        "FLYWHEEL_MODELS": model,
        "FLYWHEEL_UP_REGISTRY": str(tmp_path / "registry"),
        "COLUMNS": "400",
    }
    out = tmp_path / "up.out"
    argv = [sys.executable, "-m", "services.cli.main", "up", "--workdir", str(tmp_path / "up")]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [*argv, "--ephemeral-ports"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_until_up(proc, out)
        second = subprocess.run(
            [*argv[:-1], str(tmp_path / "second")], env=env, capture_output=True, text=True, timeout=120
        )
        said = second.stdout + second.stderr
        assert second.returncode == 1, said
        assert f"`flywheel up` pid {proc.pid}" in said and "already running" in said, said
        family = descendants(proc.pid)
        # tansu + 7 services (+ the gateways' trace and event helpers, MLflow's workers, ...)
        assert len(family) >= 8, family
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # `up` alone, not its process group: as a hung terminal would
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in family):
        time.sleep(0.2)
    left = {pid: (Path(f"/proc/{pid}/cmdline").read_bytes()[:120]) for pid in family if _alive(pid)}
    for pid in left:  # do not leave them to the next test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left == {}, f"still alive 10 s after `flywheel up` was killed: {left}"
