"""The rollout state machine: inputs are plain method calls, outputs are commands (`Outcome`).

Rules (why, where it is not obvious):
- A new challenger version during a rollout ends the old one (RESTART, state aborted) and STARTs a new
  rollout with a new id, so routing reshuffles and no data of the old challenger is reused. The same
  version again is a duplicate delivery and changes nothing.
- The challenger alias deleted by hand -> ABORT (traffic split dropped; nothing to delete in the registry).
- The champion alias moved to the challenger version by someone else -> the rollout ends as PROMOTED
  (previous champion kept, split dropped, challenger alias removed). Moved to a third version -> RESTART
  against the new champion: the old comparison no longer describes what users get. Deleted -> ABORT.
- Analysis runs on `tick`, at most once per `check_interval_s`; each run is one check:
  - catastrophic (see `analysis`) -> ROLLBACK at once, at any step;
  - fail -> failed_checks += 1 (cumulative over the rollout, never reset: a challenger that keeps
    failing now and then is not good enough); at `max_failed_checks` -> ROLLBACK, otherwise HOLD. A failed
    check never advances, so a challenger that is bad from the start never gets more than the first weight;
  - insufficient data -> HOLD (never advance or promote below `min_samples_per_variant`);
  - pass -> ADVANCE once the step interval elapsed (HOLD before), PROMOTE after the last (100 %) step.
- At 100 % the champion gets no traffic, so its baseline is its window of the previous step.
- Paused: traffic stays at the current weight and observations are still recorded, but `tick` decides
  nothing (no advance, no automatic rollback) until `resume`. Admin promote/abort work while paused.
- Decisions record the challenger share *after* them: PROMOTE records 100 (the new version serves all
  traffic as champion), ROLLBACK/ABORT/RESTART record 0.
- Observations count only for (champion, champion_version) / (challenger, challenger_version) of a
  started, active rollout, and only if made at or after the rollout started; those older than the current
  step go to the totals but not to the step window.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from events import CanaryDecisionKind, FeedbackRating, FeedbackRecorded, InferenceRecorded
from services.canary_rollout.domain.commands import (
    NOTHING,
    Command,
    DeleteAlias,
    KeepPrevious,
    MoveAlias,
    Outcome,
    SetWeight,
)
from services.canary_rollout.domain.decisions import ANALYSIS_ACTOR, REGISTRY_ACTOR
from services.canary_rollout.domain.judging import judge
from services.canary_rollout.domain.policy import RolloutPolicy
from services.canary_rollout.domain.recording import record_decision
from services.canary_rollout.domain.state import CanaryState, Role, RolloutState
from services.canary_rollout.domain.status import RolloutStatus

Kind = CanaryDecisionKind
Status = RolloutStatus


class InvalidTransition(ValueError):
    """An admin action that makes no sense in the rollout's current state (HTTP 409 in the API)."""


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("timestamps must carry a timezone")
    return when


