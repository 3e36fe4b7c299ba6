"""Preload-then-swap: moves each served alias to the version the resolution cache says, in the background.

`want(model, alias, version)` records the desired version and makes sure one convergence task per
alias runs: it loads the version (through the ModelManager, outside the request path), then swaps the
alias pointer in the ServingTable. Requests keep being served by the old version the whole time. If the
load fails, the old version keeps serving, the failure is counted and logged, and the load is retried with
exponential backoff for as long as that version is still wanted. A newer `want` supersedes an older
one, so a quick v1 -> v2 -> v1 ends on v1 without serving v2 in between if v2 was not ready yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from services.gateway import metrics
from services.gateway.adapters.model_loader import LoadedModel
from services.gateway.domain.model_manager import ModelManager, ModelRef
from services.gateway.domain.serving_table import ServingTable
from services.shared.fleet import ReloadError, Swap

log = logging.getLogger(__name__)

Key = tuple[str, str]


class Reloader:
    def __init__(
        self,
        table: ServingTable,
        manager: ModelManager[LoadedModel],
        *,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self._table = table
        self._manager = manager
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._wanted: dict[Key, str | None] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._changed: dict[Key, asyncio.Event] = {}
        self.last_error: dict[Key, str] = {}
        # What the replica reports in its fleet heartbeat (services.shared.fleet).
        self.swaps = 0
        self.failed_loads = 0
        self.last_swap: Swap | None = None

    def wanted(self, model: str, alias: str) -> str | None:
        return self._wanted.get((model, alias))

    def want(self, model: str, alias: str, version: str | None) -> asyncio.Task[None] | None:
        """Desire `model@alias -> version` (None: stop serving the alias). Returns the convergence task."""
        key = (model, alias)
        self._wanted[key] = version
        self._changed.setdefault(key, asyncio.Event()).set()
        if version is None:
            previous = self._table.drop(model, alias)
            if previous is not None:
                log.info(
                    "alias %s@%s removed; no longer served (was version %s)", model, alias, previous.version
                )
                _clear_version_gauge(model, alias)
            return None
        current = self._table.get(model, alias)
        if current is not None and current.version == version and key not in self._tasks:
            return None
        task = self._tasks.get(key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._converge(key), name=f"reload {model}@{alias}")
            task.add_done_callback(_retrieve_exception)
            self._tasks[key] = task
        return task

    async def ensure(self, model: str, alias: str, version: str) -> LoadedModel:
        """Want `version` and wait until it serves (used for the first request of an alias)."""
        task = self.want(model, alias, version)
        if task is not None:
            await asyncio.shield(task)
        loaded = self._table.get(model, alias)
        if loaded is None or loaded.version != version:
            raise LookupError(self.last_error.get((model, alias), f"{model}@{alias} is not loaded"))
        return loaded

    async def _converge(self, key: Key) -> None:
        model, alias = key
        delay = self._retry_initial_s
        try:
            while True:
                self._changed[key].clear()
                target = self._wanted.get(key)
                current = self._table.get(model, alias)
                if target is None or (current is not None and current.version == target):
                    return
                started = time.perf_counter()
                ref = ModelRef(model, version=target)
                try:
                    # A version still in the cache (a move back, a rollback) swaps without a thread hop.
                    cached = self._manager.get_if_loaded(ref)
                    if cached is None:
                        cached = await asyncio.to_thread(self._manager.load, ref)
                    loaded: LoadedModel = cached
                except Exception as exc:
                    metrics.RELOADS.labels(model, "failed").inc()
                    self.failed_loads += 1
                    self.last_error[key] = f"loading {model} version {target} failed: {exc}"
                    log.warning(
                        "preload of %s version %s for alias %s failed (%s); still serving %s; retry in %.1fs",
                        model,
                        target,
                        alias,
                        exc,
                        current.version if current else "nothing",
                        delay,
                    )
                    if current is None:
                        # Nothing served yet: end here so first requests waiting in `ensure` get the
                        # error now; the next reconciliation or request wants the version again.
                        raise LookupError(self.last_error[key]) from exc
                    try:
                        await asyncio.wait_for(self._changed[key].wait(), timeout=delay)
                        delay = self._retry_initial_s  # a new target: try at once
                    except TimeoutError:
                        delay = min(delay * 2, self._retry_max_s)
                    continue
                if self._wanted.get(key) != target:
                    continue  # superseded while loading; the next round loads the newest target
                previous = self._table.swap(model, alias, loaded)
                self.last_error.pop(key, None)
                elapsed = time.perf_counter() - started
                metrics.RELOADS.labels(model, "swapped").inc()
                metrics.RELOAD_SECONDS.labels(model).observe(elapsed)
                self.swaps += 1
                self.last_swap = Swap(
                    model=model,
                    alias=alias,
                    version=loaded.version,
                    previous_version=previous.version if previous else None,
                    at=datetime.now(UTC),
                    load_seconds=elapsed,
                )
                _set_version_gauge(model, alias, loaded.version)
                log.info(
                    "%s@%s now serves version %s (was %s)",
                    model,
                    alias,
                    loaded.version,
                    previous.version if previous else None,
                )
                delay = self._retry_initial_s
        finally:
            if self._tasks.get(key) is asyncio.current_task():
                del self._tasks[key]

    def errors(self) -> list[ReloadError]:
        """Aliases whose wanted version failed to load (the old version keeps serving meanwhile)."""
        return [
            ReloadError(model=m, alias=a, wanted_version=self._wanted.get((m, a)), message=msg)
            for (m, a), msg in sorted(self.last_error.items())
        ]

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    """Failures were logged and counted already; mark them retrieved (no 'never retrieved' noise)."""
    if not task.cancelled():
        task.exception()


def _set_version_gauge(model: str, alias: str, version: str) -> None:
    with contextlib.suppress(ValueError):
        metrics.SERVING_VERSION.labels(model, alias).set(float(version))


def _clear_version_gauge(model: str, alias: str) -> None:
    with contextlib.suppress(KeyError):
        metrics.SERVING_VERSION.remove(model, alias)
