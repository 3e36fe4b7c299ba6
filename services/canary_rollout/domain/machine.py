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

from events import CanaryDecisionKind
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
from services.canary_rollout.domain.observing import ObservingMixin, aware
from services.canary_rollout.domain.policy import RolloutPolicy
from services.canary_rollout.domain.recording import record_decision
from services.canary_rollout.domain.state import CanaryState, RolloutState, WatchState
from services.canary_rollout.domain.status import RolloutStatus
from services.canary_rollout.domain.watch import check_watch

Kind = CanaryDecisionKind
Status = RolloutStatus


class InvalidTransition(ValueError):
    """An admin action that makes no sense in the rollout's current state (HTTP 409 in the API)."""


class RolloutMachine(ObservingMixin):
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
    def rollout(self) -> RolloutState | None:
        """The current or most recent rollout (possibly ended)."""
        return self.state.rollout

    # -- registry events -----------------------------------------------------------------------------
    def challenger_set(self, version: str, champion_version: str | None, now: datetime) -> Outcome:
        """The challenger alias now points at `version`; `champion_version` is the champion at that time."""
        aware(now)
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
        aware(now)
        current = self.active
        if current is None:
            return NOTHING
        # The alias is already gone: only the traffic split is left to drop.
        return self._end(current, Status.ABORTED, Kind.ABORT, now, "challenger alias deleted")

    def champion_moved(self, version: str | None, now: datetime) -> Outcome:
        """The champion alias now points at `version` (None: deleted)."""
        aware(now)
        if self.state.watch is not None and version != self.state.watch.version:
            self.state.watch = None  # someone moved champion: the alias is the truth, nothing to watch
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

    def wanted_split(self) -> SetWeight | None:
        """The traffic split the active rollout stands at (None without one): what a split that vanished
        (Redis came back empty) is set back to, so the rollout resumes where it was."""
        rollout = self.active
        if rollout is None:
            return None
        share = rollout.policy.shadow_share if rollout.shadow else 0.0
        return SetWeight(rollout.model, rollout.rollout_id, rollout.weight, share)

    @property
    def busy(self) -> bool:
        """A rollout runs or a promotion is watched: time matters to this machine."""
        return self.active is not None or self.state.watch is not None

    # -- time ----------------------------------------------------------------------------------------
    def tick(self, now: datetime) -> Outcome:
        """Time passed: run the checks that are due (the watch's, the rollout's) and act on their verdicts."""
        aware(now)
        watched = NOTHING
        if self.state.watch is not None:
            watch = self.state.watch
            watched, ended = check_watch(watch, now)
            if ended:
                self.state.watch = None
                if (
                    self.state.rollout is not None
                    and self.state.rollout.rollout_id == watch.rollout.rollout_id
                ):
                    self.state.rollout = watch.rollout  # its last decisions (reverted, watch_passed)
        return watched + self._check_rollout(now)

    def _check_rollout(self, now: datetime) -> Outcome:
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
        if judgement.action in ("advance", "go_live"):
            return self._advance(current, now, reason, metrics)
        return self._hold(current, now, reason, metrics)

    # -- admin ---------------------------------------------------------------------------------------
    def promote(self, actor: str, now: datetime, reason: str | None = None) -> Outcome:
        current = self._require_active("promote")
        aware(now)
        return self._promote(current, now, actor, reason or f"promoted by {actor}")

    def abort(self, actor: str, now: datetime, reason: str | None = None) -> Outcome:
        current = self._require_active("abort")
        aware(now)
        reason = reason or f"aborted by {actor}"
        return self._end(current, Status.ABORTED, Kind.ABORT, now, reason, actor, delete_challenger=True)

    def pause(self, actor: str, now: datetime, reason: str | None = None) -> Outcome:
        current = self._require_active("pause")
        aware(now)
        if current.status is Status.PAUSED:
            raise InvalidTransition("rollout is already paused")
        current.paused_from = current.status
        current.status = Status.PAUSED
        return Outcome((record_decision(current, Kind.PAUSE, now, reason or f"paused by {actor}", actor),))

    def resume(self, actor: str, now: datetime, reason: str | None = None) -> Outcome:
        current = self._require_active("resume")
        aware(now)
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
    def end_lost(
        self,
        rollout_id: str,
        champion_version: str | None,
        challenger_version: str,
        step: int,
        weight: float,
        next_seq: int,
        now: datetime,
    ) -> Outcome:
        """A rollout whose state was lost (Redis came back empty under a restarted worker), known only from
        its last recorded decision: its windows and evidence are gone, so it cannot be judged on — and it
        must not restart silently. It ends here, recorded as aborted (the decision continues its sequence),
        the challenger alias deleted: setting it again starts a new rollout."""
        aware(now)
        rollout = RolloutState.create(self.model, challenger_version, champion_version, self.policy, now)
        rollout = rollout.model_copy(
            update={"rollout_id": rollout_id, "step": step, "weight": weight, "seq": next_seq}
        )
        rollout.status = Status.PROGRESSING
        self.state.rollout = rollout
        reason = (
            f"rollout state lost (Redis came back empty) at step {step}, weight {weight:g} %: ended here, "
            "not restarted; set the challenger alias again to start over"
        )
        return self._end(rollout, Status.ABORTED, Kind.ABORT, now, reason, delete_challenger=True)

    def _require_active(self, action: str) -> RolloutState:
        current = self.active
        if current is None:
            raise InvalidTransition(f"cannot {action}: no active rollout for model {self.model!r}")
        return current

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
        """Start at the first weight, or first in the shadow step (weight 0, a share of champion requests
        mirrored to the challenger) when the policy asks for one."""
        policy = rollout.policy
        rollout.status = Status.PROGRESSING
        rollout.step = 0
        rollout.shadow = policy.shadow_samples > 0
        rollout.weight = 0.0 if rollout.shadow else policy.weights[0]
        rollout.started_at = rollout.step_started_at = rollout.last_check_at = now
        share = policy.shadow_share if rollout.shadow else 0.0
        if rollout.shadow:
            reason += (
                f"; shadow step: {share:.0%} of champion requests mirrored to the challenger until "
                f"{policy.shadow_samples} answers are compared"
            )
        return Outcome(
            (
                SetWeight(rollout.model, rollout.rollout_id, rollout.weight, share),
                record_decision(rollout, Kind.START, now, reason, REGISTRY_ACTOR),
            )
        )

    def _advance(self, rollout: RolloutState, now: datetime, passed: str, metrics: dict[str, Any]) -> Outcome:
        """To the next weight; out of the shadow step, to the first (live traffic judged on its own)."""
        old_step, old_weight = rollout.step, rollout.weight
        if rollout.shadow:
            rollout.shadow = False
            passed = f"shadow step passed ({passed})"
        else:
            rollout.step += 1
            passed = f"step {old_step} passed ({passed})"
        rollout.weight = rollout.policy.weights[rollout.step]
        rollout.step_started_at = now
        rollout.reset_windows()
        reason = f"{passed}; weight {old_weight:g} -> {rollout.weight:g} %"
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
        record = record_decision(rollout, Kind.PROMOTE, now, reason, actor, metrics)
        if rollout.policy.watch_s > 0 and rollout.champion_version is not None:
            self.state.watch = WatchState.begin(rollout, now)
        return Outcome((*commands, record))

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
