"""One dataset publication: examples -> dataset version (files + manifest) -> MLflow run -> events.

A publication starts when the trigger policy fires: the service records a `Pending` in Redis together
with the advanced trigger state and *freezes* the model's feedback buffer (renamed to the pending
buffer) in one atomic step. `DatasetPublisher.run` then does the slow, blocking part and is safe to
repeat after a crash at any point:

1. examples are rebuilt from the frozen buffer (`core.examples.build_examples` is deterministic) and
   the files written with `created_at = pending.created_at`, so a retry writes the same bytes;
2. the MLflow run of the publication is looked up by its `publication_id` tag first: a complete one is
   reused (a restart between logging and publishing does not create a second version), an incomplete
   one is deleted and logged again; the version number is 1 + the highest active version;
3. DatasetPublished then RetrainingRequested are sent with event ids derived from the publication id,
   so a repeated send is recognisable as the same event by every consumer.

The service clears the pending publication (and the frozen buffer) only after step 3 was acknowledged.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter

from events import DatasetFile, DatasetPublished, Event, FeedbackRecorded, RetrainingRequested, decode
from services.feedback_aggregation.adapters.dataset_writer import WrittenDataset, write_dataset
from services.feedback_aggregation.adapters.mlflow_datasets import LATEST, DatasetRegistry, LoggedDataset
from services.feedback_aggregation.domain.examples import ExampleRow, build_examples
from services.feedback_aggregation.domain.triggers import TriggerDecision
from services.shared.dataset_manifest import MANIFEST, ManifestMismatch, verify_manifest
from services.shared.jsontext import rfc3339
from services.shared.kafka.publisher import KafkaPublisher, Record

log = logging.getLogger(__name__)

PRODUCER = "feedback-aggregation"
Reason = Literal["corrections", "thumbs_down_rate"]


def dataset_name_for(model: str) -> str:
    """`{model}-feedback`, with characters outside `[A-Za-z0-9_.-]` replaced (it names runs and dirs)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model) + "-feedback"


