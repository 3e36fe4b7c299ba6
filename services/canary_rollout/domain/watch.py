"""The post-promotion watch: a promoted version keeps being judged against the champion it replaced.

A canary sees a challenger for minutes on a share of the traffic; what breaks at full load, at another
time of day or on the next day's data shows up after promotion. For `watch_s` after a promotion, the new
champion's own traffic (everything served as `champion` by the promoted version) is compared with what
the previous champion recorded during the rollout (its totals, its latency sample), with the same rules
as the rollout: the catastrophic rule at once, then the anytime-valid harm tests of `sequential.py` with
their own alpha. A regression moves `champion` back to the previous version (`previous-champion` then
names the reverted one) and records a `reverted` decision with its evidence; a quiet window ends with
`watch_passed`. The alias stays the single source of truth: someone moving `champion` elsewhere ends the
watch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from events import CanaryDecisionKind as Kind
from services.canary_rollout.domain.analysis import Verdict, analyze
from services.canary_rollout.domain.commands import NOTHING, KeepPrevious, MoveAlias, Outcome
from services.canary_rollout.domain.decisions import ANALYSIS_ACTOR
from services.canary_rollout.domain.recording import record_decision
from services.canary_rollout.domain.sequential import SequentialAnalysis
from services.canary_rollout.domain.state import WatchState
from services.canary_rollout.domain.status import RolloutStatus


def check_watch(watch: WatchState, now: datetime) -> tuple[Outcome, bool]:
    """One check of the watch (at most every `check_interval_s`): (what to do, whether the watch ended)."""
    policy = watch.rollout.policy
    if (now - watch.last_check_at).total_seconds() < policy.check_interval_s and now < watch.until:
        return NOTHING, False
    watch.last_check_at = now
    analysis = analyze(watch.baseline, watch.current, policy)
    windows = (watch.baseline, watch.current)
    result = SequentialAnalysis(policy).look(watch.baseline, watch.current, windows, watch.looks)
    metrics = {**analysis.metrics(), "baseline": "previous_champion", "sequential": result.metrics()}
    if analysis.verdict is Verdict.CATASTROPHIC:
        return _revert(watch, now, f"after promotion: {analysis.reason}", metrics), True
    if result.harmful:
        reason = "; ".join(t.detail for t in result.harmful)
        previous = watch.rollout.champion_version
        return _revert(watch, now, f"after promotion, worse than v{previous}: {reason}", metrics), True
    if now >= watch.until:
        served = watch.current.requests
        reason = f"no regression in {policy.watch_s:.0f} s after promotion ({served} requests served)"
        record = record_decision(watch.rollout, Kind.WATCH_PASSED, now, reason, ANALYSIS_ACTOR, metrics)
        return Outcome((record,)), True
    return NOTHING, False


def _revert(watch: WatchState, now: datetime, reason: str, metrics: dict[str, Any]) -> Outcome:
    rollout = watch.rollout
    previous = rollout.champion_version
    assert previous is not None  # a promotion always had a champion to compare with
    rollout.status = RolloutStatus.REVERTED
    rollout.weight = 0.0
    return Outcome(
        (
            MoveAlias(rollout.model, "champion", previous),
            KeepPrevious(rollout.model, watch.version),
            record_decision(rollout, Kind.REVERTED, now, reason, ANALYSIS_ACTOR, metrics),
        )
    )
