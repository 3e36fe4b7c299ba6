"""Decision records: what the rollout decided, why, and on which numbers - 1:1 with `events.CanaryDecision`.

The record's `event_id` is derived from the rollout id and a per-rollout sequence number, so if a worker
crashes after publishing but before persisting its state, replaying the same inputs republishes the same
event id and consumers can drop the duplicate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from events import CanaryDecision, CanaryDecisionKind
from services.canary_rollout.domain.status import RolloutStatus
from services.shared.carry import carry

#: `actor` of decisions the analysis (not a human) made.
ANALYSIS_ACTOR = "analysis"
#: `actor` of decisions caused by someone changing aliases in the registry directly.
REGISTRY_ACTOR = "registry"


class DecisionRecord(BaseModel):
    """One decision; field names match `CanaryDecision` (plus `seq` and `at`)."""

    model_config = ConfigDict(frozen=True)

    model: str
    rollout_id: str
    seq: int = Field(ge=0, description="Position of this decision within its rollout.")
    at: datetime
    decision: CanaryDecisionKind
    champion_version: str | None
    challenger_version: str
    state: RolloutStatus
    step: int = Field(ge=0)
    weight: float = Field(ge=0, le=100)
    reason: str
    actor: str = ANALYSIS_ACTOR
    metrics: dict[str, Any] = Field(default_factory=dict)

    @property
    def event_id(self) -> str:
        return f"{self.rollout_id}-{self.seq}"


def decision_event(record: DecisionRecord, producer: str = "canary_rollout") -> CanaryDecision:
    """The `CanaryDecision` event for a record (deterministic `event_id`, `occurred_at` = decision time)."""
    return carry(record, CanaryDecision, occurred_at=record.at, producer=producer, state=record.state.value)
