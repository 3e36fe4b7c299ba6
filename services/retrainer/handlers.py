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
import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import mlflow
import redis.asyncio as aioredis
from mlflow import MlflowClient
from mlflow.entities import Run

from events import Event, RetrainingRequested
from services.retrainer import metrics
from services.retrainer.adapters.dataset import DatasetRejected, load_dataset
from services.retrainer.adapters.dspy_trainer import DspyTrainer
from services.retrainer.adapters.mlflow_runs import (
    INTERRUPTED,
    TAG_GATES,
    TAG_MESSAGE,
    TAG_OUTCOME,
    TAG_PREFIX,
    TAG_VERSION,
    RetrainingRuns,
)
from services.retrainer.adapters.sklearn_trainer import SklearnTrainer
from services.retrainer.adapters.training import (
    BaseVersion,
    Trainer,
    TrainingFailed,
    resolve_base,
)
from services.retrainer.domain.gates import evaluate_gates
from services.retrainer.domain.outcome import Outcome, RetrainResult, finished_event, finite_metrics
from services.retrainer.settings import RetrainerSettings
from services.shared.consumer import Message
from services.shared.identifiers import is_filter_safe
from services.shared.kafka.profile import profile_named
from services.shared.kafka.publisher import KafkaPublisher
from services.shared.leases import lease
from services.shared.mlflow_conventions import standard_tags
from services.shared.mlflow_registry import RegistryAdapter
from services.shared.redis_store import RedisKeys
from services.shared.retry import retry, retry_forever

log = logging.getLogger(__name__)


class EventPublisher(Protocol):
    async def publish_events(self, events: Sequence[Event]) -> Any: ...


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
        redis: aioredis.Redis | None = None,
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
        self.runs = RetrainingRuns(self.client, settings.retrainer_experiment, uri)
        self.keys = RedisKeys(settings.redis_prefix)
        self.redis = redis
        self._lock = threading.Lock()

    # --- the stream side ---------------------------------------------------------------------------
    async def handle(self, messages: list[Message]) -> None:
        """The consumer runtime's handler (one request at a time)."""
        for message in messages:
            await self.handle_event(cast(RetrainingRequested, message.event))

    async def handle_event(self, event: RetrainingRequested) -> RetrainResult:
        """Handle one request to its end: outcome recorded in MLflow, then RetrainingFinished acked.

        Under a lease per request: during a rebalance two instances can hold the same request, and the
        second must find the first one's outcome rather than train a second version."""
        if self.redis is None:
            result = await self._handle(event)
        else:
            async with lease(self.redis, self.keys.key("retrainer", "lease", event.event_id)):
                result = await self._handle(event)
        await self.publish_finished(event, result)
        return result

    async def publish_finished(self, event: RetrainingRequested, result: RetrainResult) -> None:
        if result.outcome is Outcome.DUPLICATE and result.run_id:
            run_id = result.run_id

            def recorded() -> Any:
                return asyncio.to_thread(self.runs.recorded_outcome, run_id)

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

    async def _handle(self, event: RetrainingRequested) -> RetrainResult:
        if not self.settings.watches(event.model):
            metrics.OUTCOMES.labels(Outcome.SKIPPED).inc()
            return RetrainResult(Outcome.SKIPPED, event.model, event.event_id)
        if not is_filter_safe(event.event_id):  # its runs could not be searched for: never retried
            metrics.OUTCOMES.labels(Outcome.UNDECODABLE).inc()
            log.error("skipping retraining request with an unsafe event id %r", event.event_id[:60])
            return RetrainResult(Outcome.UNDECODABLE, event.model, message="unsafe event id")
        try:
            return await retry(
                lambda: asyncio.to_thread(self.process, event),
                f"retraining {event.event_id} of {event.model}",
                attempts=self.settings.retrainer_max_attempts,
                initial_s=self.settings.retrainer_retry_initial_s,
                max_s=self.settings.retrainer_retry_max_s,
                on_error=lambda _: metrics.FAILURES.labels("attempt").inc(),
            )
        except Exception as exc:
            attempts = self.settings.retrainer_max_attempts
            log.exception(
                "retraining %s of %s failed %d times; recording the failure",
                event.event_id,
                event.model,
                attempts,
            )
            message = f"gave up after {attempts} attempts: {exc!r}"
            return await retry_forever(
                lambda: asyncio.to_thread(self.record_failure, event, Outcome.FAILED, message),
                f"recording the failure of {event.event_id}",
                on_error=lambda _: metrics.FAILURES.labels("recording").inc(),
            )

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
    def _earlier_attempt(self, event: RetrainingRequested) -> RetrainResult | None:
        runs = self.runs.runs_of(event)
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
        self.runs.record(run.info.run_id, result)
        if run.info.status != "FINISHED":
            self.client.set_terminated(run.info.run_id, "FINISHED")
        self._announce(result)
        return result

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
        tags = standard_tags("unknown", "training") | self.runs.request_tags(event)
        with mlflow.start_run(
            experiment_id=self.runs.experiment_id(),
            run_name=f"{now:%Y-%m-%d_%H%M%S}_retrain-failed",
            tags=tags,
        ) as run:
            result = RetrainResult(outcome, event.model, event.event_id, run.info.run_id, message=message)
            self.runs.record(run.info.run_id, result)
            mlflow.end_run("FAILED")
        self._announce(result)
        return result

    # --- training run ------------------------------------------------------------------------------
    def _run(self, event: RetrainingRequested, base: BaseVersion, trainer: Trainer) -> RetrainResult:
        tags = standard_tags(trainer.model_type, "training") | self.runs.request_tags(event)
        tags[TAG_PREFIX + "base_version"] = base.version or ""
        while (stale := mlflow.active_run()) is not None:  # never nest under a run left open by a crash
            log.warning("ending run %s left active in this thread", stale.info.run_id)
            mlflow.end_run("KILLED")
        run = mlflow.start_run(
            experiment_id=self.runs.experiment_id(), run_name=trainer.run_name(datetime.now(UTC)), tags=tags
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
            self.runs.record(run_id, result)
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
        self.runs.log_dataset(dataset)

        candidate = trainer.train(base, dataset)
        mlflow.log_metrics(finite_metrics(candidate.metrics))
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
        version = self.runs.register(event, base, dataset, candidate, report, run_id)
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
