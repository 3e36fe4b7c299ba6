"""Anytime-valid analysis: error rates that hold however often a rollout looks at its data.

A rollout checks its challenger every `check_interval_s`, dozens of times. A test run at level alpha on
every look rolls back an *equal* challenger far more often than alpha (each look is another chance of a
false alarm), and "not significantly worse" at the last look promotes a clearly worse challenger whenever
samples are few. Two sequential tests replace that, each over the rollout's cumulative counts:

- **harm** (may roll back): H0 "the challenger is not worse" on the error rate, the thumbs-down rate and
  latency. Rejected only with p below the level this look may spend *and* a difference beyond the
  policy's tolerance (the old rule: significance alone flags negligible differences).
  P(false rollback of an equal challenger) <= `alpha`, split evenly over the three checks.
- **non-inferiority** (needed to promote): H0 "the challenger is worse by at least the margin"
  (`max_error_rate_delta`, `min_thumbs_up_delta`) on the error rate and the thumbs-down rate. Promotion
  needs it rejected for every rate that is compared, so P(promoting a challenger worse by the margin or
  more) <= `false_promotion_rate`.

Repeated looks are paid for by **alpha spending** (Lan-DeMets): a spending function f(t) of the
information fraction t (cumulative effective samples / the policy's horizon) says how much of a test's
level may be used up by t, and a look may use what f grew since that test's previous look. The levels of
all looks sum to at most the total, so by the union bound the error rate holds for any number and timing
of looks, whatever the correlation between them. (That is conservative: exact group-sequential
boundaries need a fixed look schedule, which a time-driven canary does not have.) The p-values come from
statsmodels (score test for two independent proportions, with a margin) and scipy (Mann-Whitney U), the
spending function from scipy's normal distribution.

Information: the effective sample size 2 / (1/n_champion + 1/n_challenger) (the harmonic mean, so an
unbalanced 5 %/95 % split counts for what it is worth), over `sequential_horizon` inferences or
`sequential_feedback_horizon` ratings. A test looks again only once its information grew by
`INFORMATION_STEP` (a rollout checks every `check_interval_s`; the tests run at information milestones,
so a short check interval does not split alpha into crumbs). A test whose alpha is spent (t = 1) can
decide nothing more: a challenger not shown non-inferior by then is rolled back as inconclusive.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy import special, stats
from statsmodels.stats.proportion import test_proportions_2indep

from services.canary_rollout.domain.analysis import p95
from services.canary_rollout.domain.policy import RolloutPolicy, Spending
from services.canary_rollout.domain.window import Counts, VariantWindow

HARM_CHECKS = ("error_rate", "latency", "thumbs_up")
#: A test looks again only once its information fraction grew by this much (or reached 1): however often
#: the rollout checks, each test has at most ~1/INFORMATION_STEP looks, each with a usable share of alpha.
INFORMATION_STEP = 0.1
#: Fewer successful latency samples than this on either side and the latency harm test is not run.
MIN_LATENCY_SAMPLES = 10


def spent(alpha: float, t: float, kind: Spending = "obrien_fleming") -> float:
    """Lan-DeMets spending function: the share of `alpha` that may be used up by information fraction t.

    O'Brien-Fleming-type keeps early looks strict (little is known yet) and leaves most of alpha for the
    end; Pocock-type spends it evenly, to react earlier at the price of a stricter end.
    """
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    if kind == "pocock":
        return alpha * math.log(1 + (math.e - 1) * t)
    # 2 * (1 - Phi(z_{1-alpha/2} / sqrt(t))), with scipy's normal cdf and its inverse as plain ufuncs.
    return float(2 * special.ndtr(-special.ndtri(1 - alpha / 2) / math.sqrt(t)))


def effective_samples(a: int, b: int) -> float:
    """Harmonic-mean sample size of two arms: grows with either arm, weighs the smaller one most."""
    return 0.0 if a <= 0 or b <= 0 else 2.0 / (1.0 / a + 1.0 / b)


class SequentialLooks(BaseModel):
    """What a rollout's sequential tests have used up so far (persisted with the rollout)."""

    looks: int = 0
    spent_at: dict[str, float] = Field(
        default_factory=dict, description="Per test, the information fraction of its last look."
    )
    non_inferior: dict[str, int] = Field(
        default_factory=dict,
        description="Tests whose non-inferiority was shown, with the effective samples it took "
        "(a rejected null stays rejected).",
    )


