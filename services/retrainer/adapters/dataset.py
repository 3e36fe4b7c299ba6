"""Fetch a dataset version from its MLflow run and verify it before anything learns from it.

The feedback aggregation service logs a dataset version (`examples.jsonl`, `examples.parquet`,
`manifest.json`, see `services.shared.dataset_manifest`) under the artifact path `dataset/`
of a run. Here the files are downloaded, checked against the manifest (`verify_manifest`: every file's
size, SHA-256 and row count, no unlisted file, and the manifest's own SHA-256 when the run records the
published value), checked to be the dataset the request names, and read back. Anything wrong is a
`DatasetRejected`: a permanent verdict on this request, never retried.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from events import DatasetFile, RetrainingRequested
from services.retrainer.domain.examples import REQUIRED_COLUMNS
from services.retrainer.domain.gates import Measurements
from services.shared.dataset_manifest import JSON_COLUMNS, MANIFEST, ManifestMismatch, verify_manifest
from services.shared.errors import Refused
from services.shared.jsontext import loads

log = logging.getLogger(__name__)

TAG_COMPLETE = "flywheel.dataset.complete"  # set by the publisher once every artifact is logged
# Where a dataset run may record the manifest's SHA-256 as published (DatasetPublished.manifest_sha256).
MANIFEST_SHA_KEYS = ("flywheel.dataset.manifest_sha256", "dataset.manifest_sha256", "manifest_sha256")


class DatasetRejected(Refused):
    """The dataset of a request cannot be used; `reason` is a short code for tags and metrics."""


@dataclass(frozen=True)
class Dataset:
    run_id: str
    name: str
    version: int | None
    artifact_uri: str
    manifest: dict[str, Any]
    manifest_verified_against_published: bool
    file: DatasetFile  # the file the rows were read from (its SHA-256 was verified)
    columns: list[str]
    rows: list[dict[str, Any]]  # decoded JSON columns (inputs/output are JSON values)
    frame: pd.DataFrame  # the file as stored (JSON columns as text), for MLflow's dataset tracking

    @property
    def label(self) -> str:
        return f"{self.name}-v{self.version}" if self.version is not None else self.name

    def schema_measurements(self, row_problems: Sequence[str], baseline_label: str) -> Measurements:
        """What the schema check of these rows measured (columns, row count, the problems found parsing
        them into examples): a trainer's measurements before, and whether or not, it trains."""
        return Measurements(
            columns=self.columns,
            required_columns=REQUIRED_COLUMNS,
            rows=len(self.rows),
            row_problems=row_problems,
            baseline_label=baseline_label,
        )


def _published_sha(tags: dict[str, str], params: dict[str, str]) -> str | None:
    for key in MANIFEST_SHA_KEYS:
        value = tags.get(key) or params.get(key)
        if value:
            return value
    return None


def _decoded(record: dict[Any, Any]) -> dict[str, Any]:
    """A stored row with its JSON text columns (`inputs`, `output`) decoded; other columns as stored."""
    row = {str(k): v for k, v in record.items()}
    for name in JSON_COLUMNS:
        if isinstance(row.get(name), str):
            row[name] = loads(row[name])
    return row


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "RESOURCE_DOES_NOT_EXIST" in str(exc)


def load_dataset(
    client: MlflowClient, event: RetrainingRequested, workdir: Path, artifact_path: str = "dataset"
) -> Dataset:
    """Download, verify and read the dataset of `event` into memory (files land under `workdir`)."""
    run_id = event.dataset_run_id
    if not run_id:
        raise DatasetRejected("no_dataset", "the request names no dataset run (dataset_run_id is null)")
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if _not_found(exc):
            raise DatasetRejected("not_found", f"dataset run {run_id} does not exist") from exc
        raise
    if run.data.tags.get(TAG_COMPLETE, "true") != "true":
        raise DatasetRejected("incomplete", f"dataset run {run_id} is not marked complete ({TAG_COMPLETE})")
    try:
        local = Path(client.download_artifacts(run_id, artifact_path, dst_path=str(workdir)))
    except MlflowException as exc:
        if _not_found(exc):
            raise DatasetRejected(
                "not_found", f"run {run_id} has no artifacts under {artifact_path}/"
            ) from exc
        raise
    if not (local / MANIFEST).is_file():
        raise DatasetRejected("no_manifest", f"run {run_id} has no {artifact_path}/{MANIFEST}")

    published = _published_sha(run.data.tags, run.data.params)
    try:
        manifest = verify_manifest(local, published)
    except ManifestMismatch as exc:
        raise DatasetRejected("manifest_mismatch", "; ".join(exc.problems)) from exc
    except (ValueError, KeyError, OSError) as exc:
        raise DatasetRejected("manifest_unreadable", repr(exc)) from exc

    if manifest.get("model") != event.model:
        raise DatasetRejected(
            "wrong_model", f"dataset is of model {manifest.get('model')!r}, not {event.model!r}"
        )
    if event.dataset_name is not None and manifest.get("dataset_name") != event.dataset_name:
        raise DatasetRejected(
            "wrong_dataset",
            f"dataset is {manifest.get('dataset_name')!r}, the request names {event.dataset_name!r}",
        )
    if event.dataset_version is not None and manifest.get("dataset_version") != event.dataset_version:
        raise DatasetRejected(
            "wrong_version",
            f"dataset version is {manifest.get('dataset_version')}, "
            f"the request names {event.dataset_version}",
        )

    files = [DatasetFile.model_validate(f) for f in manifest.get("files", [])]
    chosen = next((f for f in files if f.format == "parquet"), None) or next(
        (f for f in files if f.format == "jsonl"), None
    )
    if chosen is None:
        raise DatasetRejected("no_readable_file", "the manifest lists no parquet or jsonl file")
    path = local / chosen.path
    try:
        if chosen.format == "parquet":
            frame = pq.read_table(str(path)).to_pandas()
        else:
            frame = pd.read_json(path, lines=True, dtype=False)
        rows = [_decoded(record) for record in frame.to_dict("records")]
    except Exception as exc:
        raise DatasetRejected("unreadable", f"{chosen.path}: {exc!r}") from exc
    log.info(
        "dataset %s v%s of run %s verified (%d rows, %s)",
        manifest.get("dataset_name"),
        manifest.get("dataset_version"),
        run_id,
        len(rows),
        "manifest hash matches the published one" if published else "no published manifest hash recorded",
    )
    return Dataset(
        run_id=run_id,
        name=str(manifest.get("dataset_name") or event.dataset_name or run_id),
        version=manifest.get("dataset_version"),
        artifact_uri=f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}",
        manifest=manifest,
        manifest_verified_against_published=published is not None,
        file=chosen,
        columns=[str(c) for c in frame.columns],
        rows=rows,
        frame=frame,
    )
