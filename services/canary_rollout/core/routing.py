"""Sticky weighted routing between champion and challenger (pure; used by the gateway).

Each (rollout id, routing key) pair hashes to a fixed bucket in 0..9999; the challenger gets the buckets
below `weight * 100`. Consequences:
- sticky: the same user always lands on the same variant for a given rollout and weight;
- monotonic: raising the weight only adds buckets, so a user on the challenger at weight w stays on it at
  every w' > w (nobody flips back and forth while the rollout advances);
- the challenger share converges to the weight (sha256 is uniform over the buckets);
- a new rollout id reshuffles users, so one unlucky cohort is not the canary for every rollout.
Weights have a resolution of 0.01 %.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

BUCKETS = 10_000

Variant = Literal["champion", "challenger"]


def bucket(rollout_id: str, routing_key: str) -> int:
    """The stable bucket (0..9999) of a routing key within a rollout."""
    digest = hashlib.sha256(f"{rollout_id}:{routing_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def choose_variant(rollout_id: str, routing_key: str, weight_percent: float) -> Variant:
    """Which variant serves `routing_key` when the challenger gets `weight_percent` % of the traffic."""
    if math.isnan(weight_percent) or not 0 <= weight_percent <= 100:
        raise ValueError(f"weight_percent must be within [0, 100], got {weight_percent!r}")
    threshold = round(weight_percent * BUCKETS / 100)
    return "challenger" if bucket(rollout_id, routing_key) < threshold else "champion"
