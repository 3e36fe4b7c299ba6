"""One check of a running rollout turned into what to do next: hold, advance, promote or roll back.

The machine calls `judge` at most once per `check_interval_s`; it only acts on the verdict. Two modes
(`RolloutPolicy.analysis`):

- **sequential** (default): the catastrophic rule first (a broken model is rolled back at once, on the
  step window); then the anytime-valid tests of `sequential.py` over the whole rollout: harm shown ->
  ROLLBACK; the step needs `min_samples_per_variant` and its interval before it advances; after the last
  step, PROMOTE only once non-inferiority is shown for every compared rate, ROLLBACK when that can no
  longer be shown (alpha spent: inconclusive), HOLD otherwise.
- **shadow step** (first, when `shadow_samples` > 0): the catastrophic rule, then one comparison of the
  mirrored answers once there are `shadow_samples` of them (`_shadow`).
- **fixed**: one fixed-sample test per look on the step window (`analysis.py`); a failed check counts, and
  `max_failed_checks` of them roll back. Its error rates hold per look, not per rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from services.canary_rollout.domain.analysis import Analysis, Verdict, analyze
from services.canary_rollout.domain.sequential import SequentialAnalysis
from services.canary_rollout.domain.state import RolloutState

Action = Literal["hold", "advance", "promote", "rollback", "go_live"]


@dataclass(frozen=True)
class Judgement:
    action: Action
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    analysis: Analysis | None = None


def judge(rollout: RolloutState, now: datetime) -> Judgement:
    """Run one check of `rollout` (mutates its failed-check count and sequential looks)."""
    policy = rollout.policy
    baseline, champion = "step", rollout.champion
    if rollout.weight >= 100 and rollout.champion_baseline is not None:
        baseline, champion = "previous_step", rollout.champion_baseline
    analysis = analyze(champion, rollout.challenger, policy)
    metrics: dict[str, Any] = {**analysis.metrics(), "baseline": baseline}
    if analysis.verdict is Verdict.CATASTROPHIC:
        reason = f"failed the shadow step: {analysis.reason}" if rollout.shadow else analysis.reason
        return Judgement("rollback", reason, metrics, analysis)
    if rollout.shadow:
        return _shadow(rollout, analysis, metrics)
    if policy.analysis == "sequential":
        return _sequential(rollout, now, analysis, champion, metrics)
    return _fixed(rollout, now, analysis, metrics)


def _shadow(rollout: RolloutState, analysis: Analysis, metrics: dict[str, Any]) -> Judgement:
    """The shadow step: once `shadow_samples` mirrored answers are in, one comparison (errors, latency,
    agreement with the champion's outputs) decides: go live, or roll back before any user saw it."""
    policy, challenger = rollout.policy, rollout.challenger
    agreement = challenger.agreement
    metrics = {**metrics, "shadow": {"compared": challenger.compared, "agreement": agreement}}
    if challenger.requests < policy.shadow_samples:
        reason = f"shadow step: {challenger.requests}/{policy.shadow_samples} mirrored answers"
        return Judgement("hold", reason, metrics, analysis)
    problems = [f"{c.name} worse: {c.detail}" for c in analysis.failed if c.name != "thumbs_up"]
    if agreement is not None and agreement < policy.min_shadow_agreement:
        problems.append(f"agrees with the champion on {agreement:.0%} (< {policy.min_shadow_agreement:.0%})")
    if problems:
        return Judgement("rollback", "failed the shadow step: " + "; ".join(problems), metrics, analysis)
    agreed = f"agreement {agreement:.0%}, " if agreement is not None else ""
    reason = f"{challenger.requests} mirrored answers, {agreed}error rate {challenger.error_rate or 0:.2%}"
    return Judgement("go_live", reason, metrics, analysis)


def _fixed(rollout: RolloutState, now: datetime, analysis: Analysis, metrics: dict[str, Any]) -> Judgement:
    policy = rollout.policy
    if analysis.verdict is Verdict.FAIL:
        rollout.failed_checks += 1
        count = f"{rollout.failed_checks}/{policy.max_failed_checks} failed checks"
        if rollout.failed_checks >= policy.max_failed_checks:
            return Judgement("rollback", f"{count}: {analysis.reason}", metrics, analysis)
        return Judgement("hold", f"check failed ({count}): {analysis.reason}", metrics, analysis)
    if analysis.verdict is Verdict.INSUFFICIENT:
        return Judgement("hold", analysis.reason, metrics, analysis)
    return _after_interval(rollout, now, analysis.reason, metrics, analysis, promotable=True)


def _sequential(
    rollout: RolloutState,
    now: datetime,
    analysis: Analysis,
    champion_window: Any,
    metrics: dict[str, Any],
) -> Judgement:
    result = SequentialAnalysis(rollout.policy).look(
        rollout.champion_total,
        rollout.challenger_total,
        (champion_window, rollout.challenger),
        rollout.looks,
    )
    metrics = {**metrics, "sequential": result.metrics()}
    if result.harmful:
        reason = "; ".join(f"worse: {t.detail}" for t in result.harmful)
        return Judgement("rollback", f"sequential test: {reason}", metrics, analysis)
    if analysis.verdict is Verdict.INSUFFICIENT:
        return Judgement("hold", analysis.reason, metrics, analysis)
    last = rollout.step >= rollout.policy.last_step
    if last and result.inconclusive:
        missing = [name for name in result.required if name not in result.shown]
        return Judgement(
            "rollback",
            f"inconclusive: {', '.join(missing)} not shown within the margin by the horizon "
            f"({rollout.policy.sequential_horizon} inferences, "
            f"{rollout.policy.sequential_feedback_horizon} ratings)",
            metrics,
            analysis,
        )
    reason = "no harm shown"
    if last:
        shown = ", ".join(result.shown) or "nothing yet"
        reason = f"no harm shown; non-inferior: {shown} (required: {', '.join(result.required)})"
    return _after_interval(rollout, now, reason, metrics, analysis, promotable=result.promotable)


def _after_interval(
    rollout: RolloutState,
    now: datetime,
    reason: str,
    metrics: dict[str, Any],
    analysis: Analysis,
    *,
    promotable: bool,
) -> Judgement:
    """Checks pass: advance once the step interval elapsed; after the last step promote if `promotable`."""
    policy = rollout.policy
    elapsed = (now - rollout.step_started_at).total_seconds()
    if elapsed < policy.step_interval_s:
        return Judgement(
            "hold",
            f"checks pass; step interval not elapsed ({elapsed:.0f} of {policy.step_interval_s:.0f} s)",
            metrics,
            analysis,
        )
    if rollout.step < policy.last_step:
        return Judgement("advance", reason, metrics, analysis)
    if promotable:
        return Judgement("promote", f"last step passed: {reason}", metrics, analysis)
    return Judgement("hold", f"last step: waiting for evidence ({reason})", metrics, analysis)