@dataclass(frozen=True)
class SequentialTest:
    """One test at one look: its p-value, the level this look could spend and the decision."""

    name: str
    kind: Literal["harm", "non_inferiority"]
    information: float
    level: float
    p_value: float | None
    delta: float | None
    rejected: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "information": round(self.information, 4),
            "level": self.level,
            "p_value": self.p_value,
            "delta": self.delta,
            "rejected": self.rejected,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class SequentialResult:
    harm: list[SequentialTest] = field(default_factory=list)
    non_inferiority: list[SequentialTest] = field(default_factory=list)
    #: Rates that must be shown non-inferior before promotion, and those shown so far.
    required: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()
    exhausted: tuple[str, ...] = ()

    @property
    def harmful(self) -> list[SequentialTest]:
        return [t for t in self.harm if t.rejected]

    @property
    def promotable(self) -> bool:
        return all(name in self.shown for name in self.required)

    @property
    def inconclusive(self) -> bool:
        """A required rate can no longer be shown non-inferior: its alpha is spent."""
        return any(name in self.exhausted and name not in self.shown for name in self.required)

    def metrics(self) -> dict[str, Any]:
        return {
            "harm": {t.name: t.as_dict() for t in self.harm},
            "non_inferiority": {t.name: t.as_dict() for t in self.non_inferiority},
            "required": list(self.required),
            "shown": list(self.shown),
        }


def _p_larger(bad: tuple[int, int], total: tuple[int, int], value: float, alternative: str) -> float:
    """p-value of the score test on (challenger rate - champion rate) against `value`."""
    # A 0/0 rate inside statsmodels (it also reports ratios) warns; the difference it tests is defined.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        result = test_proportions_2indep(
            bad[0],
            total[0],
            bad[1],
            total[1],
            value=value,
            compare="diff",
            alternative=alternative,
            method="score",
        )
    p = float(result.pvalue)
    return 1.0 if math.isnan(p) else p


