"""The pure decision of cache invalidation: which AliasChanged event wins an alias's entry."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import AliasChanged
from services.cache_invalidation.domain.apply import (
    AlreadyApplied,
    Applied,
    Stale,
    apply_event,
    canonical_time,
    decide,
    entry_of,
    lag_seconds,
    notice_for,
    replay,
)
from services.shared.resolution import ResolutionEntry
from tests.support.events import alias_changed

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def changed(
    version: str | None,
    *,
    at: float = 0.0,
    event_id: str | None = None,
    model: str = "m",
    alias: str = "champion",
) -> AliasChanged:
    extra = {"event_id": event_id} if event_id is not None else {}
    return alias_changed(model, alias, version, T0 + timedelta(seconds=at), **extra)


def test_absent_entry_applies() -> None:
    event = changed("1")
    decision = decide({}, event)
    assert decision == Applied(ResolutionEntry(version="1", event_id=event.event_id, occurred_at=T0))


def test_newer_event_applies() -> None:
    old, new = changed("1", at=0), changed("2", at=1)
    assert decide({"champion": entry_of(old)}, new) == Applied(entry_of(new))


def test_older_event_is_stale() -> None:
    old, new = changed("1", at=0), changed("2", at=1)
    assert decide({"champion": entry_of(new)}, old) == Stale(entry_of(new))


def test_same_event_is_already_applied() -> None:
    event = changed("3", at=5)
    assert decide({"champion": entry_of(event)}, event) == AlreadyApplied(entry_of(event))


def test_same_event_id_wins_over_timestamps() -> None:
    """Redelivery is recognised by event_id even if the stored copy has another timestamp spelling."""
    event = changed("3", at=5)
    stored = ResolutionEntry(version="3", event_id=event.event_id, occurred_at=event.occurred_at)
    assert isinstance(decide({"champion": stored}, event), AlreadyApplied)


def test_other_aliases_do_not_matter() -> None:
    newer_other = changed("9", at=100, alias="challenger")
    event = changed("1", at=0)
    assert decide({"challenger": entry_of(newer_other)}, event) == Applied(entry_of(event))


def test_delete_stores_a_tombstone() -> None:
    set_, delete = changed("1", at=0), changed(None, at=1)
    state = apply_event(apply_event({}, set_), delete)
    assert state["champion"].version is None
    assert state["champion"].event_id == delete.event_id


def test_tombstone_blocks_an_older_set() -> None:
    delete = changed(None, at=10)
    late_set = changed("1", at=5)
    assert decide({"champion": entry_of(delete)}, late_set) == Stale(entry_of(delete))


def test_newer_set_after_tombstone_applies() -> None:
    delete, again = changed(None, at=10), changed("2", at=11)
    assert decide({"champion": entry_of(delete)}, again) == Applied(entry_of(again))


def test_equal_time_tie_broken_by_event_id() -> None:
    low, high = changed("1", at=3, event_id="aaaa"), changed("2", at=3, event_id="bbbb")
    assert decide({"champion": entry_of(low)}, high) == Applied(entry_of(high))
    assert decide({"champion": entry_of(high)}, low) == Stale(entry_of(high))


def test_apply_event_does_not_mutate_input() -> None:
    entries = {"champion": entry_of(changed("1", at=0))}
    before = dict(entries)
    apply_event(entries, changed("2", at=1))
    assert entries == before


def test_notice_carries_the_entry() -> None:
    event = changed("4", at=2, model="fraud", alias="challenger")
    notice = notice_for(event, entry_of(event))
    assert (notice.model, notice.alias, notice.version, notice.event_id) == (
        "fraud",
        "challenger",
        "4",
        event.event_id,
    )
    assert notice.occurred_at == event.occurred_at


def test_canonical_time_is_fixed_width_utc_and_orders_like_datetimes() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert canonical_time(datetime(2026, 1, 1, 2, 0, tzinfo=plus_two)) == "2026-01-01T00:00:00.000000Z"
    assert canonical_time(datetime(5, 1, 1, tzinfo=UTC)) == "0005-01-01T00:00:00.000000Z"
    times = [T0 + timedelta(microseconds=n) for n in (0, 1, 10, 999_999, 1_000_000, 86_400_000_000)]
    assert sorted(times, key=canonical_time) == sorted(times)
    with pytest.raises(ValueError):
        canonical_time(datetime(2026, 1, 1))


def test_lag_is_never_negative() -> None:
    event = changed("1", at=10)
    assert lag_seconds(event, T0) == 0.0
    assert lag_seconds(event, T0 + timedelta(seconds=12.5)) == pytest.approx(2.5)


# A history: per (model, alias), a sequence of sets/deletes with strictly increasing occurred_at, some
# sharing a timestamp (tie broken by event_id).
_step = st.tuples(
    st.sampled_from(["m1", "m2"]),
    st.sampled_from(["champion", "challenger"]),
    st.one_of(st.none(), st.sampled_from(["1", "2", "3", "4"])),
    st.integers(min_value=0, max_value=3),  # seconds after the previous event (0 = same instant)
)


def _history(steps: list[tuple[str, str, str | None, int]]) -> list[AliasChanged]:
    clock = 0.0
    events = []
    for n, (model, alias, version, gap) in enumerate(steps):
        clock += gap
        events.append(changed(version, at=clock, event_id=f"e{n:05d}", model=model, alias=alias))
    return events


def _histories(max_size: int) -> st.SearchStrategy[list[AliasChanged]]:
    """Alias histories of 1..max_size events over a few models and aliases, in the order they happened."""
    return st.lists(_step, min_size=1, max_size=max_size).map(_history)


_SEEDS = st.integers(0, 2**32 - 1)


def _newest_per_alias(events: list[AliasChanged]) -> dict[str, dict[str, ResolutionEntry]]:
    expected: dict[str, dict[str, ResolutionEntry]] = {}
    for event in events:
        current = expected.setdefault(event.model, {}).get(event.alias)
        candidate = entry_of(event)
        if current is None or candidate.order_key() > current.order_key():
            expected[event.model][event.alias] = candidate
    return expected


def _redelivered(events: list[AliasChanged], rng: random.Random, redeliveries: int) -> list[AliasChanged]:
    """`events` plus `redeliveries` random repeats of them, in a random order (at-least-once delivery)."""
    delivered = events + [rng.choice(events) for _ in range(redeliveries)]
    rng.shuffle(delivered)
    return delivered


@settings(max_examples=300, deadline=None)
@given(events=_histories(max_size=40), seed=_SEEDS)
def test_replay_in_order_or_shuffled_with_duplicates_converges_to_newest_event(
    events: list[AliasChanged], seed: int
) -> None:
    expected = _newest_per_alias(events)
    assert replay(events) == expected

    rng = random.Random(seed)
    noisy = _redelivered(events, rng, rng.randint(0, len(events)))
    assert replay(noisy) == expected
    # Replaying everything again on top of the final state changes nothing.
    assert replay(noisy + events) == expected


@settings(max_examples=200, deadline=None)
@given(events=_histories(max_size=30), seed=_SEEDS)
def test_each_event_is_applied_at_most_once_and_notices_follow_event_order(
    events: list[AliasChanged], seed: int
) -> None:
    """Over any delivery order, the Applied decisions of one alias have strictly increasing order keys."""
    rng = random.Random(seed)
    delivered = _redelivered(events, rng, len(events))
    state: dict[str, dict[str, ResolutionEntry]] = {}
    applied: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
    for event in delivered:
        entries = state.setdefault(event.model, {})
        decision = decide(entries, event)
        if isinstance(decision, Applied):
            applied.setdefault((event.model, event.alias), []).append(decision.entry.order_key())
            entries[event.alias] = decision.entry
    for keys in applied.values():
        assert keys == sorted(set(keys))
