"""The alias state is there before anything is published: restored from the topic after a loss of Redis.

`StateKeeper.ensure` runs at start (with the registry identity check), at the start of every poll cycle,
and when a webhook finds the state gone (`StateLost`: the commit script refuses while the epoch marker
`watcher:registry-id` is missing). When the state is gone it reads the alias-changed topic (every event,
kept without limit), rebuilds each watched model's last published state (`domain/state_seed.py`), writes
it where no writer got there first, and only then binds the registry again — so the next poll publishes
exactly what changed while the state was gone. When Kafka cannot be read, nothing is published: the
poll cycle fails and is tried again, webhooks answer 503 (MLflow retries them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from events import ALIAS_CHANGED, AliasChanged
from services.registry_watcher import metrics
from services.registry_watcher.adapters.alias_state import AliasStateStore
from services.registry_watcher.domain.state_seed import seed_from
from services.shared.kafka.history_reader import read_events

log = logging.getLogger(__name__)


class StateKeeper:
    def __init__(
        self,
        state: AliasStateStore,
        bind: Callable[[], Awaitable[bool]],
        *,
        bootstrap_servers: str,
        kafka_profile: str,
        watched: Callable[[str], bool],
        registry_uri: str,
        timeout_s: float = 10.0,
    ) -> None:
        self._state = state
        self._bind = bind
        self._bootstrap = bootstrap_servers
        self._profile = kafka_profile
        self._watched = watched
        self._registry_uri = registry_uri
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[bool] | None = None

    def restore_soon(self) -> None:
        """Start `ensure` in the background unless it runs already (a webhook found the state gone)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.ensure(), name="restore-alias-state")

    async def ensure(self, *, check_identity: bool = False) -> bool:
        """True when the state is there and bound to this registry (restored first when it was gone);
        `check_identity` binds even when the state is there (at start: is it this registry's?)."""
        if await self._state.bound():
            return await self._bind() if check_identity else True
        async with self._lock:
            if await self._state.bound():
                return True
            events = await asyncio.to_thread(
                read_events,
                self._bootstrap,
                None,
                profile=self._profile,
                timeout_s=self._timeout_s,
                topics=(ALIAS_CHANGED,),
            )
            published = [e for e in events if isinstance(e, AliasChanged)]
            seed = seed_from(published, watched=self._watched, registry_uri=self._registry_uri)
            written = await self._state.restore(seed)
            if seed:
                metrics.STATE_RESTORES.inc()
                log.warning(
                    "the alias state was gone (Redis came back empty, or a new namespace): restored %d "
                    "model(s) from %d published alias changes; the next poll publishes what changed since",
                    written,
                    len(published),
                )
            return await self._bind()
