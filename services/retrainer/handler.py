"""One retraining request, start to finish: dataset -> training -> gates -> (registration + `challenger`).

Every request that reaches `process` leaves an MLflow run in the experiment `flywheel/retrainer` whose
tags say what happened (`flywheel.retrainer.outcome`: challenger, gates_failed, dataset_rejected,
failed), with the gate report, the outcome as `outcome.json`, and the usual training record (params,
metrics, dataset input, evaluation table, model). The outcome is also logged and counted in Prometheus
(`flywheel_retrainer_requests_total{outcome}`), and published as a RetrainingFinished event (outcome,
every gate with its measured value, the version when one was registered), so a failed gate is visible
to every consumer and a later trigger can retry.

Failures are of two kinds:
- permanent (`DatasetRejected`: missing, tampered or foreign dataset; `TrainingFailed`: the model
  cannot be trained or evaluated): recorded as the outcome at once; retrying cannot help;
- anything else (MLflow unreachable, ...): the attempt's run is tagged `interrupted` and `handle`
  retries with back-off; after `retrainer_max_attempts` the failure is recorded as outcome `failed`.
`handle` returns only once an outcome is recorded and its RetrainingFinished acknowledged by Kafka, so
the worker moves past (and Faust commits) a request only after both. A redelivered request whose
outcome was recorded publishes the recorded outcome again, under the same event id (derived from the
request's), so consumers can drop the repeat.

Idempotency: runs carry the request's event id and dataset run id as tags. A redelivered request
finds its run: when it has an outcome, nothing is done again (`duplicate`); when the earlier attempt
died after registering the version (tag `flywheel.retrainer.registered_version`) but before recording
the outcome (also when that attempt could still tag itself `interrupted`), the alias is set and the
outcome recorded; any other unfinished run is marked `interrupted` and the request is trained afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import mlflow
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from events import (
    RETRAINING_REQUESTED,
    Event,
    EventDecodeError,
    GateOutcome,
    RetrainingFinished,
    RetrainingRequested,
    decode,
)
from services.retrainer import metrics
from services.retrainer.core.gates import GateReport, evaluate_gates
from services.retrainer.dataset import Dataset, DatasetRejected, load_dataset
from services.retrainer.dspy_trainer import DspyTrainer
from services.retrainer.settings import RetrainerSettings
from services.retrainer.sklearn_trainer import SklearnTrainer
from services.retrainer.training import BaseVersion, Candidate, Trainer, TrainingFailed, resolve_base
from services.shared.identifiers import filter_literal, is_filter_safe
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.mlflow_registry import RegistryAdapter
from services.shared.retry import retry_forever
from services.shared.sample_models import standard_tags

log = logging.getLogger(__name__)

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
PRODUCER = "retrainer"
OUTCOME_FILE = "outcome.json"


class Outcome(StrEnum):
    CHALLENGER = "challenger"
    GATES_FAILED = "gates_failed"
    DATASET_REJECTED = "dataset_rejected"
    FAILED = "failed"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    UNDECODABLE = "undecodable"


FINISHING_OUTCOMES = (Outcome.CHALLENGER, Outcome.GATES_FAILED, Outcome.DATASET_REJECTED, Outcome.FAILED)


@dataclass(frozen=True)
class RetrainResult:
    outcome: Outcome
    model: str | None = None
    request_event_id: str | None = None
    run_id: str | None = None
    version: str | None = None
    report: GateReport | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    recorded_outcome: str | None = None  # for a duplicate: what the earlier handling decided

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "model": self.model,
            "request_event_id": self.request_event_id,
            "run_id": self.run_id,
            "version": self.version,
            "gates": self.report.to_dict() if self.report else None,
            "metrics": self.metrics,
            "message": self.message,
            "recorded_outcome": self.recorded_outcome,
        }


def _finite(values: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


class EventPublisher(Protocol):
    async def publish_events(self, events: Sequence[Event]) -> Any: ...


def finished_event(request: RetrainingRequested, recorded: dict[str, Any]) -> RetrainingFinished | None:
    """The RetrainingFinished of a request from its recorded outcome (`RetrainResult.to_dict`, which is
    also the run's `outcome.json`); None when the outcome does not end a request (skipped, ...).
    The event id is derived from the request's, so a republished outcome is recognisably the same."""
    outcome = recorded.get("outcome")
    if outcome not in FINISHING_OUTCOMES:
        return None
    gates = (recorded.get("gates") or {}).get("gates") or []
    return RetrainingFinished(
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel.retraining-finished/{request.event_id}").hex,
        producer=PRODUCER,
        model=request.model,
        request_event_id=request.event_id,
        outcome=outcome,
        version=recorded.get("version") if outcome == Outcome.CHALLENGER else None,
        run_id=recorded.get("run_id"),
        base_version=request.base_version,
        dataset_name=request.dataset_name,
        dataset_version=request.dataset_version,
        gates=[GateOutcome.model_validate(g) for g in gates],
        metrics=_finite(recorded.get("metrics") or {}),
        message=str(recorded.get("message") or "")[:2000],
    )


class RetrainHandler:
    """Handles retraining requests; `process` is blocking (MLflow, training), `handle` runs it in a
    thread with the retry rules above. One request at a time."""

    def __init__(
        self,
        settings: RetrainerSettings,
        *,
        registry: RegistryAdapter | None = None,
        trainers: dict[str, Trainer] | None = None,
        dspy_lm: Any | None = None,
        events: EventPublisher | None = None,
    ) -> None:
        self.settings = settings
        uri = settings.mlflow_tracking_uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.registry = registry or RegistryAdapter(uri)
        self.trainers: dict[str, Trainer] = trainers or {
            "sklearn": SklearnTrainer(settings),
            "dspy": DspyTrainer(settings, lm=dspy_lm),
        }
        self.thresholds = settings.thresholds()
        self.events: EventPublisher = events or KafkaPublisher(
            settings.kafka_bootstrap_servers,
            profile_named(settings.kafka_profile),
            client_id="flywheel-retrainer",
            timeout_s=10.0,
        )
        self._experiment_id: str | None = None
        self._lock = threading.Lock()

    # --- the stream side ---------------------------------------------------------------------------
    async def handle_raw(self, raw: bytes | None) -> RetrainResult:
        try:
            if raw is None:
                raise EventDecodeError("empty message (null value)")
            event = decode(raw, RetrainingRequested)
        except EventDecodeError as exc:
            metrics.OUTCOMES.labels(Outcome.UNDECODABLE).inc()
            log.error("skipping unreadable message on %s: %s", RETRAINING_REQUESTED, exc)
            return RetrainResult(Outcome.UNDECODABLE, message=str(exc))
        return await self.handle(event)

    async def handle(self, event: RetrainingRequested) -> RetrainResult:
        """Handle one request to its end: outcome recorded in MLflow, then RetrainingFinished acked."""
        result = await self._handle(event)
        await self.publish_finished(event, result)
        return result

    async def publish_finished(self, event: RetrainingRequested, result: RetrainResult) -> None:
        if result.outcome is Outcome.DUPLICATE and result.run_id:
            run_id = result.run_id

            def recorded() -> Any:
                return asyncio.to_thread(self._recorded_outcome, run_id)

            outcome = await retry_forever(recorded, f"reading the recorded outcome of {event.event_id}")
        else:
            outcome = result.to_dict()
        finished = finished_event(event, outcome)
        if finished is None:
            return

        async def send() -> Any:
            return await self.events.publish_events([finished])

        await retry_forever(
            send,
            f"publishing RetrainingFinished of {event.event_id}",
            on_error=lambda _: metrics.FAILURES.labels("publishing").inc(),
        )

    def _recorded_outcome(self, run_id: str) -> dict[str, Any]:
        loaded = mlflow.artifacts.load_dict(f"runs:/{run_id}/{OUTCOME_FILE}")
        return dict(loaded) if isinstance(loaded, dict) else {}

    async def _handle(self, event: RetrainingRequested) -> RetrainResult:
        if not self.settings.watches(event.model):
            metrics.OUTCOMES.labels(Outcome.SKIPPED).inc()
            return RetrainResult(Outcome.SKIPPED, event.model, event.event_id)
        if not is_filter_safe(event.event_id):  # its runs could not be searched for: never retried
            metrics.OUTCOMES.labels(Outcome.UNDECODABLE).inc()
            log.error("skipping retraining request with an unsafe event id %r", event.event_id[:60])
            return RetrainResult(Outcome.UNDECODABLE, event.model, message="unsafe event id")
        delay = self.settings.retrainer_retry_initial_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return await asyncio.to_thread(self.process, event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.FAILURES.labels("attempt").inc()
                if attempt >= self.settings.retrainer_max_attempts:
                    log.exception(
                        "retraining %s of %s failed %d times; recording the failure",
                        event.event_id,
                        event.model,
                        attempt,
                    )
                    message = f"gave up after {attempt} attempts: {exc!r}"

                    def record(message: str = message) -> Any:
                        return asyncio.to_thread(self.record_failure, event, Outcome.FAILED, message)

                    return await retry_forever(
                        record,
                        f"recording the failure of {event.event_id}",
                        on_error=lambda _: metrics.FAILURES.labels("recording").inc(),
                    )
                log.warning(
                    "retraining %s of %s failed (attempt %d of %d), retrying in %.1fs: %r",
                    event.event_id,
                    event.model,
                    attempt,
                    self.settings.retrainer_max_attempts,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retrainer_retry_max_s)

    # --- one attempt (blocking) -------------------------------------------------------------------
    def process(self, event: RetrainingRequested) -> RetrainResult:
        with self._lock:
            started = time.monotonic()
            done = self._earlier_attempt(event)
            if done is not None:
                self._announce(done)
                return done
            try:
                base = resolve_base(self.registry, event, self.settings.champion_alias)
                trainer = self.trainers.get(base.flavour)
                if trainer is None:
                    raise TrainingFailed(f"no trainer for models of flavour {base.flavour!r}")
            except TrainingFailed as exc:
                metrics.FAILURES.labels("training").inc()
                return self._record_failure(event, Outcome.FAILED, str(exc))
            result = self._run(event, base, trainer)
            metrics.DURATION.observe(time.monotonic() - started)
            return result

    def record_failure(self, event: RetrainingRequested, outcome: Outcome, message: str) -> RetrainResult:
        """A run that records a request which could not be handled (no training happened)."""
        with self._lock:
            return self._record_failure(event, outcome, message)

    # --- runs and idempotency ----------------------------------------------------------------------
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            name = self.settings.retrainer_experiment
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    self._experiment_id = self.client.create_experiment(name)
                except MlflowException:  # created concurrently
                    experiment = self.client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
                    self._experiment_id = experiment.experiment_id
            else:
                self._experiment_id = experiment.experiment_id
        return self._experiment_id

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

    def _earlier_attempt(self, event: RetrainingRequested) -> RetrainResult | None:
        runs = self.runs_of(event)
        for run in runs:
            outcome = run.data.tags.get(TAG_OUTCOME)
            if outcome and outcome != INTERRUPTED:
                log.info(
                    "request %s was handled already (run %s: %s)", event.event_id, run.info.run_id, outcome
                )
                return RetrainResult(
                    Outcome.DUPLICATE,
                    event.model,
                    event.event_id,
                    run.info.run_id,
                    run.data.tags.get(TAG_VERSION),
                    message=run.data.tags.get(TAG_MESSAGE, ""),
                    recorded_outcome=outcome,
                )
        for run in runs:  # no outcome yet, or interrupted (perhaps after registering its version)
            version = run.data.tags.get(TAG_VERSION)
            if version and run.data.tags.get(TAG_GATES) == "passed":
                return self._resume(event, run, version)
            if run.data.tags.get(TAG_OUTCOME):
                continue
            log.warning(
                "marking unfinished run %s of request %s as interrupted", run.info.run_id, event.event_id
            )
            self.client.set_tag(run.info.run_id, TAG_OUTCOME, INTERRUPTED)
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")
        return None

    def _resume(self, event: RetrainingRequested, run: Run, version: str) -> RetrainResult:
        """The earlier attempt registered `version` (all gates passed) but died before recording."""
        self.registry.set_alias(event.model, self.settings.challenger_alias, version)
        result = RetrainResult(
            Outcome.CHALLENGER,
            event.model,
            event.event_id,
            run.info.run_id,
            version,
            message=f"version {version} registered by an interrupted attempt; alias set on redelivery",
        )
        self._record(run.info.run_id, result)
        if run.info.status != "FINISHED":
            self.client.set_terminated(run.info.run_id, "FINISHED")
        self._announce(result)
        return result

    def _request_tags(self, event: RetrainingRequested) -> dict[str, str]:
        return {
            TAG_EVENT: event.event_id,
            TAG_DATASET_RUN: event.dataset_run_id or NO_DATASET,
            TAG_MODEL: event.model,
            TAG_PREFIX + "reason": event.reason,
        }

    def _record(self, run_id: str, result: RetrainResult) -> None:
        """Outcome into the run: message, outcome.json, then the outcome tag (the idempotency mark)."""
        self.client.set_tag(run_id, TAG_MESSAGE, result.message[:5000])
        self.client.log_text(run_id, json.dumps(result.to_dict(), indent=2, default=str), OUTCOME_FILE)
        self.client.set_tag(run_id, TAG_OUTCOME, str(result.outcome))

    def _announce(self, result: RetrainResult) -> None:
        metrics.OUTCOMES.labels(result.outcome).inc()
        level = logging.INFO if result.outcome in (Outcome.CHALLENGER, Outcome.DUPLICATE) else logging.WARNING
        log.log(
            level,
            "retraining %s of %s: %s%s (run %s) %s",
            result.request_event_id,
            result.model,
            result.outcome,
            f" version {result.version}" if result.version else "",
            result.run_id,
            result.message,
        )

    def _record_failure(self, event: RetrainingRequested, outcome: Outcome, message: str) -> RetrainResult:
        now = datetime.now(UTC)
        tags = standard_tags("unknown", "training") | self._request_tags(event)
        with mlflow.start_run(
            experiment_id=self.experiment_id(), run_name=f"{now:%Y-%m-%d_%H%M%S}_retrain-failed", tags=tags
        ) as run:
            result = RetrainResult(outcome, event.model, event.event_id, run.info.run_id, message=message)
            self._record(run.info.run_id, result)
            mlflow.end_run("FAILED")
        self._announce(result)
        return result

    # --- training run ------------------------------------------------------------------------------
    def _run(self, event: RetrainingRequested, base: BaseVersion, trainer: Trainer) -> RetrainResult:
        tags = standard_tags(trainer.model_type, "training") | self._request_tags(event)
        tags[TAG_PREFIX + "base_version"] = base.version or ""
        while (stale := mlflow.active_run()) is not None:  # never nest under a run left open by a crash
            log.warning("ending run %s left active in this thread", stale.info.run_id)
            mlflow.end_run("KILLED")
        run = mlflow.start_run(
            experiment_id=self.experiment_id(), run_name=trainer.run_name(datetime.now(UTC)), tags=tags
        )
        run_id = run.info.run_id
        try:
            try:
                result = self._train(event, base, trainer, run_id)
            except DatasetRejected as exc:
                metrics.FAILURES.labels("dataset").inc()
                result = RetrainResult(
                    Outcome.DATASET_REJECTED, event.model, event.event_id, run_id, message=str(exc)
                )
                mlflow.set_tag(TAG_PREFIX + "rejection", exc.reason)
            except TrainingFailed as exc:
                metrics.FAILURES.labels("training").inc()
                result = RetrainResult(Outcome.FAILED, event.model, event.event_id, run_id, message=str(exc))
            self._record(run_id, result)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.client.set_tag(run_id, TAG_MESSAGE, repr(exc)[:5000])
                self.client.set_tag(run_id, TAG_OUTCOME, INTERRUPTED)
            with contextlib.suppress(Exception):
                mlflow.end_run("FAILED")
            raise
        trained = result.outcome in (Outcome.CHALLENGER, Outcome.GATES_FAILED)
        mlflow.end_run("FINISHED" if trained else "FAILED")
        self._announce(result)
        return result

    def _train(
        self, event: RetrainingRequested, base: BaseVersion, trainer: Trainer, run_id: str
    ) -> RetrainResult:
        t = self.thresholds
        params: dict[str, Any] = {
            "model": event.model,
            "reason": event.reason,
            "base_version": base.version,
            "baseline_version": base.baseline_version,
            "flavour": base.flavour,
            "request_event_id": event.event_id,
            "gate.min_accuracy": t.min_accuracy,
            "gate.max_p95_latency_ms": t.max_p95_latency_ms,
            "gate.max_p95_latency_ratio": t.max_p95_latency_ratio,
            "gate.max_p95_latency_delta_ms": t.max_p95_latency_delta_ms,
            "gate.max_regression": t.max_regression,
        }
        params |= {f"request.{k}": v for k, v in event.metrics.items()}
        params |= trainer.params()
        mlflow.log_params(params)

        with tempfile.TemporaryDirectory(prefix="flywheel-retrainer-") as tmp:
            dataset = load_dataset(
                self.client, event, Path(tmp), self.settings.retrainer_dataset_artifact_path
            )
        self._log_dataset(dataset)

        candidate = trainer.train(base, dataset)
        mlflow.log_metrics(_finite(candidate.metrics))
        report = evaluate_gates(candidate.measurements, t)
        mlflow.log_dict(report.to_dict(), "gates/report.json")
        mlflow.log_metrics({f"gate.{g.name}.passed": float(g.passed) for g in report.gates})
        mlflow.set_tag(TAG_GATES, report.summary())
        for g in report.gates:
            metrics.GATES.labels(g.name, "passed" if g.passed else "failed").inc()
        m = candidate.measurements
        if m.accuracy is not None:
            metrics.ACCURACY.labels(event.model, "candidate").set(m.accuracy)
        if m.baseline_accuracy is not None:
            metrics.ACCURACY.labels(event.model, "baseline").set(m.baseline_accuracy)

        common = {"model": event.model, "request_event_id": event.event_id, "run_id": run_id}
        if not report.passed or candidate.model_info is None:
            failed = "; ".join(g.message for g in report.gates if not g.passed)
            return RetrainResult(
                Outcome.GATES_FAILED,
                report=report,
                metrics=candidate.metrics,
                message=f"{report.summary()} ({failed}); no version registered",
                **common,
            )
        version = self._register(event, base, dataset, candidate, report, run_id)
        mlflow.set_tag(TAG_VERSION, version)
        self.registry.set_alias(event.model, self.settings.challenger_alias, version)
        return RetrainResult(
            Outcome.CHALLENGER,
            version=version,
            report=report,
            metrics=candidate.metrics,
            message=f"version {version} is {self.settings.challenger_alias}: {report.summary()}",
            **common,
        )

    def _log_dataset(self, dataset: Dataset) -> None:
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
            source=self._source(f"{dataset.artifact_uri}/{file.path}"),
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

    def _source(self, artifact_uri: str) -> Any:
        """A dataset source MLflow can resolve; `mlflow-artifacts:` (proxied store) has no resolver, so
        such an artifact is named by its URL on the server's artifact proxy."""
        if artifact_uri.startswith("mlflow-artifacts:"):
            path = artifact_uri.split(":", 1)[1].lstrip("/")
            return HTTPDatasetSource(
                f"{self.settings.mlflow_tracking_uri.rstrip('/')}/api/2.0/mlflow-artifacts/artifacts/{path}"
            )
        try:
            return resolve_dataset_source(artifact_uri)
        except Exception:
            return HTTPDatasetSource(artifact_uri)

    def _register(
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