class RolloutMachine:
    """The canary rollout of one registered model. Mutates `state`; persist `to_json()` after each call."""

    def __init__(self, model: str, policy: RolloutPolicy | None = None, state: CanaryState | None = None):
        self.policy = policy or RolloutPolicy()
        self.state = state or CanaryState(model=model)
        if self.state.model != model:
            raise ValueError(f"state belongs to model {self.state.model!r}, not {model!r}")

    # -- persistence ---------------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.state.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes, policy: RolloutPolicy | None = None) -> RolloutMachine:
        """Restore a machine; a running rollout keeps its own policy snapshot, `policy` is for new ones."""
        state = CanaryState.model_validate_json(text)
        return cls(state.model, policy, state)

    @property
    def model(self) -> str:
        return self.state.model

    @property
    def rollout(self) -> RolloutState | None:
        """The current or most recent rollout (possibly ended)."""
        return self.state.rollout

    @property
    def active(self) -> RolloutState | None:
        rollout = self.state.rollout
        return rollout if rollout is not None and rollout.active else None

    # -- registry events -----------------------------------------------------------------------------
    def challenger_set(self, version: str, champion_version: str | None, now: datetime) -> Outcome:
        """The challenger alias now points at `version`; `champion_version` is the champion at that time."""
        _aware(now)
        current = self.active
        if current is not None and current.challenger_version == version:
            if champion_version != current.champion_version:
                return self.champion_moved(champion_version, now)
            return NOTHING
        outcome = NOTHING
        if current is not None:
            outcome += self._end(
                current, Status.ABORTED, Kind.RESTART, now, f"challenger replaced by version {version}"
            )
        if champion_version == version:
            return outcome  # challenger == champion: nothing to compare, no rollout.
        return outcome + self._begin(version, champion_version, now)

    def challenger_deleted(self, now: datetime) -> Outcome:
        """The challenger alias was removed outside the rollout: abort."""
        _aware(now)
        current = self.active
        if current is None:
            return NOTHING
        # The alias is already gone: only the traffic split is left to drop.
        return self._end(current, Status.ABORTED, Kind.ABORT, now, "challenger alias deleted")

    def champion_moved(self, version: str | None, now: datetime) -> Outcome:
        """The champion alias now points at `version` (None: deleted)."""
        _aware(now)
        current = self.active
        if current is None or version == current.champion_version:
            return NOTHING
        waiting = current.status is Status.PENDING or current.paused_from is Status.PENDING
        if version == current.challenger_version:
            return self._promote(
                current, now, REGISTRY_ACTOR, "champion alias moved to the challenger version", moved=True
            )
        if version is None:
            if waiting:
                return NOTHING
            return self._end(
                current, Status.ABORTED, Kind.ABORT, now, "champion alias deleted: nothing to compare with"
            )
        if waiting:
            current.champion_version = version
            current.updated_at = now
            if current.status is Status.PENDING:
                return self._start(current, now, f"champion {version} set")
            return NOTHING  # paused while pending: starts on resume.
        ended = self._end(current, Status.ABORTED, Kind.RESTART, now, f"champion moved to version {version}")
        return ended + self._begin(current.challenger_version, version, now)

    # -- observations --------------------------------------------------------------------------------
    def observe_inference(
        self, variant: str, version: str, ok: bool, latency_ms: float, at: datetime
    ) -> bool:
        """Count one served prediction; False when it does not belong to the running comparison."""
        found = self._observed(variant, version, at)
        if found is None:
            return False
        rollout, role, in_step = found
        rollout.total(role).add_inference(ok)
        if in_step:
            rollout.window(role).add_inference(ok, latency_ms, capacity=rollout.policy.max_latency_samples)
        return True

    def observe_feedback(self, variant: str | None, version: str, thumbs_up: bool, at: datetime) -> bool:
        """Count one rating; `variant` None means "classify by version"."""
        found = self._observed(variant, version, at)
        if found is None:
            return False
        rollout, role, in_step = found
        rollout.total(role).add_feedback(thumbs_up)
        if in_step:
            rollout.window(role).add_feedback(thumbs_up)
        return True

    def observe_inference_event(self, event: InferenceRecorded) -> bool:
        if not self._event_matches(event.model, event.rollout_id):
            return False
        return self.observe_inference(
            event.variant, event.version, event.status == "ok", event.latency_ms, event.occurred_at
        )

    def observe_feedback_event(self, event: FeedbackRecorded) -> bool:
        if not self._event_matches(event.model, event.rollout_id):
            return False
        thumbs_up = event.rating is FeedbackRating.THUMBS_UP
        return self.observe_feedback(event.variant, event.version, thumbs_up, event.occurred_at)

    # -- time ----------------------------------------------------------------------------------------
    def tick(self, now: datetime) -> Outcome:
        """Time passed: run a check if one is due and act on its verdict."""
        _aware(now)
        current = self.active
        if current is None or current.status is not Status.PROGRESSING:
            return NOTHING
        policy = current.policy
        if (now - current.last_check_at).total_seconds() < policy.check_interval_s:
            return NOTHING
        current.last_check_at = now
        judgement = judge(current, now)
        reason, metrics = judgement.reason, judgement.metrics
        if judgement.action == "rollback":
            return self._rollback(current, now, reason, metrics)
        if judgement.action == "promote":
            return self._promote(current, now, ANALYSIS_ACTOR, reason, metrics)
        if judgement.action == "advance":
            return self._advance(current, now, reason, metrics)
        return self._hold(current, now, reason, metrics)

    # -- admin ---------------------------------------------------------------------------------------
    def promote(self, actor: str, now: datetime, reason: str | None = None) -> Outcome:
        current = self._require_active("promote")
        _aware(now)
        return self._promote(current, now, actor, reason or f"promoted by {actor}")

    def abort(self, actor: str, now: datetime, reason: str | None = None) -> Outcome:
        current = self._require_active("abort")
        _aware(now)
        reason = reason or f"aborted by {actor}"
        return self._end(current, Status.ABORTED, Kind.ABORT, now, reason, actor, delete_challenger=True)

    def pause(self, actor: str, now: datetime, reason: str | None = None) -> Outcome:
        current = self._require_active("pause")
        _aware(now)
        if current.status is Status.PAUSED:
            raise InvalidTransition("rollout is already paused")
        current.paused_from = current.status
        current.status = Status.PAUSED
        return Outcome((record_decision(current, Kind.PAUSE, now, reason or f"paused by {actor}", actor),))

    def resume(self, actor: str, now: datetime, reason: str | None = None) -> Outcome:
        current = self._require_active("resume")
        _aware(now)
        if current.status is not Status.PAUSED or current.paused_from is None:
            raise InvalidTransition(f"rollout is {current.status.value}, not paused")
        current.status, current.paused_from = current.paused_from, None
        outcome = Outcome(
            (record_decision(current, Kind.RESUME, now, reason or f"resumed by {actor}", actor),)
        )
        if current.status is Status.PENDING and current.champion_version is not None:
            outcome += self._start(current, now, f"champion {current.champion_version} set while paused")
        return outcome

    # -- internals -----------------------------------------------------------------------------------
    def _require_active(self, action: str) -> RolloutState:
        current = self.active
        if current is None:
            raise InvalidTransition(f"cannot {action}: no active rollout for model {self.model!r}")
        return current

    def _event_matches(self, model: str, rollout_id: str | None) -> bool:
        current = self.active
        if model != self.model or current is None:
            return False
        return rollout_id is None or rollout_id == current.rollout_id

    def _observed(
        self, variant: str | None, version: str, at: datetime
    ) -> tuple[RolloutState, Role, bool] | None:
        current = self.active
        if current is None or current.weight <= 0 or _aware(at) < current.started_at:
            return None
        role: Role
        if version == current.champion_version and variant in (None, "champion"):
            role = "champion"
        elif version == current.challenger_version and variant in (None, "challenger"):
            role = "challenger"
        else:
            return None
        return current, role, at >= current.step_started_at

    def _begin(self, version: str, champion_version: str | None, now: datetime) -> Outcome:
        rollout = RolloutState.create(self.model, version, champion_version, self.policy, now)
        self.state.rollout = rollout
        if champion_version is None:
            return Outcome(
                (
                    record_decision(
                        rollout, Kind.HOLD, now, "waiting for a champion to compare with", REGISTRY_ACTOR
                    ),
                )
            )
        return self._start(rollout, now, f"challenger {version} against champion {champion_version}")

    def _start(self, rollout: RolloutState, now: datetime, reason: str) -> Outcome:
        rollout.status = Status.PROGRESSING
        rollout.step = 0
        rollout.weight = rollout.policy.weights[0]
        rollout.started_at = rollout.step_started_at = rollout.last_check_at = now
        return Outcome(
            (
                SetWeight(rollout.model, rollout.rollout_id, rollout.weight),
                record_decision(rollout, Kind.START, now, reason, REGISTRY_ACTOR),
            )
        )

    def _advance(self, rollout: RolloutState, now: datetime, passed: str, metrics: dict[str, Any]) -> Outcome:
        old_step, old_weight = rollout.step, rollout.weight
        rollout.step += 1
        rollout.weight = rollout.policy.weights[rollout.step]
        rollout.step_started_at = now
        rollout.reset_windows()
        reason = f"step {old_step} passed ({passed}); weight {old_weight:g} -> {rollout.weight:g} %"
        return Outcome(
            (
                SetWeight(rollout.model, rollout.rollout_id, rollout.weight),
                record_decision(rollout, Kind.ADVANCE, now, reason, ANALYSIS_ACTOR, metrics),
            )
        )

    def _hold(self, rollout: RolloutState, now: datetime, reason: str, metrics: dict[str, Any]) -> Outcome:
        return Outcome((record_decision(rollout, Kind.HOLD, now, reason, ANALYSIS_ACTOR, metrics),))

    def _rollback(
        self, rollout: RolloutState, now: datetime, reason: str, metrics: dict[str, Any]
    ) -> Outcome:
        return self._end(
            rollout,
            Status.ROLLED_BACK,
            Kind.ROLLBACK,
            now,
            reason,
            ANALYSIS_ACTOR,
            metrics,
            delete_challenger=True,
        )

    def _promote(
        self,
        rollout: RolloutState,
        now: datetime,
        actor: str,
        reason: str,
        metrics: dict[str, Any] | None = None,
        *,
        moved: bool = False,
    ) -> Outcome:
        """End as promoted; `moved`: the champion alias already points at the challenger version."""
        commands: list[Command] = []
        if rollout.champion_version is not None:
            commands.append(KeepPrevious(rollout.model, rollout.champion_version))
        if not moved:
            commands.append(MoveAlias(rollout.model, "champion", rollout.challenger_version))
        commands += [
            SetWeight(rollout.model, rollout.rollout_id, 0.0),
            DeleteAlias(rollout.model, "challenger"),
        ]
        self._finish(rollout, Status.PROMOTED, now, weight=100.0)
        return Outcome((*commands, record_decision(rollout, Kind.PROMOTE, now, reason, actor, metrics)))

    def _end(
        self,
        rollout: RolloutState,
        status: Status,
        kind: Kind,
        now: datetime,
        reason: str,
        actor: str = REGISTRY_ACTOR,
        metrics: dict[str, Any] | None = None,
        *,
        delete_challenger: bool = False,
    ) -> Outcome:
        """End without promotion: drop the traffic split first, then (rollback, admin abort) the challenger
        alias. A RESTART's new rollout sets its own weight right after; the brief 0 % in between only
        sends the old challenger's share to the champion."""
        commands: list[Command] = [SetWeight(rollout.model, rollout.rollout_id, 0.0)]
        if delete_challenger:
            commands.append(DeleteAlias(rollout.model, "challenger"))
        self._finish(rollout, status, now, weight=0.0)
        return Outcome((*commands, record_decision(rollout, kind, now, reason, actor, metrics)))

    @staticmethod
    def _finish(rollout: RolloutState, status: Status, now: datetime, *, weight: float) -> None:
        rollout.status, rollout.paused_from = status, None
        rollout.weight = weight
        rollout.ended_at = now
