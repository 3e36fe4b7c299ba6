"""The retrainer's MLflow runs: one per handling attempt of a request, found again by its tags.

Runs carry the request's event id and dataset run id as tags, so a redelivered request finds its earlier
attempts (`runs_of`); the outcome is recorded as `outcome.json` and, last, the outcome tag (the
idempotency mark). Also here: the dataset input of a run and the registration of a candidate.
Blocking (MLflow's client is synchronous).
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Run

from events import RetrainingRequested
from services.retrainer.adapters.dataset import Dataset
from services.retrainer.adapters.training import BaseVersion, Candidate
from services.retrainer.domain.gates import GateReport
from services.retrainer.domain.outcome import RetrainResult
from services.shared.identifiers import filter_literal
from services.shared.mlflow_registry import ExperimentRef

TAG_PREFIX = "flywheel.retrainer."
TAG_EVENT = TAG_PREFIX + "request_event_id"
TAG_DATASET_RUN = TAG_PREFIX + "dataset_run_id"
TAG_MODEL = TAG_PREFIX + "model"
TAG_OUTCOME = TAG_PREFIX + "outcome"
TAG_MESSAGE = TAG_PREFIX + "message"
TAG_GATES = TAG_PREFIX + "gates"
TAG_VERSION = TAG_PREFIX + "registered_version"
TAG_RUN = TAG_PREFIX + "run_id"
INTERRUPTED = "interrupted"
NO_DATASET = "none"
DIGEST_MAX = 36  # MLflow's limit on a dataset digest
OUTCOME_FILE = "outcome.json"


class RetrainingRuns:
    def __init__(self, client: MlflowClient, experiment: str, tracking_uri: str) -> None:
        self.client = client
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.experiment_id = ExperimentRef(client, experiment).id

    def runs_of(self, event: RetrainingRequested) -> list[Run]:
        """Runs of this request (same event id and dataset run), newest first."""
        found = self.client.search_runs(
            [self.experiment_id()],
            filter_string=f"tags.`{TAG_EVENT}` = {filter_literal(event.event_id)}",
            max_results=100,
            order_by=["attributes.start_time DESC"],
        )
        dataset_run = event.dataset_run_id or NO_DATASET
        return [
            r
            for r in found
            if r.data.tags.get(TAG_EVENT) == event.event_id
            and r.data.tags.get(TAG_DATASET_RUN) == dataset_run
        ]

    def request_tags(self, event: RetrainingRequested) -> dict[str, str]:
        return {
            TAG_EVENT: event.event_id,
            TAG_DATASET_RUN: event.dataset_run_id or NO_DATASET,
            TAG_MODEL: event.model,
            TAG_PREFIX + "reason": event.reason,
        }

    def record(self, run_id: str, result: RetrainResult) -> None:
        """Outcome into the run: message, outcome.json, then the outcome tag (the idempotency mark)."""
        self.client.set_tag(run_id, TAG_MESSAGE, result.message[:5000])
        self.client.log_text(run_id, json.dumps(result.to_dict(), indent=2, default=str), OUTCOME_FILE)
        self.client.set_tag(run_id, TAG_OUTCOME, str(result.outcome))

    def recorded_outcome(self, run_id: str) -> dict[str, Any]:
        loaded = mlflow.artifacts.load_dict(f"runs:/{run_id}/{OUTCOME_FILE}")
        return dict(loaded) if isinstance(loaded, dict) else {}

    def log_dataset(self, dataset: Dataset) -> None:
        file = dataset.file
        mlflow.log_params(
            {
                "dataset.name": dataset.name,
                "dataset.version": dataset.version,
                "dataset.run_id": dataset.run_id,
                "dataset.rows": len(dataset.rows),
                "dataset.columns": ",".join(dataset.columns),
                "dataset.file": file.path,
                "dataset.sha256": file.sha256,
                "dataset.manifest_checked_against_published": dataset.manifest_verified_against_published,
            }
        )
        source = from_pandas(
            dataset.frame,
            source=self.source(f"{dataset.artifact_uri}/{file.path}"),
            name=dataset.label,
            digest=file.sha256[:DIGEST_MAX],
        )
        mlflow.log_input(
            source,
            context="training",
            tags={
                "sha256": file.sha256,
                "rows": str(len(dataset.rows)),
                "columns": ",".join(dataset.columns),
                "file": file.path,
                "dataset_run_id": dataset.run_id,
            },
        )

    def source(self, artifact_uri: str) -> Any:
        """A dataset source MLflow can resolve; `mlflow-artifacts:` (proxied store) has no resolver, so
        such an artifact is named by its URL on the server's artifact proxy."""
        if artifact_uri.startswith("mlflow-artifacts:"):
            path = artifact_uri.split(":", 1)[1].lstrip("/")
            return HTTPDatasetSource(
                f"{self.tracking_uri.rstrip('/')}/api/2.0/mlflow-artifacts/artifacts/{path}"
            )
        try:
            return resolve_dataset_source(artifact_uri)
        except Exception:
            return HTTPDatasetSource(artifact_uri)

    def register(
        self,
        event: RetrainingRequested,
        base: BaseVersion,
        dataset: Dataset,
        candidate: Candidate,
        report: GateReport,
        run_id: str,
    ) -> str:
        assert candidate.model_info is not None
        m = candidate.measurements
        tags = {
            TAG_RUN: run_id,
            TAG_EVENT: event.event_id,
            TAG_GATES: report.summary(),
            TAG_PREFIX + "base_version": base.version or "",
            TAG_PREFIX + "accuracy": f"{m.accuracy:.6f}" if m.accuracy is not None else "",
            TAG_PREFIX + "baseline_accuracy": f"{m.baseline_accuracy:.6f}"
            if m.baseline_accuracy is not None
            else "",
            "flywheel.dataset.run_id": dataset.run_id,
            "flywheel.dataset.name": dataset.name,
            "flywheel.dataset.version": str(dataset.version),
            "flywheel.dataset.sha256": dataset.file.sha256,
        } | candidate.registration_tags
        version = mlflow.register_model(
            candidate.model_info.model_uri, event.model, await_registration_for=120, tags=tags
        )
        description = (
            f"Retrained by flywheel from version {base.version or '-'} on {dataset.label} "
            f"({len(dataset.rows)} examples, request {event.event_id}, reason {event.reason}). "
            f"Held-out accuracy {m.accuracy}, baseline ({m.baseline_label}) {m.baseline_accuracy}."
        )
        self.client.update_model_version(event.model, version.version, description=description)
        return str(version.version)
