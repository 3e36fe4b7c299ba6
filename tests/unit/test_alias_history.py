"""What was live when: history entries built from the topics' events, and who moved each alias."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events import (
    AliasAction,
    AliasChanged,
    AliasSource,
    CanaryDecision,
    CanaryDecisionKind,
    FeedbackRecorded,
    RetrainingFinished,
)
from services.cli.history import parse_time
from services.shared.alias_history import ATTRIBUTION_WINDOW_S, build_history

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MODEL = "fraud"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def moved(
    alias: str, version: str | None, t: float, source: AliasSource = AliasSource.WEBHOOK
) -> AliasChanged:
    return AliasChanged(
        model=MODEL,
        alias=alias,
        version=version,
        action=AliasAction.SET if version else AliasAction.DELETED,
        source=source,
        registry_uri="http://mlflow",
        producer="registry-watcher",
        occurred_at=at(t),
    )


def decided(
    kind: CanaryDecisionKind, t: float, actor: str = "analysis", champion: str = "1"
) -> CanaryDecision:
    return CanaryDecision(
        model=MODEL,
        rollout_id="r-1",
        decision=kind,
        champion_version=champion,
        challenger_version="2",
        state="x",
        step=0,
        weight=0,
        reason="because",
        actor=actor,
        producer="canary-rollout",
        occurred_at=at(t),
    )


def retrained(version: str, t: float) -> RetrainingFinished:
    return RetrainingFinished(
        model=MODEL,
        request_event_id="req-1",
        outcome="challenger",
        version=version,
        producer="retrainer",
        occurred_at=at(t),
    )


def actors(events: list) -> list[tuple[str | None, str | None, str | None]]:  # type: ignore[type-arg]
    return [(e.alias, e.version, e.actor) for e in build_history(MODEL, events).entries if e.kind == "alias"]


def test_each_alias_change_names_who_made_it() -> None:
    events = [
        moved("champion", "1", 0),  # set by hand
        retrained("2", 100),
        moved("challenger", "2", 101),  # the retrainer registered v2 as challenger
        decided(CanaryDecisionKind.PROMOTE, 400),
        moved("previous-champion", "1", 401),
        moved("champion", "2", 401.5),
        moved("challenger", None, 402),
    ]
    assert actors(events) == [
        ("champion", "1", "user"),
        ("challenger", "2", "retrainer"),
        ("previous-champion", "1", "canary"),
        ("champion", "2", "canary"),
        ("challenger", None, "canary"),
    ]


def test_admin_actions_and_changes_the_canary_only_recognised_are_told_apart() -> None:
    events = [
        decided(CanaryDecisionKind.ABORT, 10, actor="alice"),
        moved("challenger", None, 11),
        decided(CanaryDecisionKind.PROMOTE, 20, actor="registry"),  # someone moved champion in MLflow
        moved("champion", "2", 19),
    ]
    assert actors(events) == [("challenger", None, "admin:alice"), ("champion", "2", "user")]


def test_a_change_long_after_a_decision_or_for_another_version_is_not_attributed_to_it() -> None:
    events = [
        decided(CanaryDecisionKind.PROMOTE, 0),
        moved("champion", "2", ATTRIBUTION_WINDOW_S + 60),  # too late to be the promotion's
        moved("champion", "3", 10),  # not the version the promotion moved to
    ]
    assert sorted(actors(events)) == [("champion", "2", "user"), ("champion", "3", "user")]


def test_history_is_ordered_deduplicated_filtered_by_time_and_answers_what_was_live_when() -> None:
    first = moved("champion", "1", 0)
    events = [
        moved("champion", "2", 100, AliasSource.POLLER),
        first,
        first,  # at-least-once: the same event twice
        decided(CanaryDecisionKind.HOLD, 50),
        decided(CanaryDecisionKind.START, 40),
        FeedbackRecorded.model_construct(model=MODEL, event_id="f", occurred_at=at(5)),  # not history
        moved("champion", "9", 10).model_copy(update={"model": "other", "event_id": "o"}),
    ]
    history = build_history(MODEL, events)
    assert [(e.kind, e.decision or e.version) for e in history.entries] == [
        ("alias", "1"),
        ("decision", "start"),
        ("decision", "hold"),
        ("alias", "2"),
    ]
    assert history.entries[-1].source == "poller"
    assert history.live_at("champion", at(99)) == "1"
    assert history.live_at("champion", at(100)) == "2"
    assert history.live_at("champion", at(-1)) is None
    no_holds = build_history(MODEL, events, holds=False)
    assert [e.decision for e in no_holds.entries if e.kind == "decision"] == ["start"]
    window = build_history(MODEL, events, since=at(30), until=at(60))
    assert [e.decision for e in window.entries] == ["start", "hold"]
    limited = build_history(MODEL, events, limit=2)
    assert len(limited.entries) == 2 and limited.truncated


def test_cli_times_are_rfc3339_with_a_zone_or_an_age() -> None:
    assert parse_time("2h", T0) == T0 - timedelta(hours=2)
    assert parse_time("2026-11-30T10:00:00Z", T0) == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert parse_time(None, T0) is None
    with pytest.raises(ValueError, match="no timezone"):
        parse_time("2026-11-30T10:00:00", T0)
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday", T0)
