"""Feedback per model, version and time window, as the feedback aggregation worker last summarised it.

The worker writes one summary per model to Redis with every batch it applies (totals and rates per
version, the windows of its rate window, the retraining trigger's verdict, the pending and last dataset
publication). This reads that summary and narrows it to a version and a start time; it never recomputes
anything, so what the API shows is what the trigger decided on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis
from pydantic import BaseModel, Field

from services.shared.feedback_summary import read_summary_sync
from services.shared.redis_store import RedisKeys


class FeedbackSummary(BaseModel):
    model: str
    updated_at: str | None = Field(description="When the worker last wrote the summary.")
    applied_events: int = Field(description="Inference and feedback events applied so far.")
    counts_since: str | None = Field(default=None, description="When the counts began (RFC 3339).")
    earlier_counts_lost: bool = Field(
        default=False, description="Counts from before `counts_since` were lost with Redis (came back empty)."
    )
    window_s: int | float = Field(description="Length of one window.")
    totals: dict[str, Any] = Field(description="All versions: requests, errors, thumbs up/down, corrections.")
    versions: dict[str, Any] = Field(description="version -> totals and windows (start, counts, rates).")
    trigger: dict[str, Any] = Field(description="The retraining trigger's last verdict and its metrics.")
    pending_publication: dict[str, Any] | None = None
    last_publication: dict[str, Any] | None = None


def _window_start(window: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(window["start"]).replace("Z", "+00:00"))


def read_feedback(
    client: redis.Redis,
    keys: RedisKeys,
    model: str,
    *,
    version: str | None = None,
    since: datetime | None = None,
) -> FeedbackSummary | None:
    """The model's summary (None before its first feedback or inference event was aggregated); only
    `version` when given, only windows starting at or after `since` when given."""
    summary = read_summary_sync(client, keys, model)
    if summary is None:
        return None
    versions: dict[str, Any] = summary.get("versions", {})
    if version is not None:
        versions = {v: s for v, s in versions.items() if v == version}
    if since is not None:
        versions = {
            v: {**s, "windows": [w for w in s.get("windows", []) if _window_start(w) >= since]}
            for v, s in versions.items()
        }
    return FeedbackSummary(
        model=model,
        updated_at=summary.get("updated_at"),
        applied_events=summary.get("applied_events", 0),
        counts_since=summary.get("counts_since"),
        earlier_counts_lost=bool(summary.get("earlier_counts_lost", False)),
        window_s=summary.get("window_s", 0),
        totals=summary.get("totals", {}),
        versions=versions,
        trigger=summary.get("trigger", {}),
        pending_publication=summary.get("pending_publication"),
        last_publication=summary.get("last_publication"),
    )
