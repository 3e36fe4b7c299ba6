"""`flywheel up` on a machine without Java: it says so, starts Tansu (the zero-Java fallback) with the
`embedded` client profile, and an alias change made in MLflow arrives on Kafka. The MLflow server and
Redis of the test session are passed in, so only the broker and the services are `up`'s own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

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
        deadline = time.monotonic() + 240
        while "press Ctrl-C to stop" not in out.read_text(errors="replace"):
            assert proc.poll() is None, out.read_text(errors="replace")
            assert time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.5)
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
