"""When enough feedback signal has accumulated to train the next version of a model.

Two triggers, checked in this order (corrections first: they come with a dataset to train on):
- `corrections`: at least `min_corrections` corrections arrived since the last trigger. Counted as the
  difference between the cumulative corrections now and at the last trigger, so a trigger consumes
  exactly the corrections it was based on.
- `thumbs_down_rate`: over the last `rate_window_s` (but not before the last trigger, so one bad hour
  cannot fire twice) the thumbs-down share of rated predictions is above `max_thumbs_down_rate`, with at
  least `min_rated` ratings (three thumbs down out of four is noise, not a trend).
A `cooldown_s` after each trigger suppresses both: retraining takes time, and requests fired while one
is running would train on nearly the same data.

`decide` is pure; `TriggerState` is the only memory (JSON-serialisable, one per model), advanced by
`after` only when the RetrainingRequested was actually sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from events import RetrainingRequested
from services.feedback_aggregation.domain.aggregates import AggregateConfig, AggregateState
from services.shared.jsontext import epoch_us, parse_rfc3339, rfc3339

Verdict = Literal["corrections", "thumbs_down_rate", "cooldown", "insufficient_samples", "below_threshold"]


@dataclass(frozen=True)
class TriggerPolicy:
    min_corrections: int = 50
    max_thumbs_down_rate: float = 0.3
    min_rated: int = 20
    rate_window_s: int = 3600
    cooldown_s: int = 3600

    def __post_init__(self) -> None:
        if self.min_corrections < 1 or self.min_rated < 1 or not 0 <= self.max_thumbs_down_rate < 1:
            raise ValueError("need min_corrections >= 1, min_rated >= 1 and 0 <= max_thumbs_down_rate < 1")


@dataclass(frozen=True)
class TriggerState:
    """What the policy remembers about a model between decisions."""

    last_triggered_at: datetime | None = None
    corrections_at_last_trigger: int = 0

    def to_json(self) -> dict[str, Any]:
        at = self.last_triggered_at
        return {
            "last_triggered_at": rfc3339(at) if at else None,
            "corrections_at_last_trigger": self.corrections_at_last_trigger,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TriggerState:
        at = data.get("last_triggered_at")
        return cls(parse_rfc3339(at) if at else None, int(data.get("corrections_at_last_trigger", 0)))


@dataclass(frozen=True)
class FeedbackSignal:
    """The numbers a decision is based on: cumulative corrections, and ratings in the rate window."""

    corrections_total: int
    thumbs_down: int
    rated: int


@dataclass(frozen=True)
class TriggerDecision:
    fire: bool
    verdict: Verdict
    explanation: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_event(
        self,
        model: str,
        producer: str,
        *,
        base_version: str | None = None,
        dataset_name: str | None = None,
        dataset_version: int | None = None,
        dataset_run_id: str | None = None,
    ) -> RetrainingRequested:
        if not self.fire or self.verdict not in ("corrections", "thumbs_down_rate"):
            raise ValueError(f"no retraining request for a decision that did not fire ({self.verdict})")
        reason: Literal["corrections", "thumbs_down_rate"] = (
            "corrections" if self.verdict == "corrections" else "thumbs_down_rate"
        )
        return RetrainingRequested(
            producer=producer,
            model=model,
            reason=reason,
            base_version=base_version,
            dataset_name=dataset_name,
            dataset_version=dataset_version,
            dataset_run_id=dataset_run_id,
            metrics=self.metrics,
        )


def rate_window_start(policy: TriggerPolicy, state: TriggerState, now: datetime) -> datetime:
    """Start of the thumbs-down rate window: `rate_window_s` back, but not before the last trigger."""
    start = now - timedelta(seconds=policy.rate_window_s)
    if state.last_triggered_at is not None and state.last_triggered_at > start:
        return state.last_triggered_at
    return start


def signal_from(states: Iterable[AggregateState], config: AggregateConfig, since: datetime) -> FeedbackSignal:
    """Sum one model's (model, version) aggregates: all corrections, and ratings of windows from `since`.

    Windows are counted whole; the first one is the window *after* the one containing `since`
    (a partial window would include ratings from before the last trigger).
    """
    first = config.window_of(since)
    if first * 1_000_000 < epoch_us(since):
        first += config.window_s
    corrections = down = rated = 0
    for state in states:  # summed without a `Counts` per state: this runs after every applied event
        corrections += state.totals.corrections
        for start, counts in state.windows.items():
            if start >= first:
                down += counts.thumbs_down
                rated += counts.thumbs_up + counts.thumbs_down
    return FeedbackSignal(corrections_total=corrections, thumbs_down=down, rated=rated)


def decide(
    policy: TriggerPolicy, state: TriggerState, signal: FeedbackSignal, now: datetime
) -> TriggerDecision:
    new_corrections = max(0, signal.corrections_total - state.corrections_at_last_trigger)
    rate = signal.thumbs_down / signal.rated if signal.rated else 0.0
    metrics: dict[str, float] = {
        "new_corrections": float(new_corrections),
        "min_corrections": float(policy.min_corrections),
        "thumbs_down": float(signal.thumbs_down),
        "rated": float(signal.rated),
        "thumbs_down_rate": rate,
        "max_thumbs_down_rate": policy.max_thumbs_down_rate,
        "min_rated": float(policy.min_rated),
        "rate_window_s": float(policy.rate_window_s),
    }
    if state.last_triggered_at is not None:
        remaining = policy.cooldown_s - (now - state.last_triggered_at).total_seconds()
        if remaining > 0:
            metrics["cooldown_remaining_s"] = remaining
            return TriggerDecision(False, "cooldown", f"cooldown: {remaining:.0f}s left", metrics)
    if new_corrections >= policy.min_corrections:
        text = f"{new_corrections} new corrections >= {policy.min_corrections}"
        return TriggerDecision(True, "corrections", text, metrics)
    if signal.rated < policy.min_rated:
        text = f"{signal.rated} ratings in the window < {policy.min_rated} needed for a rate"
        return TriggerDecision(False, "insufficient_samples", text, metrics)
    if rate > policy.max_thumbs_down_rate:
        text = f"thumbs-down rate {rate:.1%} of {signal.rated} > {policy.max_thumbs_down_rate:.1%}"
        return TriggerDecision(True, "thumbs_down_rate", text, metrics)
    text = (
        f"{new_corrections}/{policy.min_corrections} corrections, "
        f"thumbs-down rate {rate:.1%} <= {policy.max_thumbs_down_rate:.1%}"
    )
    return TriggerDecision(False, "below_threshold", text, metrics)


def after(
    state: TriggerState, decision: TriggerDecision, signal: FeedbackSignal, now: datetime
) -> TriggerState:
    """The state once the decision's request was sent (unchanged when it did not fire)."""
    if not decision.fire:
        return state
    return TriggerState(last_triggered_at=now, corrections_at_last_trigger=signal.corrections_total)
