"""The traffic split of a canary rollout: written by the canary rollout service, read by gateways.

`traffic_split(model)` in Redis holds one `TrafficSplit` JSON. A gateway routes a request to the
challenger when `choose_variant(rollout_id, routing_key, weight)` says so; weight 0 or no key means
everything goes to the champion. Both sides must agree on the variant of a routing key, so the choice
is part of the contract, here (pure).

Sticky weighted routing: each (rollout id, routing key) pair hashes to a fixed bucket in 0..9999; the
challenger gets the buckets below `weight * 100`. Consequences:
- sticky: the same user always lands on the same variant for a given rollout and weight;
- monotonic: raising the weight only adds buckets, so a user on the challenger at weight w stays on it at
  every w' > w (nobody flips back and forth while the rollout advances);
- the challenger share converges to the weight (sha256 is uniform over the buckets);
- a new rollout id reshuffles users, so one unlucky cohort is not the canary for every rollout.
Weights have a resolution of 0.01 %.

Shadow step: before any live weight, `shadow_share` of the champion's requests (a uniform sample by
request id) are answered by the champion as usual and mirrored to the challenger after the answer left;
the challenger's answer is only compared, never returned.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class TrafficSplit(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str
    rollout_id: str
    weight: float = Field(ge=0, le=100, description="Challenger share in percent.")
    champion_version: str | None = None
    challenger_version: str | None = None
    shadow_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of champion requests mirrored to the challenger, off the request path (shadow).",
    )
    updated_at: datetime


def mirrored(rollout_id: str, request_id: str, share: float) -> bool:
    """Whether a champion request is mirrored to the challenger: a uniform sample by request id."""
    return share > 0 and bucket(rollout_id, "shadow:" + request_id) < round(share * BUCKETS)
