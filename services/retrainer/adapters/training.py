"""What every trainer shares: the base version a request retrains from, the candidate a trainer hands
back, and the helpers that time and score a model. Trainers run inside the active MLflow run of the
request (fluent API) and log their own model, parameters, metrics and evaluation table into it.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from events import RetrainingRequested
from services.retrainer.adapters.dataset import Dataset
from services.retrainer.domain.gates import Measurements, percentile
from services.shared.mlflow_registry import RegistryAdapter

log = logging.getLogger(__name__)


class TrainingFailed(Exception):
    """Training or evaluation cannot succeed for this request (bad base version, model error...):
    a permanent verdict, recorded and not retried."""


@dataclass(frozen=True)
class BaseVersion:
    """The version a request retrains from, and the version the candidate must not regress from."""

    model: str
    version: str | None
    flavour: str
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    baseline_version: str | None = None
    baseline_label: str = "champion"

    @property
    def uri(self) -> str | None:
        return f"models:/{self.model}/{self.version}" if self.version is not None else None

    @property
    def baseline_uri(self) -> str | None:
        return f"models:/{self.model}/{self.baseline_version}" if self.baseline_version is not None else None


@dataclass
class Candidate:
    """A trained (and logged) model with what was measured; `model_info` is None when nothing was
    trained (the data schema check failed)."""

    model_info: ModelInfo | None
    measurements: Measurements
    metrics: dict[str, float] = field(default_factory=dict)
    registration_tags: dict[str, str] = field(default_factory=dict)


class Trainer(Protocol):
    model_type: str

    def run_name(self, now: datetime) -> str: ...

    def params(self) -> dict[str, Any]: ...

    def train(self, base: BaseVersion, dataset: Dataset) -> Candidate: ...


def _latest_version(registry: RegistryAdapter, model: str) -> str | None:
    versions = [v.version for v in registry.version_stages(model)]
    numeric = [int(v) for v in versions if v.isdigit()]
    return str(max(numeric)) if numeric else None


def resolve_base(registry: RegistryAdapter, event: RetrainingRequested, champion_alias: str) -> BaseVersion:
    """Base = the request's base_version, else the champion, else the newest version (None for a model
    without versions); baseline = the champion, else the base. The flavour decides the trainer."""
    champion = registry.version_by_alias(event.model, champion_alias)
    version = event.base_version or champion or _latest_version(registry, event.model)
    if version is None:
        return BaseVersion(event.model, None, "sklearn")
    try:
        info = mlflow.models.get_model_info(f"models:/{event.model}/{version}")
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise TrainingFailed(f"base version {event.model}/{version} does not exist") from exc
        raise
    flavors = info.flavors or {}
    if "dspy" in flavors:
        flavour = "dspy"
    elif "sklearn" in flavors:
        flavour = "sklearn"
    else:
        flavour = next((k for k in flavors if k != "python_function"), "python_function")
    signature = info.signature
    inputs = signature.inputs.input_names() if signature is not None and signature.inputs else None
    outputs = signature.outputs.input_names() if signature is not None and signature.outputs else None
    return BaseVersion(
        event.model,
        str(version),
        flavour,
        [str(n) for n in inputs] if inputs else None,
        [str(n) for n in outputs] if outputs else None,
        baseline_version=champion or str(version),
        baseline_label=f"champion v{champion}" if champion else f"base v{version}",
    )


@dataclass
class TimedCalls:
    results: list[Any]
    latencies_ms: list[float]
    errors: list[str | None]


def timed_side_by_side(
    candidate: Callable[[int], Any], baseline: Callable[[int], Any] | None, count: int, repeats: int = 1
) -> tuple[TimedCalls, TimedCalls | None]:
    """Time the candidate and the baseline on the same `count` inputs, interleaved (the order
    alternates per call), so both meet the same machine load and their p95s can be compared as a
    ratio. With `repeats` > 1 each input is timed that many times per model and its median kept: a
    load spike that hits one call then does not decide the tail. With no baseline only the candidate
    is timed. The result of an input is its first call's."""
    cand = TimedCalls([], [], [])
    base = TimedCalls([], [], []) if baseline is not None else None
    pair: list[tuple[Callable[[int], Any], TimedCalls]] = [(candidate, cand)]
    if baseline is not None and base is not None:
        pair.append((baseline, base))
    for i in range(count):
        samples: dict[int, list[float]] = {id(into): [] for _, into in pair}
        for r in range(repeats):
            for call, into in pair if (i + r) % 2 == 0 else reversed(pair):
                start = time.perf_counter()
                try:
                    result, error = call(i), None
                except Exception as exc:
                    result, error = None, repr(exc)[:300]
                samples[id(into)].append((time.perf_counter() - start) * 1000)
                if r == 0:
                    into.results.append(result)
                    into.errors.append(error)
        for _, into in pair:
            into.latencies_ms.append(statistics.median(samples[id(into)]))
    return cand, base


def timed_calls(call: Callable[[int], Any], count: int) -> tuple[list[Any], list[float], list[str | None]]:
    """Call `call(i)` for i in range(count): results (None on error), latencies in ms, errors."""
    timed, _ = timed_side_by_side(call, None, count)
    return timed.results, timed.latencies_ms, timed.errors


def evaluated(
    schema: Measurements,
    metrics: dict[str, float],
    *,
    accuracy: float | None,
    latencies_ms: list[float],
    baseline_accuracy: float | None,
    baseline_latencies_ms: list[float] | None,
) -> Measurements:
    """The candidate's measurements on top of its schema check's, with their metrics added to `metrics`
    (accuracy, p95/mean latency, the baseline's, the improvement): what every trainer reports."""
    if accuracy is not None:
        metrics["accuracy"] = accuracy
    if latencies_ms:
        metrics["p95_latency_ms"] = percentile(latencies_ms, 95)
        metrics["mean_latency_ms"] = sum(latencies_ms) / len(latencies_ms)
    if baseline_accuracy is not None and accuracy is not None:
        metrics |= {"baseline_accuracy": baseline_accuracy, "improvement": accuracy - baseline_accuracy}
    if baseline_latencies_ms:
        metrics["baseline_p95_latency_ms"] = percentile(baseline_latencies_ms, 95)
    return replace(
        schema,
        accuracy=accuracy,
        latencies_ms=latencies_ms,
        baseline_accuracy=baseline_accuracy,
        baseline_latencies_ms=baseline_latencies_ms,
    )


def accuracy(expected: Sequence[Any], predicted: Sequence[Any]) -> float:
    if not expected:
        return math.nan
    hits = sum(1 for e, p in zip(expected, predicted, strict=True) if p is not None and p == e)
    return hits / len(expected)
