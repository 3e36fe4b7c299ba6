"""What the loop produced for a model: dataset versions and retraining runs, read from the record.

The topics are the record (`events.LEDGER_TOPICS`, kept without time limit): every `DatasetPublished`
the feedback aggregation wrote, every `RetrainingRequested` (the trigger and its metrics) and the
`RetrainingFinished` that answered it (the gates with their measured values, the outcome, the registered
version). Joining a request to its outcome by `request_event_id` gives one retraining run per request;
a request without an outcome yet is a run in progress. Nothing is copied into a store that could drift,
and the read is cheap because these topics carry a few events per dataset. Links into the MLflow UI
need a run's experiment, asked of MLflow once per run (run ids never move).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from mlflow.tracking import MlflowClient
from pydantic import BaseModel, Field

from events import (
    LEDGER_TOPICS,
    DatasetFile,
    DatasetPublished,
    GateOutcome,
    RetrainingFinished,
    RetrainingRequested,
)
from events.envelope import Event
from services.shared.carry import carry
from services.shared.kafka.history_reader import read_events
from services.shared.settings import FlywheelSettings


class DatasetVersion(BaseModel):
    model: str
    dataset_name: str
    dataset_version: int
    published_at: datetime
    rows: int
    corrected_rows: int
    model_versions: list[str]
    time_start: datetime | None
    time_end: datetime | None
    files: list[DatasetFile] = Field(description="The manifest: every file with its format, rows and digest.")
    manifest_sha256: str = Field(description="Digest of the manifest (what a trainer verifies).")
    artifact_uri: str
    run_id: str
    run_url: str | None = Field(description="The dataset's run in the MLflow UI.")


class RetrainingRun(BaseModel):
    model: str
    request_event_id: str
    requested_at: datetime
    reason: str = Field(description="What triggered it: corrections, thumbs_down_rate or manual.")
    trigger_metrics: dict[str, float]
    base_version: str | None
    dataset_name: str | None
    dataset_version: int | None
    outcome: Literal["challenger", "gates_failed", "dataset_rejected", "failed", "running"]
    finished_at: datetime | None = None
    version: str | None = Field(default=None, description="The version registered as challenger.")
    gates: list[GateOutcome] = Field(
        default_factory=list, description="Each gate with its value and threshold."
    )
    metrics: dict[str, float] = Field(default_factory=dict)
    message: str = ""
    run_id: str | None = None
    run_url: str | None = None


class Ledger(BaseModel):
    datasets: list[DatasetVersion] = Field(description="Newest first.")
    retraining: list[RetrainingRun] = Field(description="Newest first.")


#: What a `RetrainingFinished` adds to its run, under the same names.
FINISHED_FIELDS = ("outcome", "version", "gates", "metrics", "message", "run_id")
_EXPERIMENT_IN_URI = re.compile(r"/(\d+)/(?:[0-9a-f]{32})/artifacts")


_EXPERIMENTS: dict[tuple[str, str], str] = {}  # (tracking uri, run id) -> experiment id: a run never moves


def _experiment_of(tracking_uri: str, run_id: str) -> str | None:
    """The run's experiment id; None while MLflow cannot say (asked again next time, not remembered)."""
    if (tracking_uri, run_id) not in _EXPERIMENTS:
        try:
            experiment = str(MlflowClient(tracking_uri).get_run(run_id).info.experiment_id)
        except Exception:  # a link is a convenience: no link rather than no ledger
            return None
        if len(_EXPERIMENTS) >= 4096:
            _EXPERIMENTS.clear()
        _EXPERIMENTS[(tracking_uri, run_id)] = experiment
    return _EXPERIMENTS[(tracking_uri, run_id)]


def run_url(settings: FlywheelSettings, run_id: str | None, artifact_uri: str | None = None) -> str | None:
    ui = settings.mlflow_ui()
    if ui is None or not run_id:
        return None
    found = _EXPERIMENT_IN_URI.search(artifact_uri or "")
    experiment = found.group(1) if found else _experiment_of(settings.mlflow_tracking_uri, run_id)
    return f"{ui}/#/experiments/{experiment}/runs/{run_id}" if experiment else None


def build_ledger(events: list[Event], settings: FlywheelSettings, links: bool = True) -> dict[str, Ledger]:
    """Per model, from the ledger topics' events (any order). `links=False` skips MLflow lookups."""
    datasets: dict[str, list[DatasetVersion]] = {}
    requested: dict[str, RetrainingRequested] = {}
    finished: dict[str, RetrainingFinished] = {}
    for event in events:
        if isinstance(event, DatasetPublished):
            datasets.setdefault(event.model, []).append(
                carry(
                    event,
                    DatasetVersion,
                    published_at=event.occurred_at,
                    run_url=run_url(settings, event.run_id, event.artifact_uri) if links else None,
                )
            )
        elif isinstance(event, RetrainingRequested):
            requested[event.event_id] = event
        elif isinstance(event, RetrainingFinished):
            finished[event.request_event_id] = event
    runs: dict[str, list[RetrainingRun]] = {}
    for request_id, request in requested.items():
        run = carry(
            request,
            RetrainingRun,
            request_event_id=request_id,
            requested_at=request.occurred_at,
            trigger_metrics=request.metrics,
            outcome="running",
        )
        done = finished.get(request_id)
        if done is not None:
            run = run.model_copy(
                update={
                    **{name: getattr(done, name) for name in FINISHED_FIELDS},
                    "finished_at": done.occurred_at,
                    "run_url": run_url(settings, done.run_id) if links else None,
                }
            )
        runs.setdefault(request.model, []).append(run)
    models = set(datasets) | set(runs)
    return {
        m: Ledger(
            datasets=sorted(datasets.get(m, []), key=lambda d: d.published_at, reverse=True),
            retraining=sorted(runs.get(m, []), key=lambda r: r.requested_at, reverse=True),
        )
        for m in models
    }


def read_ledger_events(settings: FlywheelSettings) -> list[Event]:
    """Every model's events on the ledger topics, read from Kafka now. Raises `HistoryUnavailable` when
    Kafka cannot be read."""
    return read_events(
        settings.kafka_bootstrap_servers, None, profile=settings.kafka_profile, topics=LEDGER_TOPICS
    )


def ledgers_of(
    events: list[Event], settings: FlywheelSettings, model: str | None, links: bool = True
) -> dict[str, Ledger]:
    """The ledger of `model` (of every watched model with None) from the ledger topics' events."""
    if model is not None:
        events = [e for e in events if getattr(e, "model", None) == model]
    ledgers = build_ledger(events, settings, links)
    return {m: ledgers[m] for m in ledgers if settings.watches(m)}


def read_ledger(settings: FlywheelSettings, model: str | None, links: bool = True) -> dict[str, Ledger]:
    """The ledger of `model` (of every model with None), read from Kafka now."""
    return ledgers_of(read_ledger_events(settings), settings, model, links)
