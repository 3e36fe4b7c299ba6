"""The rollout policy the canary tests share: every check at once, small evidence horizons."""

from __future__ import annotations

from services.canary_rollout.domain.policy import RolloutPolicy

FAST = RolloutPolicy(
    step_interval_s=60,
    check_interval_s=0,
    min_samples_per_variant=50,
    min_feedback=20,
    max_failed_checks=3,
    max_latency_samples=1000,
    sequential_horizon=400,
    sequential_feedback_horizon=200,
    shadow_samples=0,  # the shadow step has tests of its own (SHADOW)
)
