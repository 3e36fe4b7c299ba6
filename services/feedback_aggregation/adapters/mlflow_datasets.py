"""Dataset versions as MLflow runs in experiment `flywheel/feedback-datasets`.

A dataset version is one FINISHED run tagged `flywheel.dataset.name` / `flywheel.dataset.version`, with
the version's files and manifest as artifacts under `dataset/`, the example table logged as an MLflow
dataset input (so it shows in the UI's Datasets column), params and metrics `rows` / `corrected_rows`,
and the standard tags of our tracking conventions. The newest version carries the tag
`flywheel.dataset.alias=latest`; moving it removes it from the previous holder.

Crash safety: each run also carries `flywheel.dataset.publication_id`, the id of the publication that
made it, and `flywheel.dataset.complete=true` once every artifact is logged. A publication that is
retried after a crash first looks for its run: a complete one is reused (no second version for the
same examples); an incomplete one is deleted and logged again. Versions are numbered from the active
runs (1 + the highest), so a deleted incomplete run frees its number.

Blocking (MlflowClient is synchronous): call from a thread in async code.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pyarrow.parquet as pq
from mlflow import MlflowClient
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import DatasetInput, InputTag, Run, RunStatus, ViewType
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from events import DatasetFile
from services.feedback_aggregation.adapters.dataset_writer import WrittenDataset
from services.shared.dataset_manifest import MANIFEST
from services.shared.mlflow_conventions import standard_tags
from services.shared.mlflow_registry import ExperimentRef

log = logging.getLogger(__name__)

TAG_NAME = "flywheel.dataset.name"
TAG_VERSION = "flywheel.dataset.version"
TAG_ALIAS = "flywheel.dataset.alias"
TAG_PUBLICATION = "flywheel.dataset.publication_id"
TAG_COMPLETE = "flywheel.dataset.complete"
TAG_MODEL = "flywheel.dataset.model"
TAG_MANIFEST = "flywheel.dataset.manifest_sha256"
ARTIFACT_PATH = "dataset"
LATEST = "latest"
DIGEST_MAX = 36  # MLflow's limit on a dataset digest


@dataclass(frozen=True)
class LoggedDataset:
    """A complete dataset version in MLflow: what a DatasetPublished needs beyond the files."""

    run_id: str
    version: int
    artifact_uri: str  # of the `dataset/` directory
    manifest: dict[str, Any]
    manifest_sha256: str
    files: list[DatasetFile]


def _quote(value: str) -> str:
    if "'" in value or "\\" in value:
        raise ValueError(f"{value!r}: quotes are not allowed in dataset names and ids")
    return f"'{value}'"


def _environment() -> str:
    """`name==version` of every installed distribution: the run's environment artifact."""
    names = {
        f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions() if d.metadata["Name"]
    }
    return "\n".join(sorted(names, key=str.lower)) + "\n"