@dataclass(frozen=True)
class Pending:
    """A publication decided but not yet announced (stored in Redis until it is)."""

    publication_id: str
    model: str
    dataset_name: str
    reason: Reason
    explanation: str
    metrics: dict[str, float]
    created_at: datetime

    @classmethod
    def new(cls, model: str, decision: TriggerDecision, now: datetime) -> Pending:
        if not decision.fire or decision.verdict not in ("corrections", "thumbs_down_rate"):
            raise ValueError(f"no publication for a decision that did not fire ({decision.verdict})")
        reason: Reason = "corrections" if decision.verdict == "corrections" else "thumbs_down_rate"
        return cls(
            publication_id=uuid.uuid4().hex,
            model=model,
            dataset_name=dataset_name_for(model),
            reason=reason,
            explanation=decision.explanation,
            metrics=dict(decision.metrics),
            created_at=now,
        )

    def decision(self) -> TriggerDecision:
        return TriggerDecision(True, self.reason, self.explanation, dict(self.metrics))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form stored in Redis with the trigger state (read back with `from_json`)."""
        return _PENDING_JSON.dump_python(self, mode="json")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pending:
        return _PENDING_JSON.validate_python(data)


_PENDING_JSON = TypeAdapter(Pending)


@dataclass(frozen=True)
class PublicationResult:
    publication_id: str
    reason: str
    dataset: LoggedDataset | None  # None when the feedback gave no example (e.g. only thumbs down)
    base_version: str | None
    resumed: bool  # the MLflow run was found complete from an earlier attempt
    feedback_events: int
    excluded: dict[str, int] = field(default_factory=dict)
    event_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = self.dataset
        return {
            "publication_id": self.publication_id,
            "reason": self.reason,
            "base_version": self.base_version,
            "feedback_events": self.feedback_events,
            "excluded": self.excluded,
            "dataset_name": d.manifest["dataset_name"] if d else None,
            "dataset_version": d.version if d else None,
            "run_id": d.run_id if d else None,
            "artifact_uri": d.artifact_uri if d else None,
            "manifest_sha256": d.manifest_sha256 if d else None,
            "rows": d.manifest["rows"] if d else 0,
            "corrected_rows": d.manifest["corrected_rows"] if d else 0,
            "event_ids": list(self.event_ids),
            "published_at": rfc3339(datetime.now(UTC)),
        }


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def most_rated_version(feedback: Sequence[FeedbackRecorded]) -> str | None:
    """The version most feedback was about (ties: the newest version)."""
    counts = Counter(e.version for e in {e.event_id: e for e in feedback}.values())
    if not counts:
        return None
    return max(counts, key=lambda v: (counts[v], _version_key(v)))


class DatasetPublisher:
    """Blocking (files, MLflow, Kafka acknowledgements): run from a thread."""

    def __init__(
        self,
        registry: DatasetRegistry,
        publisher: KafkaPublisher,
        dataset_dir: Path,
        champion_of: Callable[[str], str | None],
        producer: str = PRODUCER,
    ) -> None:
        self.registry = registry
        self.publisher = publisher
        self.dataset_dir = Path(dataset_dir)
        self.champion_of = champion_of
        self.producer = producer

    def run(self, pending: Pending, feedback_raw: Sequence[str]) -> PublicationResult:
        feedback = [decode(raw, FeedbackRecorded) for raw in feedback_raw]
        build = build_examples(feedback, model=pending.model)
        logged, resumed = self.ensure_logged(pending, build.rows)
        if logged is not None:
            self.registry.move_alias(pending.dataset_name, logged.run_id, LATEST)
        base_version = most_rated_version(feedback) or self.champion_of(pending.model)
        events = self.events(pending, logged, base_version)
        self.publisher.publish_sync([Record.of(e) for e in events])
        log.info(
            "published %s: dataset %s v%s (%s rows, run %s%s), retraining requested (%s, base version %s)",
            pending.publication_id,
            pending.dataset_name,
            logged.version if logged else "-",
            logged.manifest["rows"] if logged else 0,
            logged.run_id if logged else "-",
            ", resumed" if resumed else "",
            pending.reason,
            base_version,
        )
        return PublicationResult(
            publication_id=pending.publication_id,
            reason=pending.reason,
            dataset=logged,
            base_version=base_version,
            resumed=resumed,
            feedback_events=len(feedback),
            excluded=dict(build.excluded),
            event_ids=tuple(e.event_id for e in events),
        )

    def ensure_logged(
        self, pending: Pending, rows: Sequence[ExampleRow]
    ) -> tuple[LoggedDataset | None, bool]:
        """The publication's complete MLflow run: found from an earlier attempt, or logged now."""
        run = self.registry.complete_run_of(pending.publication_id)
        if run is not None:
            return self.registry.describe(run), True
        if not rows:
            return None, False
        version = self.registry.next_version(pending.dataset_name)
        written = self._write(pending, rows, version)
        logged = self.registry.log_version(
            written, publication_id=pending.publication_id, reason=pending.reason
        )
        return logged, False

    def directory(self, pending: Pending, version: int) -> Path:
        return self.dataset_dir / pending.dataset_name / f"v{version}-{pending.publication_id[:12]}"

    def _write(self, pending: Pending, rows: Sequence[ExampleRow], version: int) -> WrittenDataset:
        directory = self.directory(pending, version)
        if directory.exists():  # an earlier attempt of this publication wrote it (same rows, same bytes)
            try:
                manifest = verify_manifest(directory)
                if manifest["dataset_version"] == version and manifest["rows"] == len(rows):
                    return _written(directory, manifest)
            except (ManifestMismatch, OSError, ValueError, KeyError) as exc:
                log.warning("rewriting %s: %s", directory, exc)
            shutil.rmtree(directory)
        return write_dataset(
            rows,
            directory,
            dataset_name=pending.dataset_name,
            dataset_version=version,
            model=pending.model,
            created_at=pending.created_at,
        )

    def events(self, pending: Pending, logged: LoggedDataset | None, base_version: str | None) -> list[Event]:
        """DatasetPublished (when there is a dataset) then RetrainingRequested, with stable event ids."""
        events: list[Event] = []
        extra: dict[str, float] = {}
        if logged is not None:
            m = logged.manifest
            events.append(
                DatasetPublished(
                    event_id=f"{pending.publication_id}.dataset-published",
                    producer=self.producer,
                    model=pending.model,
                    dataset_name=m["dataset_name"],
                    dataset_version=logged.version,
                    run_id=logged.run_id,
                    artifact_uri=logged.artifact_uri,
                    manifest_sha256=logged.manifest_sha256,
                    rows=m["rows"],
                    corrected_rows=m["corrected_rows"],
                    files=logged.files,
                    model_versions=m["model_versions"],
                    time_start=m["time_start"],
                    time_end=m["time_end"],
                    aliases=[LATEST],
                )
            )
            extra = {"rows": float(m["rows"]), "corrected_rows": float(m["corrected_rows"])}
        request = pending.decision().to_event(
            pending.model,
            self.producer,
            base_version=base_version,
            dataset_name=logged.manifest["dataset_name"] if logged else None,
            dataset_version=logged.version if logged else None,
            dataset_run_id=logged.run_id if logged else None,
        )
        events.append(
            RetrainingRequested.model_validate(
                {
                    **request.model_dump(by_alias=True),
                    "event_id": f"{pending.publication_id}.retraining-requested",
                    "metrics": {**request.metrics, **extra},
                }
            )
        )
        return events


def _written(directory: Path, manifest: dict[str, Any]) -> WrittenDataset:
    sha = hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest()
    return WrittenDataset(
        directory, manifest, sha, [DatasetFile.model_validate(f) for f in manifest["files"]]
    )
