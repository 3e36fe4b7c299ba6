"""The alias state rebuilt from what was published (pure): the alias-changed topic is the record.

When Redis comes back empty (a restart without persistence, a failover to an empty replica), the
watcher's alias state is gone. Diffing the registry against *nothing* would announce every alias as new
(`previous_version=None`) and could not see an alias deleted meanwhile; a stale retried delivery would be
taken for news. So the state is first rebuilt from the topic — per model and alias, the last event
published (the topic is keyed by model: its order is the publication order) with its time — and only
then does the poller diff the registry against it: what changed while the state was gone is published
once, with the right `previous_version`, deletions included; nothing else is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from events import AliasAction, AliasChanged


@dataclass(frozen=True)
class SeedEntry:
    version: str | None  # None: the alias was deleted (its time is kept: a stale retry stays stale)
    at: float  # when it was published (epoch seconds)


def seed_from(
    events: Iterable[AliasChanged], *, watched: Callable[[str], bool], registry_uri: str
) -> dict[str, dict[str, SeedEntry]]:
    """model -> alias -> its last published state, for watched models of this registry."""
    seed: dict[str, dict[str, SeedEntry]] = {}
    for event in events:
        if event.registry_uri != registry_uri or not watched(event.model):
            continue
        version = event.version if event.action is AliasAction.SET else None
        seed.setdefault(event.model, {})[event.alias] = SeedEntry(version, event.occurred_at.timestamp())
    return seed