class DatasetRegistry:
    def __init__(self, tracking_uri: str, experiment: str = "flywheel/feedback-datasets") -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = ExperimentRef(self.client, experiment).id

    # --- lookups ----------------------------------------------------------------------------------
    def _search(self, filter_string: str) -> list[Run]:
        runs: list[Run] = []
        token: str | None = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id()],
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def versions(self, dataset_name: str) -> list[Run]:
        """Active runs of the dataset (complete or not), oldest version first."""
        runs = self._search(f"tags.`{TAG_NAME}` = {_quote(dataset_name)}")
        return sorted(runs, key=lambda r: int(r.data.tags.get(TAG_VERSION, "0")))

    def next_version(self, dataset_name: str) -> int:
        return 1 + max(
            (int(r.data.tags.get(TAG_VERSION, "0")) for r in self.versions(dataset_name)), default=0
        )

    def complete_run_of(self, publication_id: str) -> Run | None:
        """The complete run a publication already logged, if any. Incomplete runs of it (the worker
        died while logging) are deleted here, so that the retry logs the version afresh."""
        runs = self._search(f"tags.`{TAG_PUBLICATION}` = {_quote(publication_id)}")
        complete = [r for r in runs if r.data.tags.get(TAG_COMPLETE) == "true"]
        for run in runs:
            if run.data.tags.get(TAG_COMPLETE) != "true":
                self.discard(run.info.run_id, f"incomplete run of publication {publication_id} (retried)")
        return min(complete, key=lambda r: r.info.start_time) if complete else None

    def latest(self, dataset_name: str) -> Run | None:
        runs = self._search(
            f"tags.`{TAG_NAME}` = {_quote(dataset_name)} and tags.`{TAG_ALIAS}` = {_quote(LATEST)}"
        )
        return max(runs, key=lambda r: int(r.data.tags.get(TAG_VERSION, "0")), default=None)

    def discard(self, run_id: str, why: str) -> None:
        log.warning("deleting dataset run %s: %s", run_id, why)
        self.client.delete_run(run_id)

    # --- writing ----------------------------------------------------------------------------------
    def log_version(
        self,
        written: WrittenDataset,
        *,
        publication_id: str,
        reason: str,
        model_type: str = "dataset",
    ) -> LoggedDataset:
        """Log a written dataset version as a new run; returns it once complete (tag set, FINISHED)."""
        m = written.manifest
        name, version = m["dataset_name"], int(m["dataset_version"])
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        tags = {
            **standard_tags(model_type, "training"),
            TAG_NAME: name,
            TAG_VERSION: str(version),
            TAG_PUBLICATION: publication_id,
            TAG_MODEL: m["model"],
            TAG_MANIFEST: written.manifest_sha256,
            "flywheel.dataset.reason": reason,
        }
        run = self.client.create_run(
            self.experiment_id(), run_name=f"{stamp}_feedback-dataset_{name}_v{version}", tags=tags
        )
        run_id = run.info.run_id
        try:
            self._log_content(run_id, written, reason, publication_id)
            self.client.set_tag(run_id, TAG_COMPLETE, "true")
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        except BaseException:
            try:  # a failed attempt must not keep a half-logged version around
                self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
                self.client.delete_run(run_id)
            except Exception:
                log.warning("could not delete the failed dataset run %s", run_id, exc_info=True)
            raise
        return LoggedDataset(
            run_id=run_id,
            version=version,
            artifact_uri=f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}",
            manifest=m,
            manifest_sha256=written.manifest_sha256,
            files=written.files,
        )

    def _log_content(self, run_id: str, written: WrittenDataset, reason: str, publication_id: str) -> None:
        m = written.manifest
        self.client.log_batch(
            run_id,
            params=[
                mlflow.entities.Param(k, str(v))
                for k, v in {
                    "dataset_name": m["dataset_name"],
                    "dataset_version": m["dataset_version"],
                    "model": m["model"],
                    "model_versions": ",".join(m["model_versions"]),
                    "rows": m["rows"],
                    "corrected_rows": m["corrected_rows"],
                    "reason": reason,
                    "publication_id": publication_id,
                    "manifest_sha256": written.manifest_sha256,
                }.items()
            ],
            metrics=[
                mlflow.entities.Metric(k, float(v), int(time.time() * 1000), 0)
                for k, v in {"rows": m["rows"], "corrected_rows": m["corrected_rows"]}.items()
            ],
        )
        self.client.log_artifacts(run_id, str(written.directory), artifact_path=ARTIFACT_PATH)
        with tempfile.TemporaryDirectory() as tmp:
            requirements = Path(tmp) / "requirements.txt"
            requirements.write_text(_environment(), encoding="utf-8")
            self.client.log_artifact(run_id, str(requirements), artifact_path="environment")
        self._log_input(run_id, written)

    def _log_input(self, run_id: str, written: WrittenDataset) -> None:
        """The example table as an MLflow dataset input (context `training`)."""
        parquet = next(f for f in written.files if f.format == "parquet")
        frame = pq.read_table(str(written.directory / parquet.path)).to_pandas()
        run = self.client.get_run(run_id)
        context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
        with warnings.catch_warnings():  # pandas deprecations inside MLflow's schema/profile inference
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            dataset = from_pandas(
                frame,
                source=self._source(f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}/{parquet.path}"),
                name=f"{written.manifest['dataset_name']}-v{written.manifest['dataset_version']}",
                digest=written.manifest_sha256[:DIGEST_MAX],
            )
            entity = dataset._to_mlflow_entity()
        self.client.log_inputs(run_id, [DatasetInput(entity, tags=[context])])

    def _source(self, artifact_uri: str) -> DatasetSource:
        """A dataset source MLflow can resolve: the artifact itself, over the server's artifact proxy
        when the store is proxied (`mlflow-artifacts:`, which has no dataset-source resolver)."""
        if artifact_uri.startswith("mlflow-artifacts:"):
            path = artifact_uri.split(":", 1)[1].lstrip("/")
            base = self.tracking_uri.rstrip("/")
            return HTTPDatasetSource(f"{base}/api/2.0/mlflow-artifacts/artifacts/{path}")
        try:
            return resolve_dataset_source(artifact_uri)
        except Exception:
            return HTTPDatasetSource(artifact_uri)

    def move_alias(self, dataset_name: str, run_id: str, alias: str = LATEST) -> None:
        """Give `alias` to `run_id` and take it from every other run of the dataset (idempotent)."""
        self.client.set_tag(run_id, TAG_ALIAS, alias)
        holders = self._search(
            f"tags.`{TAG_NAME}` = {_quote(dataset_name)} and tags.`{TAG_ALIAS}` = {_quote(alias)}"
        )
        for run in holders:
            if run.info.run_id != run_id:
                self.client.delete_tag(run.info.run_id, TAG_ALIAS)

    def describe(self, run: Run) -> LoggedDataset:
        """A complete run read back (manifest downloaded and hashed), for a resumed publication."""
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id,
                artifact_path=f"{ARTIFACT_PATH}/{MANIFEST}",
                dst_path=tmp,
                tracking_uri=self.tracking_uri,
            )
            raw = Path(path).read_bytes()
        manifest = json.loads(raw)
        return LoggedDataset(
            run_id=run.info.run_id,
            version=int(run.data.tags[TAG_VERSION]),
            artifact_uri=f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}",
            manifest=manifest,
            manifest_sha256=hashlib.sha256(raw).hexdigest(),
            files=[DatasetFile.model_validate(f) for f in manifest["files"]],
        )
