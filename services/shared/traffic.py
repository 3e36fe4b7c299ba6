"""The traffic split of a canary rollout in Redis: written by the canary rollout service, read by gateways.

`traffic_split(model)` holds one `TrafficSplit` JSON. A gateway routes a request to the challenger when
`choose_variant(rollout_id, routing_key, weight)` says so (sticky per user, see
`services.canary_rollout.core.routing`); weight 0 or no key means everything goes to the champion.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class TrafficSplit(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str
    rollout_id: str
    weight: float = Field(ge=0, le=100, description="Challenger share in percent.")
    champion_version: str | None = None
    challenger_version: str | None = None
    updated_at: datetime
