"""Challenger vs champion: three one-sided tests from scipy, turned into one verdict.

Checks (each asks "is the challenger *worse*?"):
- error rate: `scipy.stats.fisher_exact(alternative="greater")` on [[challenger errors, ok],
  [champion errors, ok]] - exact, so it stays valid for the small counts of the first steps.
- latency: `scipy.stats.mannwhitneyu(challenger, champion, alternative="greater")` on the latency samples,
  plus the p95 ratio and the p95 difference in ms.
- thumbs-up rate: `scipy.stats.fisher_exact(alternative="greater")` on [[challenger thumbs-down, up],
  [champion thumbs-down, up]]; only with at least `min_feedback` ratings per variant (skipped otherwise,
  or "insufficient data" when `require_feedback`).

A check fails only when the difference is both statistically significant (p < alpha) *and* larger than the
policy's tolerance: significance alone flags negligible differences once samples are large; the tolerance
alone flags noise while samples are small.

Verdicts:
- CATASTROPHIC: challenger error rate worse by >= `catastrophic_error_rate_delta` with
  p < `catastrophic_alpha`, once the challenger has `catastrophic_min_samples` inferences - evaluated even
  below `min_samples_per_variant`, because a broken model should not wait for 200 requests.
- INSUFFICIENT: either variant below `min_samples_per_variant` inferences in the window (hold; the
  rollout never advances or promotes on this verdict).
- FAIL: some check failed (with enough data).
- PASS: otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from scipy import stats

from services.canary_rollout.domain.policy import RolloutPolicy
from services.canary_rollout.domain.window import VariantWindow

#: Fewer successful samples than this on either side and the latency test is not run (skipped).
MIN_LATENCY_SAMPLES = 10


class Verdict(StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    INSUFFICIENT = "insufficient_data"
    FAIL = "fail"
    CATASTROPHIC = "catastrophic"


class CheckStatus(StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    """One comparison: the values it compared, its p-value and whether the challenger failed it."""

    name: str
    status: CheckStatus
    p_value: float | None = None
    champion: float | None = None
    challenger: float | None = None
    delta: float | None = None
    ratio: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "p_value": self.p_value,
            "champion": self.champion,
            "challenger": self.challenger,
            "delta": self.delta,
            "ratio": self.ratio,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Analysis:
    verdict: Verdict
    reason: str
    checks: dict[str, CheckResult] = field(default_factory=dict)
    champion: dict[str, Any] = field(default_factory=dict)
    challenger: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks.values() if c.status is CheckStatus.FAIL]

    def metrics(self) -> dict[str, Any]:
        """JSON-ready metrics for a decision record (`CanaryDecision.metrics`)."""
        return {
            "verdict": self.verdict.value,
            "champion": self.champion,
            "challenger": self.challenger,
            "checks": {name: c.as_dict() for name, c in self.checks.items()},
        }


def p95(samples: list[float]) -> float | None:
    return float(np.percentile(samples, 95)) if samples else None


def summarize(window: VariantWindow) -> dict[str, Any]:
    return {
        "requests": window.requests,
        "errors": window.errors,
        "error_rate": window.error_rate,
        "p95_latency_ms": p95(window.latencies_ms),
        "latency_samples": len(window.latencies_ms),
        "thumbs_up": window.thumbs_up,
        "thumbs_down": window.thumbs_down,
        "thumbs_up_rate": window.thumbs_up_rate,
    }


def _worse_share(
    name: str,
    bad: tuple[int, int],
    total: tuple[int, int],
    tolerance: float,
    label: str,
    policy: RolloutPolicy,
) -> CheckResult:
    """One-sided Fisher exact test: is the challenger's share of bad outcomes (errors, thumbs down)
    greater than the champion's, by more than `tolerance`? `bad`/`total` are (challenger, champion)."""
    (ch_bad, cp_bad), (ch_n, cp_n) = bad, total
    table = [[ch_bad, ch_n - ch_bad], [cp_bad, cp_n - cp_bad]]
    p = float(stats.fisher_exact(table, alternative="greater").pvalue)
    ch_rate, cp_rate = ch_bad / ch_n, cp_bad / cp_n
    delta = ch_rate - cp_rate
    failed = p < policy.alpha and delta > tolerance
    return CheckResult(
        name,
        CheckStatus.FAIL if failed else CheckStatus.PASS,
        p_value=p,
        champion=cp_rate,
        challenger=ch_rate,
        delta=delta,
        detail=f"{label} {ch_rate:.4f} vs {cp_rate:.4f} (p={p:.3g}, tolerance +{tolerance})",
    )


def error_rate_check(
    champion: VariantWindow, challenger: VariantWindow, policy: RolloutPolicy
) -> CheckResult:
    if champion.requests == 0 or challenger.requests == 0:
        return CheckResult("error_rate", CheckStatus.SKIPPED, detail="no inferences on one side")
    return _worse_share(
        "error_rate",
        (challenger.errors, champion.errors),
        (challenger.requests, champion.requests),
        policy.max_error_rate_delta,
        "error rate",
        policy,
    )


