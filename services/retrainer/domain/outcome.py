"""How a retraining request ended (pure): the result of one handling and the event that reports it.

Every request that reaches the retrainer ends in one outcome: `challenger` (a version was registered and
set as challenger), `gates_failed`, `dataset_rejected` or `failed`; `duplicate` (a redelivery of a request
already handled), `skipped` (a model this retrainer does not watch) and `undecodable` (an id that cannot
be searched for) end nothing new. `finished_event` turns a recorded outcome into its RetrainingFinished,
with an event id derived from the request's, so a republished outcome is recognisably the same event.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from events import GateOutcome, RetrainingFinished, RetrainingRequested
from services.retrainer.domain.gates import GateReport

PRODUCER = "retrainer"


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


def finite_metrics(values: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


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
        metrics=finite_metrics(recorded.get("metrics") or {}),
        message=str(recorded.get("message") or "")[:2000],
    )