class SequentialAnalysis:
    """One look of a rollout: which tests ran at which level, and what they decided."""

    def __init__(self, policy: RolloutPolicy):
        self.policy = policy

    def look(
        self,
        champion: Counts,
        challenger: Counts,
        latencies: tuple[VariantWindow, VariantWindow] | None,
        looks: SequentialLooks,
    ) -> SequentialResult:
        """Run the tests due at this look; updates `looks` (what was spent, what was shown)."""
        policy = self.policy
        looks.looks += 1
        harm_alpha = policy.alpha / len(HARM_CHECKS)
        n_eff = effective_samples(champion.requests, challenger.requests)
        f_eff = effective_samples(champion.feedback, challenger.feedback)
        t_req = n_eff / policy.sequential_horizon
        t_fb = f_eff / policy.sequential_feedback_horizon
        rates: dict[str, tuple[tuple[int, int], tuple[int, int], float, float]] = {}
        if champion.requests and challenger.requests:
            rates["error_rate"] = (
                (challenger.errors, champion.errors),
                (challenger.requests, champion.requests),
                policy.max_error_rate_delta,
                t_req,
            )
        feedback_compared = min(champion.feedback, challenger.feedback) >= policy.min_feedback
        if feedback_compared:
            rates["thumbs_up"] = (
                (challenger.thumbs_down, champion.thumbs_down),
                (challenger.feedback, champion.feedback),
                policy.min_thumbs_up_delta,
                t_fb,
            )
        harm: list[SequentialTest] = []
        ni: list[SequentialTest] = []
        for name, (bad, total, margin, t) in rates.items():
            level = self._spend(looks, f"harm:{name}", harm_alpha, t)
            harm.append(self._harm_rate(name, bad, total, margin, t, level))
            if name not in looks.non_inferior:
                level = self._spend(looks, f"ni:{name}", policy.false_promotion_rate, t)
                test = self._non_inferior(name, bad, total, margin, t, level)
                ni.append(test)
                if test.rejected:
                    looks.non_inferior[name] = round(effective_samples(*total))
        if latencies is not None:
            latency = self._harm_latency(latencies, looks, harm_alpha, t_req)
            if latency is not None:
                harm.append(latency)
        required = ["error_rate"]
        if feedback_compared or policy.require_feedback:
            required.append("thumbs_up")
        exhausted = tuple(name for name in required if looks.spent_at.get(f"ni:{name}", 0.0) >= 1.0)
        return SequentialResult(harm, ni, tuple(required), tuple(looks.non_inferior), exhausted)

    def _spend(self, looks: SequentialLooks, key: str, alpha: float, t: float) -> float:
        """The level this look may use: what the spending function grew since the test's last look."""
        t = min(t, 1.0)
        before = looks.spent_at.get(key, 0.0)
        if t <= before or (t < 1.0 and t - before < INFORMATION_STEP):
            return 0.0
        looks.spent_at[key] = t
        kind = self.policy.spending
        return max(0.0, spent(alpha, t, kind) - spent(alpha, before, kind))

    @staticmethod
    def _harm_rate(
        name: str, bad: tuple[int, int], total: tuple[int, int], tolerance: float, t: float, level: float
    ) -> SequentialTest:
        delta = bad[0] / total[0] - bad[1] / total[1]
        p = _p_larger(bad, total, 0.0, "larger") if level > 0 else None
        rejected = p is not None and p < level and delta > tolerance
        return SequentialTest(
            name,
            "harm",
            t,
            level,
            p,
            delta,
            rejected,
            f"{name}: challenger worse by {delta:+.4f} (tolerance {tolerance}), "
            f"p={_fmt(p)} vs level {level:.3g}",
        )

    @staticmethod
    def _non_inferior(
        name: str, bad: tuple[int, int], total: tuple[int, int], margin: float, t: float, level: float
    ) -> SequentialTest:
        delta = bad[0] / total[0] - bad[1] / total[1]
        p = _p_larger(bad, total, margin, "smaller") if level > 0 else None
        rejected = p is not None and p < level
        return SequentialTest(
            name,
            "non_inferiority",
            t,
            level,
            p,
            delta,
            rejected,
            f"{name}: worse by less than {margin}? difference {delta:+.4f}, p={_fmt(p)} vs level {level:.3g}",
        )

    def _harm_latency(
        self, windows: tuple[VariantWindow, VariantWindow], looks: SequentialLooks, alpha: float, t: float
    ) -> SequentialTest | None:
        champion, challenger = windows
        ch, cp = challenger.latencies_ms, champion.latencies_ms
        if len(ch) < MIN_LATENCY_SAMPLES or len(cp) < MIN_LATENCY_SAMPLES:
            return None
        policy = self.policy
        level = self._spend(looks, "harm:latency", alpha, t)
        ch_p95, cp_p95 = p95(ch) or 0.0, p95(cp) or 0.0
        delta = ch_p95 - cp_p95
        ratio_exceeded = ch_p95 > cp_p95 * policy.max_p95_latency_ratio if cp_p95 > 0 else delta > 0
        p = float(stats.mannwhitneyu(ch, cp, alternative="greater").pvalue) if level > 0 else None
        rejected = p is not None and p < level and ratio_exceeded and delta > policy.max_p95_latency_delta_ms
        return SequentialTest(
            "latency",
            "harm",
            t,
            level,
            p,
            delta,
            rejected,
            f"latency: p95 {ch_p95:.1f} vs {cp_p95:.1f} ms, p={_fmt(p)} vs level {level:.3g}",
        )


def _fmt(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"
