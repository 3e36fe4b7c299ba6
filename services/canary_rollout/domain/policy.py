"""The rollout policy: step schedule and the thresholds the analysis judges a challenger by.

Frozen, because a rollout snapshots the policy it started with (`RolloutState.policy`): a worker restarted
with a different configuration must not change the meaning of the step index or the thresholds of a
rollout that is already half-way through. New rollouts pick up the new policy.
"""

from __future__ import annotations

import itertools
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.shared.fields import count_field, positive_field, probability_field, share_field

DEFAULT_WEIGHTS: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0)
#: How a rollout judges its challenger: `sequential` (anytime-valid, see domain/sequential.py) or `fixed`
#: (one fixed-sample test per look on the step window; its error rates hold per look only).
AnalysisMode = Literal["sequential", "fixed"]
Spending = Literal["obrien_fleming", "pocock"]


class RolloutPolicy(BaseModel):
    """How fast traffic moves to the challenger and when the challenger counts as worse."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: tuple[float, ...] = Field(
        default=DEFAULT_WEIGHTS,
        description="Challenger traffic share in percent per step; strictly increasing, ends at 100.",
    )
    step_interval_s: float = positive_field(
        300.0, "Minimum time at a step before it may advance (exposure time).", zero_allowed=True
    )
    check_interval_s: float = positive_field(
        60.0,
        "Analysis runs at most this often; each run is one check (so failed checks count "
        "per interval, not per tick of the adapter).",
        zero_allowed=True,
    )
    min_samples_per_variant: int = count_field(
        200, "Inferences each variant needs in the step window before a verdict."
    )
    max_error_rate_delta: float = share_field(
        0.02, "Tolerated absolute increase of the challenger's error rate."
    )
    max_p95_latency_ratio: float = Field(
        default=1.25, ge=1, description="Tolerated ratio challenger p95 / champion p95."
    )
    max_p95_latency_delta_ms: float = positive_field(
        5.0,
        "Tolerated absolute p95 increase; a latency regression must exceed both the ratio and "
        "this delta (so 0.2 ms -> 0.3 ms on a fast model is not a regression).",
        zero_allowed=True,
    )
    min_thumbs_up_delta: float = share_field(
        0.05, "The challenger's thumbs-up rate may be worse than the champion's by at most this."
    )
    alpha: float = probability_field(0.05, "Significance level of the one-sided tests.")
    max_failed_checks: int = count_field(3, "Roll back once this many checks failed during the rollout.")
    min_feedback: int = count_field(30, "Ratings each variant needs before thumbs-up rates are compared.")
    require_feedback: bool = Field(
        default=False,
        description="When true, too little feedback means 'insufficient data' (hold); when false the "
        "thumbs-up check is skipped until enough feedback arrived.",
    )
    catastrophic_alpha: float = probability_field(0.001, "Significance level of the immediate-rollback rule.")
    catastrophic_error_rate_delta: float = Field(
        default=0.20,
        gt=0,
        le=1,
        description="Error-rate increase that rolls back at once (with p < catastrophic_alpha).",
    )
    catastrophic_min_samples: int = count_field(
        20, "Challenger inferences needed before the immediate-rollback rule applies."
    )
    analysis: AnalysisMode = Field(
        default="sequential",
        description="sequential: rollback and promotion decided by alpha-spending tests over the whole "
        "rollout, valid under any number of looks; fixed: the per-step checks counted by max_failed_checks.",
    )
    false_promotion_rate: float = probability_field(
        0.05,
        "Sequential: the chance of promoting a challenger worse by the margin (max_error_rate_delta, "
        "min_thumbs_up_delta) or more.",
    )
    sequential_horizon: int = count_field(
        4000,
        "Sequential: effective inferences per variant at which the tests have spent all their alpha; a "
        "challenger not shown non-inferior by then is rolled back as inconclusive.",
    )
    sequential_feedback_horizon: int = count_field(
        3000, "Sequential: the same horizon for ratings (thumbs-up rate)."
    )
    spending: Spending = Field(
        default="obrien_fleming",
        description="Alpha-spending function: obrien_fleming (strict early looks) or pocock (even).",
    )
    shadow_samples: int = count_field(
        200,
        "Shadow step before any live weight: mirrored challenger answers needed to judge it (0: no shadow "
        "step). A challenger that fails it never answers a user.",
        minimum=0,
    )
    shadow_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Share of champion requests mirrored during the shadow step (each costs the replica "
        "about one more prediction: `flywheel bench shadow`).",
    )
    min_shadow_agreement: float = share_field(
        0.5, "Shadow step: the least share of mirrored requests the challenger answers as the champion."
    )
    watch_s: float = positive_field(
        600.0,
        "After a promotion, how long the new champion is compared with the previous one (0: no watch); "
        "a regression moves champion back.",
        zero_allowed=True,
    )
    max_latency_samples: int = count_field(
        5000, "Latency samples kept per variant per step (reservoir sample).", minimum=10
    )

    @model_validator(mode="after")
    def _valid_schedule(self) -> Self:
        weights = self.weights
        if not weights:
            raise ValueError("weights must not be empty")
        if any(not 0 < w <= 100 for w in weights):
            raise ValueError("every weight must be in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError("weights must be strictly increasing")
        if weights[-1] != 100:
            raise ValueError("the last weight must be 100 (promotion happens after the 100 % step)")
        if len(weights) < 2:
            raise ValueError("at least one step below 100 % is needed: at 100 % the champion gets no traffic")
        return self

    @property
    def last_step(self) -> int:
        return len(self.weights) - 1
