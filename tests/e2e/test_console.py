"""The operator console in a real browser (Playwright driving Debian's headless Chromium) against a live
stack: watcher, cache invalidation, two gateways, the canary (which serves the console) and the feedback
aggregation worker, over real MLflow, Redis and Kafka.

The console must show a rollout progressing without a reload (live updates), its charts, the versions
each replica serves, feedback per version, dataset versions and retraining runs with their gates (read
from the Kafka record), and the alias history; an admin action must be refused without the token and
work with it. `flywheel status --json` and `/v1/status` must tell the same facts. Screenshots are saved
in $FLYWHEEL_TEST_ARTIFACTS (default: test-artifacts/) under console/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from events import DatasetFile, DatasetPublished, GateOutcome, RetrainingFinished, RetrainingRequested
from services.cli.devstack.stack import Endpoints
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher, Record
from tests.e2e.rollouts import TOKEN, Pipeline, Users, alias, rollout_pipeline, wait_for

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::FutureWarning")]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# DESIGN.md's flags for headless Chromium on these machines (a fresh profile is Playwright's default).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("FLYWHEEL_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))


@pytest.fixture(scope="module")
def pipeline(stack: Endpoints, workdir: Path) -> Iterator[Pipeline]:
    with rollout_pipeline(stack, workdir, workers=["feedback-aggregation"]) as started:
        yield started


@pytest.fixture()
def browser_page(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Chromium not installed (.ci/system-deps installs it)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})  # a laptop screen
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def publish_ledger(stack: Endpoints, model: str) -> None:
    """A dataset version and a retraining run whose gate failed, on the record topics (what the feedback
    aggregation and the retrainer publish; their own tests cover how)."""
    now = datetime.now(UTC)
    dataset = DatasetPublished(
        producer="tests",
        model=model,
        dataset_name=f"{model}-feedback",
        dataset_version=1,
        run_id="0" * 32,
        artifact_uri=f"mlflow-artifacts:/7/{'0' * 32}/artifacts/dataset",
        manifest_sha256="b" * 64,
        rows=120,
        corrected_rows=30,
        files=[
            DatasetFile(path="data.parquet", format="parquet", sha256="a" * 64, size_bytes=4096, rows=120)
        ],
        model_versions=["1"],
        time_start=now,
        time_end=now,
    )
    requested = RetrainingRequested(
        producer="tests", model=model, reason="corrections", base_version="1", dataset_version=1,
        metrics={"corrections": 30.0},
    )  # fmt: skip
    finished = RetrainingFinished(
        producer="tests",
        model=model,
        request_event_id=requested.event_id,
        outcome="gates_failed",
        base_version="1",
        dataset_version=1,
        gates=[GateOutcome(name="accuracy", passed=False, value=0.81, threshold=0.9, message="below")],
        message="accuracy 0.810 < 0.900",
    )
    publisher = KafkaPublisher(stack.kafka_bootstrap_servers, profile_named(stack.kafka_profile), "tests")
    try:
        publisher.publish_sync([Record.of(e) for e in (dataset, requested, finished)])
    finally:
        publisher.close()


def shot(page: Any, name: str) -> Path:
    path = ARTIFACTS / "console" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


def test_console_shows_a_rollout_progressing_and_admin_actions_need_the_token(
    pipeline: Pipeline,
    model: Callable[..., str],
    mlflow_client: MlflowClient,
    stack: Endpoints,
    browser_page: Any,
) -> None:
    page, expect = browser_page, playwright_api.expect
    name = model("weak", "strong")
    publish_ledger(stack, name)
    with Users(pipeline.gateways, name, rate_every=3) as users:
        mlflow_client.set_registered_model_alias(name, "challenger", "2")
        wait_for(lambda: pipeline.rollout(name), 60, "rollout started")

        # Models page: the model with its aliases, and the fleet of two replicas.
        page.goto(f"{pipeline.canary.url}/console")
        row = page.locator(f'table.models tr[data-model="{name}"]')
        expect(row).to_contain_text("challenger")
        expect(page.locator("table.fleet tr[data-replica]")).to_have_count(2)
        shot(page, "01-models")

        # The model page follows the rollout live: the weight changes without a reload.
        row.get_by_role("link", name=name).click()
        rollout = page.locator(".rollout[data-status=progressing]")
        expect(rollout).to_be_visible()
        first_weight = rollout.locator(".weight").inner_text()
        expect(rollout.locator(".weight")).not_to_have_text(first_weight, timeout=180_000)
        expect(page.locator('svg[data-chart="weight"] polyline')).to_have_count(1)
        expect(page.locator('svg[data-chart="error_rate"] polyline[data-series="challenger"]')).to_have_count(
            1
        )
        expect(page.locator("table.replicas tbody tr")).to_have_count(2)
        expect(page.locator("table.feedback tr[data-version='1']")).to_be_visible(timeout=60_000)
        thumbs_up = page.locator("table.feedback tr[data-version='1'] td").nth(3)
        expect(thumbs_up).not_to_have_text("0", timeout=60_000)  # ratings reach the summary
        expect(page.locator("table.datasets")).to_contain_text("120")
        expect(page.locator("table.retraining")).to_contain_text("gates_failed")
        expect(page.locator("table.retraining .gate-fail")).to_contain_text("accuracy")
        expect(page.locator("ol.timeline")).to_contain_text("challenger")
        shot(page, "02-rollout-progressing")

        # An admin action without the token is refused, and nothing changes.
        page.locator("button[data-action=pause]").click()
        expect(page.locator("#action-result")).to_contain_text("HTTP 401")
        assert pipeline.rollout(name)["status"] == "progressing"  # type: ignore[index]
        shot(page, "03-refused-without-token")

        # With the token: pause, then promote.
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        page.locator("button[data-action=pause]").click()
        expect(page.locator("#action-result")).to_contain_text("pause: done")
        expect(page.locator(".rollout[data-status=paused]")).to_be_visible()
        shot(page, "04-paused")
        page.locator("button[data-action=promote]").click()
        expect(page.locator(".rollout[data-status=promoted]")).to_be_visible()
    wait_for(lambda: alias(mlflow_client, name, "champion") == "2", 30, "promotion from the console")
    expect(page.locator("ol.timeline")).to_contain_text("console", timeout=30_000)  # who moved it
    # Both replicas hot-reloaded: the fleet shows them serving v2 as champion, none behind the registry.
    expect(page.locator("table.replicas td.bad")).to_have_count(0, timeout=30_000)
    expect(page.locator("table.replicas tbody tr", has_text="v2")).to_have_count(2)
    shot(page, "05-promoted")
    assert all(status == 200 for _, status, _, _ in users.responses)

    # The same facts from the API and from `flywheel status --json`.
    api = pipeline.api("/v1/status").json()
    env = {**os.environ, **pipeline.runner.service_env()}
    cli = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "status", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    for report in (api, json.loads(cli.stdout)):
        found = next(m for m in report["models"] if m["model"] == name)
        assert found["aliases"]["champion"] == "2"
        assert found["latest_dataset"]["rows"] == 120
        assert found["latest_retraining"]["outcome"] == "gates_failed"
        assert found["latest_retraining"]["gates"][0]["value"] == 0.81
        assert len(report["fleet"]) == 2
