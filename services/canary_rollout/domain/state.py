"""The persisted state of a model's canary rollout: one pydantic model, JSON in and out.

Everything a worker needs to continue a rollout after a restart lives here - status, step, weight,
timestamps, failed-check count, the metric windows and the policy snapshot the rollout started with - so
`CanaryState.model_validate_json(saved)` resumes the same rollout at the same step with the same data.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from services.canary_rollout.domain.decisions import DecisionRecord
from services.canary_rollout.domain.policy import RolloutPolicy
from services.canary_rollout.domain.sequential import SequentialLooks
from services.canary_rollout.domain.status import RolloutStatus
from services.canary_rollout.domain.window import Counts, VariantWindow

Role = Literal["champion", "challenger"]


def new_rollout_id(model: str, champion_version: str | None, challenger_version: str, now: datetime) -> str:
    """Deterministic id: replaying the event that started a rollout yields the same id (and routing)."""
    key = f"{model}\0{champion_version}\0{challenger_version}\0{now.isoformat()}"
    return "r-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def window_seed(rollout_id: str, role: Role, step: int) -> str:
    return f"{rollout_id}:{role}:{step}"


class RolloutState(BaseModel):
    """One rollout of `challenger_version` against `champion_version`."""

    rollout_id: str
    model: str
    champion_version: str | None
    challenger_version: str
    policy: RolloutPolicy
    status: RolloutStatus = RolloutStatus.PENDING
    paused_from: RolloutStatus | None = Field(default=None, description="Status to resume to.")
    step: int = Field(default=0, ge=0)
    weight: float = Field(default=0.0, ge=0, le=100, description="Current challenger share in percent.")
    shadow: bool = Field(default=False, description="In the shadow step: mirrored requests only, weight 0.")
    started_at: datetime
    step_started_at: datetime
    last_check_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    failed_checks: int = 0
    seq: int = Field(default=0, description="Sequence number of the next decision record.")
    champion: VariantWindow = Field(description="Champion window of the current step.")
    challenger: VariantWindow = Field(description="Challenger window of the current step.")
    champion_baseline: VariantWindow | None = Field(
        default=None,
        description="Champion window of the previous step: the comparison baseline at 100 %, where the "
        "champion receives no traffic.",
    )
    champion_total: Counts = Field(default_factory=Counts)
    challenger_total: Counts = Field(default_factory=Counts)
    looks: SequentialLooks = Field(
        default_factory=SequentialLooks, description="What the sequential tests have spent and shown."
    )
    last_decision: DecisionRecord | None = None

    @classmethod
    def create(
        cls,
        model: str,
        challenger_version: str,
        champion_version: str | None,
        policy: RolloutPolicy,
        now: datetime,
    ) -> RolloutState:
        rollout_id = new_rollout_id(model, champion_version, challenger_version, now)
        return cls(
            rollout_id=rollout_id,
            model=model,
            champion_version=champion_version,
            challenger_version=challenger_version,
            policy=policy,
            started_at=now,
            step_started_at=now,
            last_check_at=now,
            updated_at=now,
            champion=VariantWindow(seed=window_seed(rollout_id, "champion", 0)),
            challenger=VariantWindow(seed=window_seed(rollout_id, "challenger", 0)),
        )

    @property
    def active(self) -> bool:
        return not self.status.terminal

    def window(self, role: Role) -> VariantWindow:
        return self.champion if role == "champion" else self.challenger

    def total(self, role: Role) -> Counts:
        return self.champion_total if role == "champion" else self.challenger_total

    def reset_windows(self) -> None:
        """Start the windows of the current step (the completed champion window becomes the baseline)."""
        self.champion_baseline = self.champion
        self.champion = VariantWindow(seed=window_seed(self.rollout_id, "champion", self.step))
        self.challenger = VariantWindow(seed=window_seed(self.rollout_id, "challenger", self.step))


class WatchState(BaseModel):
    """A promoted rollout under watch: its record, the baseline and what the new champion did since."""

    rollout: RolloutState
    started_at: datetime
    until: datetime
    last_check_at: datetime
    baseline: VariantWindow = Field(description="The previous champion as the rollout recorded it.")
    current: VariantWindow = Field(description="The promoted version, served as champion, since promotion.")
    looks: SequentialLooks = Field(default_factory=SequentialLooks)

    @classmethod
    def begin(cls, rollout: RolloutState, now: datetime) -> WatchState:
        latencies = rollout.champion.latencies_ms or (
            rollout.champion_baseline.latencies_ms if rollout.champion_baseline else []
        )
        baseline = VariantWindow(**rollout.champion_total.model_dump(), latencies_ms=list(latencies))
        return cls(
            rollout=rollout.model_copy(deep=True),
            started_at=now,
            until=now + timedelta(seconds=rollout.policy.watch_s),
            last_check_at=now,
            baseline=baseline,
            current=VariantWindow(seed=f"{rollout.rollout_id}:watch"),
        )

    @property
    def version(self) -> str:
        return self.rollout.challenger_version

    def observe_inference(
        self, variant: str, version: str, ok: bool, latency_ms: float, at: datetime
    ) -> bool:
        if not self._counts(variant, version, at):
            return False
        self.current.add_inference(ok, latency_ms, capacity=self.rollout.policy.max_latency_samples)
        return True

    def observe_feedback(self, variant: str | None, version: str, thumbs_up: bool, at: datetime) -> bool:
        if not self._counts(variant, version, at):
            return False
        self.current.add_feedback(thumbs_up)
        return True

    def _counts(self, variant: str | None, version: str, at: datetime) -> bool:
        in_window = self.started_at <= at <= self.until
        return version == self.version and variant in (None, "champion") and in_window

    def view(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "previous_version": self.rollout.champion_version,
            "until": self.until.isoformat(),
            "baseline": self.baseline.rates(),
            "current": self.current.rates(),
        }


class CanaryState(BaseModel):
    """Everything persisted per model: the current (or most recent, possibly ended) rollout."""

    schema_version: Literal[1] = 1
    model: str
    rollout: RolloutState | None = None
    watch: WatchState | None = Field(default=None, description="The last promotion, while it is watched.")
