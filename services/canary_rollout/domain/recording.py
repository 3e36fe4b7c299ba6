"""A decision of a rollout as it is recorded: the record with the numbers it was based on, the rollout's
sequence advanced, and the command to publish it (pure)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from events import CanaryDecisionKind as Kind
from services.canary_rollout.domain.analysis import summarize
from services.canary_rollout.domain.commands import Publish
from services.canary_rollout.domain.decisions import DecisionRecord
from services.canary_rollout.domain.state import RolloutState
from services.shared.carry import carry


def record_decision(
    rollout: RolloutState,
    kind: Kind,
    now: datetime,
    reason: str,
    actor: str,
    metrics: dict[str, Any] | None = None,
) -> Publish:
    if metrics is None:
        metrics = {"champion": summarize(rollout.champion), "challenger": summarize(rollout.challenger)}
    metrics = {
        **metrics,
        "failed_checks": rollout.failed_checks,
        "totals": {
            "champion": rollout.champion_total.rates(),
            "challenger": rollout.challenger_total.rates(),
        },
    }
    record = carry(
        rollout, DecisionRecord, at=now, decision=kind, state=rollout.status, reason=reason, actor=actor,
        metrics=metrics,
    )  # fmt: skip
    rollout.seq += 1
    rollout.updated_at = now
    rollout.last_decision = record
    return Publish(record)
