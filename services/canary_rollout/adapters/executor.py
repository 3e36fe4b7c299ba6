"""Carries out the commands a rollout decision returns: traffic split (Redis), aliases (MLflow), events.

Registry writes are guarded: an alias is only moved or deleted while the registry still matches what
the rollout believes (the challenger alias still points at the rollout's challenger version). So a
replayed or late decision can never undo a change somebody made in the registry since.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from services.canary_rollout import metrics
from services.canary_rollout.adapters.store import RolloutStore
from services.canary_rollout.domain import (
    Command,
    DeleteAlias,
    KeepPrevious,
    MoveAlias,
    Publish,
    RolloutMachine,
    SetWeight,
    decision_event,
)
from services.canary_rollout.settings import CanarySettings
from services.shared.kafka.publisher import KafkaPublisher, Record
from services.shared.mlflow_registry import RegistryAdapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandExecutor:
    """Runs a decision's commands in order; each is idempotent, so a list repeated after a crash converges."""

    settings: CanarySettings
    store: RolloutStore
    registry: RegistryAdapter
    publisher: KafkaPublisher

    def _alias(self, role: str) -> str:
        return self.settings.champion_alias if role == "champion" else self.settings.challenger_alias

    async def execute(self, machine: RolloutMachine, commands: Sequence[Command]) -> None:
        rollout = machine.rollout
        for command in commands:
            if isinstance(command, SetWeight):
                await self.store.set_split(
                    command.model,
                    command.rollout_id,
                    command.weight,
                    rollout.champion_version if rollout else None,
                    rollout.challenger_version if rollout else None,
                    command.shadow_share,
                )
            elif isinstance(command, KeepPrevious):
                await asyncio.to_thread(
                    self.registry.set_alias,
                    command.model,
                    self.settings.previous_champion_alias,
                    command.version,
                )
            elif isinstance(command, MoveAlias):
                await self._move(command, rollout.challenger_version if rollout else None)
            elif isinstance(command, DeleteAlias):
                await self._delete(command, rollout.challenger_version if rollout else None)
            elif isinstance(command, Publish):
                event = decision_event(command.decision)
                await self.publisher.publish([Record.of(event)])
                await self.store.append_decision(command.decision)
                metrics.DECISIONS.labels(command.decision.decision.value).inc()
                log.info(
                    "%s %s: %s (step %d, weight %.0f%%) - %s",
                    command.decision.model,
                    command.decision.rollout_id,
                    command.decision.decision.value,
                    command.decision.step,
                    command.decision.weight,
                    command.decision.reason,
                )

    async def _move(self, command: MoveAlias, challenger_version: str | None) -> None:
        if command.alias == "champion" and challenger_version is not None:
            current = await asyncio.to_thread(
                self.registry.version_by_alias, command.model, self.settings.challenger_alias
            )
            if current not in (None, challenger_version):
                log.warning("not promoting %s: challenger now points at %s", command.model, current)
                metrics.GUARDED.inc()
                return
        await asyncio.to_thread(
            self.registry.set_alias, command.model, self._alias(command.alias), command.version
        )

    async def _delete(self, command: DeleteAlias, challenger_version: str | None) -> None:
        alias = self._alias(command.alias)
        current = await asyncio.to_thread(self.registry.version_by_alias, command.model, alias)
        if current is None:
            return
        if command.alias == "challenger" and challenger_version is not None and current != challenger_version:
            log.warning("not deleting %s@%s: it points at %s now", command.model, alias, current)
            metrics.GUARDED.inc()
            return
        await asyncio.to_thread(self.registry.delete_alias, command.model, alias)
