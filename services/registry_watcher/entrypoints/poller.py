"""The safety net: periodically compare MLflow's aliases with the alias state and publish the gaps.

Webhooks can be lost (receiver down, retries exhausted, webhook not registered). Every
`FLYWHEEL_POLL_INTERVAL_S` the poller snapshots the alias state *first*, then reads the registry, then
commits the difference conditionally on the snapshot's revision. Because the registry is read after the
snapshot, a commit that succeeds can only move the state forward; when a webhook committed in between,
the model is simply re-read. In stage mode, registries that still use stages are mapped to aliases
(Production -> champion, Staging -> challenger) and published with `source=stage`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from events import AliasSource
from services.registry_watcher import metrics
from services.registry_watcher.adapters.alias_state import AliasStateStore
from services.registry_watcher.adapters.health_report import HealthReporter
from services.registry_watcher.domain.delivery_health import DeliveryHealth
from services.registry_watcher.handlers import AliasChangeRecorder
from services.shared.mlflow_registry import RegistryAdapter
from services.shared.stages import StageAliases, aliases_from_stages

log = logging.getLogger(__name__)

MAX_RETRIES_PER_MODEL = 5


class RegistryPoller:
    def __init__(
        self,
        registry: RegistryAdapter,
        state: AliasStateStore,
        recorder: AliasChangeRecorder,
        *,
        watched: Callable[[str], bool],
        models: list[str] | None = None,
        stage_mode: bool = False,
        stage_aliases: StageAliases = StageAliases(),
        health: DeliveryHealth | None = None,
        reporter: HealthReporter | None = None,
    ) -> None:
        self._health = health
        self._reporter = reporter
        self._registry = registry
        self._state = state
        self._recorder = recorder
        self._watched = watched
        self._models = models or None
        self._stage_mode = stage_mode
        self._stage_aliases = stage_aliases
        self.last_success: float | None = None
        # Restores the alias state when Redis came back empty (state_restore.StateKeeper.ensure).
        self.ensure_state: Callable[[], Awaitable[bool]] | None = None
        metrics.POLL_LAG.set_function(self.lag_seconds)

    def lag_seconds(self) -> float:
        return float("nan") if self.last_success is None else time.time() - self.last_success

    def _observe(
        self, models: list[str] | None
    ) -> tuple[dict[str, dict[str, str]], dict[str, set[str]], float]:
        """Registry view: model -> alias -> version, which aliases came from stages, and the time just
        before the read (every change delivered with an earlier time is in this view) (blocking)."""
        at = time.time()
        observed = self._registry.aliases(models)
        from_stages: dict[str, set[str]] = {}
        if self._stage_mode:
            for model, aliases in observed.items():
                derived = aliases_from_stages(
                    ((vs.version, vs.stage) for vs in self._registry.version_stages(model)),
                    self._stage_aliases,
                )
                # Managed aliases not set for real are decided by stages (also when they vanish).
                from_stages[model] = {a for a in self._stage_aliases.managed if a not in aliases}
                observed[model] = {**derived, **aliases}
        return observed, from_stages, at

    async def poll_once(self) -> int:
        """One cycle; returns the number of models whose state changed."""
        started = time.perf_counter()
        if self.ensure_state is not None and not await self.ensure_state():
            return 0  # another registry's state (refused): nothing is published
        known = {m for m in await self._state.known_models() if self._watched(m)}
        candidates = known | set(self._models or [])
        snapshots = await self._state.snapshots(candidates)
        observed, from_stages, read_at = await asyncio.to_thread(self._observe, self._models)
        changed = repaired = 0
        for model in sorted(candidates | {m for m in observed if self._watched(m)}):
            snapshot = snapshots.get(model)
            known_before = snapshot is not None and snapshot.rev != "0"
            at = read_at
            if snapshot is not None:
                aliases = observed.get(model, {})
                stage_set = from_stages.get(model, set())
            else:
                # First sight of this model: its snapshot must predate the registry read.
                snapshot = await self._state.snapshot(model)
                fresh, fresh_stages, at = await asyncio.to_thread(self._observe, [model])
                aliases = fresh.get(model, {})
                stage_set = fresh_stages.get(model, set())
            for _attempt in range(MAX_RETRIES_PER_MODEL):
                if snapshot.aliases == aliases:
                    break
                ok = await self._recorder.reconcile(snapshot, aliases, self._source_of(stage_set), at)
                if ok:
                    changed += 1
                    repaired += known_before and not stage_set
                    break
                # A webhook committed meanwhile: re-snapshot, then re-read this model only.
                snapshot = await self._state.snapshot(model)
                fresh, fresh_stages, at = await asyncio.to_thread(self._observe, [model])
                aliases = fresh.get(model, {})
                stage_set = fresh_stages.get(model, set())
        if repaired:
            metrics.POLL_REPAIRS.inc(repaired)
            log.warning(
                "the poller published alias changes of %d model(s) that no webhook delivered: is Flywheel's "
                "MLflow webhook registered (`flywheel webhook register`), reachable from the MLflow server, "
                "and older than MLFLOW_WEBHOOK_CACHE_TTL (MLflow caches its webhook list, 60 s by default)?",
                repaired,
            )
        self.last_success = time.time()
        if self._health is not None:
            self._health.repair(self.last_success, repaired)
        if self._reporter is not None:
            await self._reporter.publish()
        metrics.POLLS.inc()
        metrics.POLL_DURATION.observe(time.perf_counter() - started)
        return changed

    @staticmethod
    def _source_of(stage_set: set[str]) -> Callable[[str], AliasSource]:
        return lambda alias: AliasSource.STAGE if alias in stage_set else AliasSource.POLLER

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.POLL_ERRORS.inc()
                log.warning("poll cycle failed: %r", exc)
            await asyncio.sleep(interval_s)
