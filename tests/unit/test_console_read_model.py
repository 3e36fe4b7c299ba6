"""The console's read model as pure logic: the ledger join (a retraining request and its outcome make one
run; a request without an outcome is running), newest first, per model; pagination; MLflow links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from events import DatasetFile, DatasetPublished, GateOutcome, RetrainingFinished, RetrainingRequested
from services.shared.console.api import page_of
from services.shared.console.ledger import build_ledger, run_url
from services.shared.console.overview import mlflow_model_url
from services.shared.settings import FlywheelSettings

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
RUN = "0123456789abcdef0123456789abcdef"
SETTINGS = FlywheelSettings(mlflow_tracking_uri="http://mlflow:5000")


def dataset(model: str, version: int, at: datetime) -> DatasetPublished:
    return DatasetPublished(
        producer="t",
        model=model,
        dataset_name=f"{model}-feedback",
        dataset_version=version,
        run_id=RUN,
        artifact_uri=f"mlflow-artifacts:/4/{RUN}/artifacts/dataset",
        manifest_sha256="c" * 64,
        rows=10 * version,
        files=[DatasetFile(path="d.parquet", format="parquet", sha256="a" * 64, size_bytes=1, rows=10)],
        occurred_at=at,
    )


def test_requests_and_outcomes_join_into_runs_newest_first_per_model() -> None:
    first = RetrainingRequested(producer="t", model="m", reason="corrections", occurred_at=T0)
    second = RetrainingRequested(
        producer="t", model="m", reason="thumbs_down_rate", occurred_at=T0 + timedelta(minutes=5)
    )
    done = RetrainingFinished(
        producer="t",
        model="m",
        request_event_id=first.event_id,
        outcome="challenger",
        version="3",
        gates=[GateOutcome(name="accuracy", passed=True, value=0.95, threshold=0.9)],
        occurred_at=T0 + timedelta(minutes=1),
    )
    other = RetrainingRequested(producer="t", model="other", reason="manual", occurred_at=T0)
    events = [done, dataset("m", 1, T0), first, dataset("m", 2, T0 + timedelta(hours=1)), second, other]

    ledgers = build_ledger(events, SETTINGS, links=False)

    assert set(ledgers) == {"m", "other"}
    runs = ledgers["m"].retraining
    assert [r.request_event_id for r in runs] == [second.event_id, first.event_id]
    assert runs[0].outcome == "running" and runs[0].gates == [] and runs[0].finished_at is None
    assert runs[1].outcome == "challenger" and runs[1].version == "3" and runs[1].gates[0].value == 0.95
    assert [d.dataset_version for d in ledgers["m"].datasets] == [2, 1]
    assert ledgers["m"].datasets[0].rows == 20 and ledgers["m"].datasets[0].run_url is None
    assert ledgers["other"].datasets == [] and ledgers["other"].retraining[0].outcome == "running"


def test_links_point_into_the_mlflow_ui_without_credentials() -> None:
    settings = FlywheelSettings(mlflow_tracking_uri="http://user:secret@mlflow:5000/")
    assert run_url(settings, RUN, f"mlflow-artifacts:/4/{RUN}/artifacts/x") == (
        f"http://user:***@mlflow:5000/#/experiments/4/runs/{RUN}"
    )
    assert mlflow_model_url(SETTINGS, "a b", "2") == "http://mlflow:5000/#/models/a%20b/versions/2"
    assert mlflow_model_url(FlywheelSettings(mlflow_tracking_uri="databricks"), "m") is None
    ui = FlywheelSettings(mlflow_tracking_uri="databricks", mlflow_ui_url="https://ui.example/")
    assert mlflow_model_url(ui, "m") == "https://ui.example/#/models/m"
    assert run_url(SETTINGS, None) is None


def test_pages_cover_the_list_once() -> None:
    items = list(range(7))
    first = page_of(items, 0, 3)
    assert (first.items, first.total, first.next_offset) == ([0, 1, 2], 7, 3)
    last = page_of(items, 6, 3)
    assert (last.items, last.next_offset) == ([6], None)
    assert page_of(items, 10, 3).items == []


def test_status_table_shows_a_replica_behind_the_registry_and_the_ledger() -> None:
    from rich.console import Console

    from services.cli.control import print_status
    from services.shared.console.ledger import RetrainingRun
    from services.shared.console.overview import ModelOverview, RolloutBrief, StatusReport
    from services.shared.fleet import ReplicaStatus, ServedAlias

    ledger = build_ledger([dataset("m", 3, T0)], SETTINGS, links=False)["m"]
    report = StatusReport(
        models=[
            ModelOverview(
                model="m",
                aliases={"champion": "2", "challenger": "3"},
                replicas={"g1": {"champion": "2"}, "g2": {"champion": "1"}},
                rollout=RolloutBrief(
                    rollout_id="r",
                    status="progressing",
                    champion_version="2",
                    challenger_version="3",
                    step=1,
                    steps=3,
                    weight=50,
                    shadow=False,
                    totals={"challenger": {"requests": 40, "errors": 1, "thumbs_up": 3, "thumbs_down": 1}},
                ),
                feedback={"totals": {"thumbs_up": 8, "thumbs_down": 2, "thumbs_up_rate": 0.8}},
                latest_dataset=ledger.datasets[0],
                latest_retraining=RetrainingRun(
                    model="m",
                    request_event_id="e",
                    requested_at=T0,
                    reason="manual",
                    trigger_metrics={},
                    base_version="2",
                    dataset_name=None,
                    dataset_version=None,
                    outcome="challenger",
                    version="3",
                ),
            )
        ],
        fleet=[
            ReplicaStatus(
                replica="g2",
                started_at=T0,
                heartbeat_at=T0,
                ready=True,
                serving=[ServedAlias(model="m", alias="champion", version="1", since=T0)],
            )
        ],
        ledger_error=None,
    )
    console = Console(record=True, width=250)
    print_status(report, console)
    text = console.export_text()
    assert "2 (1 behind)" in text  # g2 still serves v1 while the registry says v2
    assert "progressing v3 vs v2" in text and "2/3 · 50%" in text and "40 / 1 / 75%" in text
    assert "10 / 80%" in text and "v3 (30 rows)" in text and "challenger v3" in text
    assert "m@champion=v1" in text and "ready" in text
