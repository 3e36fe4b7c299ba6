"""What each served prediction and each rating counts for: the running rollout (its step window and
totals) and/or the watch of the last promotion. Only counting, no decisions (those are the machine's)."""

from __future__ import annotations

from datetime import datetime

from events import FeedbackRating, FeedbackRecorded, InferenceRecorded
from services.canary_rollout.domain.state import CanaryState, Role, RolloutState

#: What the challenger's observations are called: its shadow answers in the shadow step, then live ones.
_CHALLENGER_VARIANTS = {True: ("shadow",), False: (None, "challenger")}


def aware(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("timestamps must carry a timezone")
    return when


class ObservingMixin:
    """The observation half of `RolloutMachine` (which provides `state`, `model` and `active`)."""

    state: CanaryState

    @property
    def model(self) -> str:
        return self.state.model

    @property
    def active(self) -> RolloutState | None:
        rollout = self.state.rollout
        return rollout if rollout is not None and rollout.active else None

    def observe_inference(
        self,
        variant: str,
        version: str,
        ok: bool,
        latency_ms: float,
        at: datetime,
        *,
        in_rollout: bool = True,
        agrees: bool | None = None,
    ) -> bool:
        """Count one served prediction (for the rollout and/or the watch), or one shadow answer (`agrees`:
        equal to the champion's); False when nothing counted it. Shadow answers served nobody: they count
        in the shadow step's window only, never in the rollout's totals."""
        watch = self.state.watch
        watched = watch is not None and watch.observe_inference(variant, version, ok, latency_ms, at)
        found = self._observed(variant, version, at) if in_rollout else None
        if found is None:
            return watched
        rollout, role, in_step = found
        if not rollout.shadow:
            rollout.total(role).add_inference(ok)
        elif agrees is not None:
            rollout.window(role).compared += 1
            rollout.window(role).agreed += int(agrees)
        if in_step:
            rollout.window(role).add_inference(ok, latency_ms, capacity=rollout.policy.max_latency_samples)
        return True

    def observe_feedback(
        self, variant: str | None, version: str, thumbs_up: bool, at: datetime, *, in_rollout: bool = True
    ) -> bool:
        """Count one rating; `variant` None means "classify by version"."""
        watch = self.state.watch
        watched = watch is not None and watch.observe_feedback(variant, version, thumbs_up, at)
        found = self._observed(variant, version, at) if in_rollout else None
        if found is None:
            return watched
        rollout, role, in_step = found
        rollout.total(role).add_feedback(thumbs_up)
        if in_step:
            rollout.window(role).add_feedback(thumbs_up)
        return True

    def observe_inference_event(self, event: InferenceRecorded) -> bool:
        if event.model != self.model:
            return False
        ok, matches = event.status == "ok", self._event_matches(event.model, event.rollout_id)
        return self.observe_inference(
            event.variant,
            event.version,
            ok,
            event.latency_ms,
            event.occurred_at,
            in_rollout=matches,
            agrees=event.shadow_agrees,
        )

    def observe_feedback_event(self, event: FeedbackRecorded) -> bool:
        if event.model != self.model:
            return False
        up, matches = (
            event.rating is FeedbackRating.THUMBS_UP,
            self._event_matches(event.model, event.rollout_id),
        )
        return self.observe_feedback(event.variant, event.version, up, event.occurred_at, in_rollout=matches)

    def _event_matches(self, model: str, rollout_id: str | None) -> bool:
        current = self.active
        if model != self.model or current is None:
            return False
        return rollout_id is None or rollout_id == current.rollout_id

    def _observed(
        self, variant: str | None, version: str, at: datetime
    ) -> tuple[RolloutState, Role, bool] | None:
        current = self.active
        live = current is not None and current.weight > 0
        if current is None or not (live or current.shadow) or aware(at) < current.started_at:
            return None
        role: Role
        if version == current.champion_version and variant in (None, "champion"):
            role = "champion"
        elif version == current.challenger_version and variant in _CHALLENGER_VARIANTS[current.shadow]:
            role = "challenger"
        else:
            return None
        return current, role, at >= current.step_started_at
