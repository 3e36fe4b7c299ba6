"""Which AliasChanged event wins an alias's entry in the resolution cache (pure: no I/O).

Events are ordered by `(occurred_at, event_id)` (`ResolutionEntry.order_key`): an event replaces the
stored entry only when it is newer, so applying any sequence of events, in any order and with
duplicates, leaves each alias at the state of its newest event. A deletion is stored as an entry with
`version=None` (a tombstone), so an older `set` delivered later cannot resurrect the alias.

The three decisions:
- `Applied(entry)`: the event is newer than the stored entry (or there is none): write it, then notify.
- `AlreadyApplied(entry)`: the stored entry *is* this event. Kafka delivers at least once, and a crash
  between the Redis write and the notice leaves exactly this state, so the notice is sent again.
- `Stale(current)`: the stored entry is newer; nothing to do and nobody to tell.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from events import AliasChanged
from services.shared.carry import carry
from services.shared.resolution import ReloadNotice, ResolutionEntry


@dataclass(frozen=True)
class Applied:
    entry: ResolutionEntry


@dataclass(frozen=True)
class AlreadyApplied:
    entry: ResolutionEntry


@dataclass(frozen=True)
class Stale:
    current: ResolutionEntry


Decision = Applied | AlreadyApplied | Stale


def entry_of(event: AliasChanged) -> ResolutionEntry:
    """The resolution entry an event asks for (version None = tombstone of a deleted alias)."""
    return ResolutionEntry(version=event.version, event_id=event.event_id, occurred_at=event.occurred_at)


def is_newer(candidate: ResolutionEntry, current: ResolutionEntry) -> bool:
    return candidate.order_key() > current.order_key()


def decide(entries: Mapping[str, ResolutionEntry], event: AliasChanged) -> Decision:
    """What to do with `event`, given the model's current entries (alias -> entry)."""
    candidate = entry_of(event)
    current = entries.get(event.alias)
    if current is None:
        return Applied(candidate)
    if current.event_id == event.event_id:
        return AlreadyApplied(current)
    if is_newer(candidate, current):
        return Applied(candidate)
    return Stale(current)


def apply_event(entries: Mapping[str, ResolutionEntry], event: AliasChanged) -> dict[str, ResolutionEntry]:
    """The model's entries after `event` (a new mapping; `entries` is not changed)."""
    decision = decide(entries, event)
    result = dict(entries)
    if isinstance(decision, Applied):
        result[event.alias] = decision.entry
    return result


def replay(events: Iterable[AliasChanged]) -> dict[str, dict[str, ResolutionEntry]]:
    """model -> alias -> entry after applying `events` one by one (the reference for tests)."""
    state: dict[str, dict[str, ResolutionEntry]] = {}
    for event in events:
        state[event.model] = apply_event(state.get(event.model, {}), event)
    return state


def notice_for(event: AliasChanged, entry: ResolutionEntry) -> ReloadNotice:
    """The reload notice announcing that `entry` now holds for the event's alias."""
    return carry(entry, ReloadNotice, model=event.model, alias=event.alias)


def canonical_time(value: datetime) -> str:
    """`occurred_at` as fixed-width UTC text (`2026-01-01T00:00:00.000000Z`), so that comparing the
    strings byte-wise orders them like the datetimes (what the Redis script compares)."""
    if value.tzinfo is None:
        raise ValueError("occurred_at must carry a timezone")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def lag_seconds(event: AliasChanged, now: datetime) -> float:
    """How long after it happened an event was applied (never negative: clocks may disagree)."""
    return max(0.0, (now - event.occurred_at).total_seconds())
