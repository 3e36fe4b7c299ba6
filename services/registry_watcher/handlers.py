"""The use case both paths share: record what the registry says, publish each real change once.

`record` (webhook: one observation) and `reconcile` (poller: the whole alias map of a model) read the
alias state, derive AliasChanged events with `previous_version` from that state, commit them with the
compare-and-set of `alias_state`, and drain the model's outbox to Kafka before returning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from events import AliasAction, AliasChanged, AliasSource
from services.registry_watcher import metrics
from services.registry_watcher.adapters.alias_state import AliasSnapshot, AliasStateStore
from services.registry_watcher.adapters.outbox import OutboxRelay
from services.registry_watcher.domain.alias_diff import diff_aliases
from services.registry_watcher.domain.webhook import AliasObservation

log = logging.getLogger(__name__)

MAX_CAS_ATTEMPTS = 20


class ConcurrentChange(RuntimeError):
    """The alias state kept changing under us; the caller may retry later."""


@dataclass(frozen=True)
class RecordResult:
    committed: list[AliasChanged]
    published: list[AliasChanged]


class AliasChangeRecorder:
    def __init__(
        self,
        state: AliasStateStore,
        relay: OutboxRelay,
        *,
        registry_uri: str,
        producer: str = "registry-watcher",
    ) -> None:
        self._state = state
        self._relay = relay
        self._registry_uri = registry_uri
        self._producer = producer

    def _event(self, snapshot: AliasSnapshot, obs: AliasObservation, source: AliasSource) -> AliasChanged:
        return AliasChanged(
            producer=self._producer,
            model=obs.model,
            alias=obs.alias,
            version=obs.version,
            previous_version=snapshot.aliases.get(obs.alias),
            action=AliasAction.SET if obs.version is not None else AliasAction.DELETED,
            source=source,
            registry_uri=self._registry_uri,
        )

    async def record(self, obs: AliasObservation, source: AliasSource) -> RecordResult:
        """One observed alias state (webhook). A no-op when the state already says so, or when the
        state holds a newer observation of the alias (a retried delivery the state has moved past)."""

        def changes(snapshot: AliasSnapshot) -> list[AliasChanged]:
            if snapshot.aliases.get(obs.alias) == obs.version:
                return []
            if snapshot.is_stale(obs.alias, obs.observed_at):
                metrics.DEDUP_HITS.labels(kind="stale").inc()
                return []
            return [self._event(snapshot, obs, source)]

        return await self._commit_then_publish(obs.model, changes, obs.observed_at)

    async def reconcile(
        self,
        snapshot: AliasSnapshot,
        observed: Mapping[str, str],
        source_of: Callable[[str], AliasSource],
        observed_at: float | None = None,
    ) -> bool:
        """Bring the state from `snapshot` to `observed` (poller; read at `observed_at`, after the
        snapshot was taken). False when the snapshot is stale."""
        events = [
            self._event(snapshot, obs, source_of(obs.alias))
            for obs in diff_aliases(snapshot.model, snapshot.aliases, observed, observed_at)
        ]
        if not await self._state.commit(snapshot, events, [observed_at] * len(events)):
            return False
        if events:
            await self._relay.flush(snapshot.model)
        return True

    async def _commit_then_publish(
        self,
        model: str,
        changes: Callable[[AliasSnapshot], list[AliasChanged]],
        observed_at: float | None = None,
    ) -> RecordResult:
        for _ in range(MAX_CAS_ATTEMPTS):
            snapshot = await self._state.snapshot(model)
            events = changes(snapshot)
            if not events:
                metrics.DEDUP_HITS.labels(kind="unchanged").inc()
                break
            if await self._state.commit(snapshot, events, [observed_at] * len(events)):
                break
        else:
            raise ConcurrentChange(f"alias state of {model!r} changed {MAX_CAS_ATTEMPTS} times in a row")
        # Drain even when nothing new was committed: a retried delivery must not be acknowledged
        # while an earlier event of this model still waits for Kafka.
        published = await self._relay.flush(model)
        return RecordResult(committed=events, published=published)
