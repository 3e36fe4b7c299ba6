"""Prometheus metrics of the canary rollout worker."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DECISIONS = Counter("flywheel_canary_decisions_total", "Rollout decisions", ["decision"])
OBSERVATIONS = Counter("flywheel_canary_observations_total", "Observations counted", ["kind"])
GUARDED = Counter("flywheel_canary_guarded_total", "Registry writes skipped: the registry changed since")
WEIGHT = Gauge("flywheel_canary_weight_percent", "Challenger traffic share", ["model"])
SPLITS_RESTORED = Counter(
    "flywheel_canary_splits_restored_total",
    "Traffic splits of running rollouts found gone (Redis came back empty) and set back",
)
LOST_ROLLOUTS_ENDED = Counter(
    "flywheel_canary_lost_rollouts_ended_total",
    "Rollouts whose state was lost (Redis came back empty under a restarted worker), ended: abort recorded",
)