def latency_check(champion: VariantWindow, challenger: VariantWindow, policy: RolloutPolicy) -> CheckResult:
    ch, cp = challenger.latencies_ms, champion.latencies_ms
    if len(ch) < MIN_LATENCY_SAMPLES or len(cp) < MIN_LATENCY_SAMPLES:
        return CheckResult("latency", CheckStatus.SKIPPED, detail="too few latency samples")
    p = float(stats.mannwhitneyu(ch, cp, alternative="greater").pvalue)
    ch_p95, cp_p95 = p95(ch), p95(cp)
    assert ch_p95 is not None and cp_p95 is not None
    delta = ch_p95 - cp_p95
    # A zero champion p95 has no meaningful ratio; the absolute delta decides alone then.
    ratio = ch_p95 / cp_p95 if cp_p95 > 0 else None
    ratio_exceeded = ratio > policy.max_p95_latency_ratio if ratio is not None else delta > 0
    failed = p < policy.alpha and ratio_exceeded and delta > policy.max_p95_latency_delta_ms
    return CheckResult(
        "latency",
        CheckStatus.FAIL if failed else CheckStatus.PASS,
        p_value=p,
        champion=cp_p95,
        challenger=ch_p95,
        delta=delta,
        ratio=ratio,
        detail=f"p95 {ch_p95:.1f} ms vs {cp_p95:.1f} ms (p={p:.3g}, "
        f"tolerance x{policy.max_p95_latency_ratio} and +{policy.max_p95_latency_delta_ms} ms)",
    )


def thumbs_up_check(champion: VariantWindow, challenger: VariantWindow, policy: RolloutPolicy) -> CheckResult:
    """Thumbs-up rate, tested as its complement: the challenger's share of thumbs down is not greater."""
    if champion.feedback < policy.min_feedback or challenger.feedback < policy.min_feedback:
        return CheckResult(
            "thumbs_up",
            CheckStatus.SKIPPED,
            detail=f"feedback {challenger.feedback}/{champion.feedback} < {policy.min_feedback} per variant",
        )
    down = _worse_share(
        "thumbs_up",
        (challenger.thumbs_down, champion.thumbs_down),
        (challenger.feedback, champion.feedback),
        policy.min_thumbs_up_delta,
        "thumbs-down",
        policy,
    )
    ch_rate, cp_rate = challenger.thumbs_up / challenger.feedback, champion.thumbs_up / champion.feedback
    return CheckResult(
        "thumbs_up",
        down.status,
        p_value=down.p_value,
        champion=cp_rate,
        challenger=ch_rate,
        delta=cp_rate - ch_rate,
        detail=f"thumbs-up {ch_rate:.3f} vs {cp_rate:.3f} "
        f"(p={down.p_value:.3g}, tolerance -{policy.min_thumbs_up_delta})",
    )


def is_catastrophic(check: CheckResult, challenger: VariantWindow, policy: RolloutPolicy) -> bool:
    return (
        check.status is not CheckStatus.SKIPPED
        and challenger.requests >= policy.catastrophic_min_samples
        and check.p_value is not None
        and check.delta is not None
        and check.p_value < policy.catastrophic_alpha
        and check.delta >= policy.catastrophic_error_rate_delta
    )


def analyze(champion: VariantWindow, challenger: VariantWindow, policy: RolloutPolicy) -> Analysis:
    """The verdict on one pair of windows (see the module docstring for the rules)."""
    checks = {
        "error_rate": error_rate_check(champion, challenger, policy),
        "latency": latency_check(champion, challenger, policy),
        "thumbs_up": thumbs_up_check(champion, challenger, policy),
    }
    summaries = {"champion": summarize(champion), "challenger": summarize(challenger)}

    def result(verdict: Verdict, reason: str) -> Analysis:
        return Analysis(verdict, reason, checks, **summaries)

    if is_catastrophic(checks["error_rate"], challenger, policy):
        return result(Verdict.CATASTROPHIC, f"catastrophic error rate: {checks['error_rate'].detail}")
    need = policy.min_samples_per_variant
    if champion.requests < need or challenger.requests < need:
        return result(
            Verdict.INSUFFICIENT,
            f"insufficient data: {challenger.requests} challenger / {champion.requests} champion inferences "
            f"(need {need} each)",
        )
    if policy.require_feedback and checks["thumbs_up"].status is CheckStatus.SKIPPED:
        return result(Verdict.INSUFFICIENT, f"insufficient feedback: {checks['thumbs_up'].detail}")
    failed = [c for c in checks.values() if c.status is CheckStatus.FAIL]
    if failed:
        return result(Verdict.FAIL, "; ".join(f"{c.name} worse: {c.detail}" for c in failed))
    return result(
        Verdict.PASS,
        "challenger not worse on "
        + ", ".join(name for name, c in checks.items() if c.status is CheckStatus.PASS),
    )
