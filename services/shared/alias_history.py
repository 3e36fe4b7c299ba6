"""What was live when: the history of a model's aliases and canary decisions, with who moved each alias.

The Kafka topics are the record (`events.HISTORY_TOPICS`, kept without time limit): every alias change the
watcher published, every canary decision, every retraining outcome. A history is read from them on demand
(`services/shared/kafka/history_reader.py`), so nothing can drift from it and a loss of Redis loses no
history. This module is the pure part: the entries and who moved each alias.

MLflow's webhooks do not say who moved an alias, but Flywheel knows what it did itself:
- `champion` / `previous-champion` set, and `challenger` deleted, within `ATTRIBUTION_WINDOW_S` after a
  canary decision that does exactly that (promote, rollback, abort, revert) -> the decision's actor:
  `canary` for the analysis, `admin:<name>` for an admin action;
- `challenger` set to the version a retraining registered -> `retrainer`;
- anything else -> `user` (a person or a script, through MLflow).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from events import AliasChanged, CanaryDecision, CanaryDecisionKind, RetrainingFinished
from events.envelope import Event

#: How long after a decision (or a retraining outcome) an alias change is still attributed to it.
ATTRIBUTION_WINDOW_S = 300.0
#: How far an alias change may seem to precede what caused it (clocks of two processes).
CLOCK_SKEW_S = 5.0

Kind = CanaryDecisionKind
# What each decision does to the aliases of the registry (see the canary's commands).
_MOVES: dict[Kind, set[tuple[str, str]]] = {
    Kind.PROMOTE: {("champion", "challenger"), ("previous-champion", "champion"), ("challenger", "deleted")},
    Kind.ROLLBACK: {("challenger", "deleted")},
    Kind.ABORT: {("challenger", "deleted")},
    Kind.REVERTED: {("champion", "champion"), ("previous-champion", "challenger")},
}


class HistoryEntry(BaseModel):
    """One line of the history: an alias change or a canary decision."""

    at: datetime
    kind: Literal["alias", "decision"]
    event_id: str
    alias: str | None = None
    version: str | None = Field(default=None, description="Alias: the version it points to (null: deleted).")
    previous_version: str | None = None
    source: str | None = Field(default=None, description="Alias: webhook, poller or stage.")
    actor: str | None = Field(
        default=None, description="Alias: canary, admin:<name>, retrainer or user. Decision: who decided."
    )
    decision: str | None = None
    rollout_id: str | None = None
    champion_version: str | None = None
    challenger_version: str | None = None
    weight: float | None = None
    reason: str | None = None


class History(BaseModel):
    model: str
    since: datetime | None = None
    until: datetime | None = None
    entries: list[HistoryEntry]
    truncated: bool = Field(default=False, description="More entries than `limit`: ask again from the last.")

    def live_at(self, alias: str, when: datetime) -> str | None:
        """The version `alias` pointed to at `when`, as far as this history reaches back."""
        version = None
        for entry in self.entries:
            if entry.at > when:
                break
            if entry.kind == "alias" and entry.alias == alias:
                version = entry.version
        return version


def _decision_actor(decision: CanaryDecision) -> str:
    if decision.actor == "analysis":
        return "canary"
    if decision.actor == "registry":
        return "user"  # the canary only recognised what someone did in the registry
    return f"admin:{decision.actor}"


def _explains(decision: CanaryDecision, change: AliasChanged) -> bool:
    """Whether `decision` made `change` (same versions, and the change came after it)."""
    lag = (change.occurred_at - decision.occurred_at).total_seconds()
    if not -CLOCK_SKEW_S <= lag <= ATTRIBUTION_WINDOW_S:
        return False
    for alias, target in _MOVES.get(decision.decision, set()):
        if alias != change.alias:
            continue
        if target == "deleted" and change.version is None:
            return True
        wanted = decision.challenger_version if target == "challenger" else decision.champion_version
        if target != "deleted" and change.version == wanted:
            return True
    return False


def _actor(change: AliasChanged, decisions: list[CanaryDecision], trained: list[RetrainingFinished]) -> str:
    for decision in reversed(decisions):
        if _explains(decision, change):
            return _decision_actor(decision)
    if change.alias == "challenger" and change.version is not None:
        for finished in reversed(trained):
            lag = (change.occurred_at - finished.occurred_at).total_seconds()
            if finished.version == change.version and -ATTRIBUTION_WINDOW_S <= lag <= ATTRIBUTION_WINDOW_S:
                return "retrainer"
    return "user"


def build_history(
    model: str,
    events: list[Event],
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    holds: bool = True,
    limit: int = 1000,
) -> History:
    """The history of `model` from its events (any order, any topics; duplicates by event id dropped)."""
    unique: dict[str, Event] = {}
    for event in events:
        if getattr(event, "model", None) == model:
            unique.setdefault(event.event_id, event)
    ordered = sorted(unique.values(), key=lambda e: e.occurred_at)
    decisions = [e for e in ordered if isinstance(e, CanaryDecision)]
    trained = [e for e in ordered if isinstance(e, RetrainingFinished) and e.version is not None]
    entries: list[HistoryEntry] = []
    for event in ordered:
        when = event.occurred_at
        if (since is not None and when < since) or (until is not None and when > until):
            continue
        if isinstance(event, AliasChanged):
            window_start = event.occurred_at - timedelta(seconds=ATTRIBUTION_WINDOW_S)
            recent = [d for d in decisions if window_start <= d.occurred_at]
            entries.append(_alias_entry(event, _actor(event, recent, trained)))
        elif isinstance(event, CanaryDecision) and (holds or event.decision is not Kind.HOLD):
            entries.append(_decision_entry(event))
    truncated = len(entries) > limit
    return History(model=model, since=since, until=until, entries=entries[:limit], truncated=truncated)


def _alias_entry(change: AliasChanged, actor: str) -> HistoryEntry:
    return HistoryEntry(
        at=change.occurred_at,
        kind="alias",
        event_id=change.event_id,
        alias=change.alias,
        version=change.version,
        previous_version=change.previous_version,
        source=change.source.value,
        actor=actor,
    )


def _decision_entry(decision: CanaryDecision) -> HistoryEntry:
    fields: dict[str, Any] = {
        "decision": decision.decision.value,
        "rollout_id": decision.rollout_id,
        "champion_version": decision.champion_version,
        "challenger_version": decision.challenger_version,
        "weight": decision.weight,
        "reason": decision.reason,
        "actor": decision.actor,
    }
    return HistoryEntry(at=decision.occurred_at, kind="decision", event_id=decision.event_id, **fields)
