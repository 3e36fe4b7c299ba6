"""The canary rollout service: feeds registry events, observations, clock ticks and admin actions into
one `RolloutMachine` per model, executes what it decides, and persists it.

All inputs run on one event loop; a per-model lock serialises the inputs that decide (registry events,
ticks, admin actions) with their command execution, so a decision's effects are applied before the next
decision about the same model is taken. Observations only count (no I/O) and are persisted with the next
tick; a crash loses at most one tick of samples, never a decision (commands are executed, then the state
is saved, then the event's offset is committed; a replay repeats decisions with the same event ids).

Several instances share the work by Kafka partition: a model is decided by the one instance that owns
its partition (`owns`), which holds its machine in memory; when the assignment changes, machines that
moved are dropped and the new owner loads them from Redis. An admin action that reaches another
instance is handed to the owner through Redis (`submit`), so every decision about a model is taken in
one place: never two promotions, never a step skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from events import AliasChanged, FeedbackRecorded, InferenceRecorded
from services.canary_rollout import metrics
from services.canary_rollout.adapters.executor import CommandExecutor
from services.canary_rollout.adapters.store import RolloutStore
from services.canary_rollout.domain import InvalidTransition, Outcome, RolloutMachine
from services.canary_rollout.lost_rollouts import end_lost_rollouts
from services.canary_rollout.settings import CanarySettings
from services.shared.mlflow_registry import RegistryAdapter

log = logging.getLogger(__name__)

ADMIN_ACTIONS = ("promote", "abort", "pause", "resume")


class RolloutService:
    def __init__(
        self,
        settings: CanarySettings,
        store: RolloutStore,
        executor: CommandExecutor,
        registry: RegistryAdapter,
    ) -> None:
        self.settings = settings
        self.store = store
        self.executor = executor
        self.registry = registry
        self.policy = settings.policy()
        self.machines: dict[str, RolloutMachine] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._dirty: set[str] = set()
        self.owns: Callable[[str], bool] = lambda model: True

    async def machine(self, model: str) -> RolloutMachine:
        machine = self.machines.get(model)
        if machine is None:
            machine = await self.store.load(model, self.policy)
            self.machines[model] = machine
        return machine

    async def restore(self) -> None:
        """Load every persisted rollout this instance owns (at start and after each rebalance), so active
        ones keep being evaluated; forget the ones another instance owns now."""
        for model in list(self.machines):
            if not self.owns(model):
                async with self._locks[model]:
                    if model in self._dirty:  # its samples since the last tick go with it
                        await self.store.save(self.machines[model])
                    self.machines.pop(model, None)
                    self._dirty.discard(model)
        try:  # rollouts whose state Redis lost end with a recorded decision (lost_rollouts.py)
            await end_lost_rollouts(self.settings, self.store, self.owns, self.machine, self._apply_locked)
        except Exception as exc:  # Kafka unreadable now: the next assignment looks again
            log.warning("cannot check for rollouts whose state was lost: %r", exc)
        for model in await self.store.models():
            if self.settings.watches(model) and self.owns(model) and model not in self.machines:
                machine = await self.machine(model)
                if machine.active is not None:
                    log.info(
                        "resuming rollout %s of %s at step %d",
                        machine.active.rollout_id,
                        model,
                        machine.active.step,
                    )

    async def _apply_locked(self, machine: RolloutMachine, outcome: Outcome) -> None:
        async with self._locks[machine.model]:
            await self._apply(machine, outcome)

    async def _apply(self, machine: RolloutMachine, outcome: Outcome) -> None:
        if outcome.commands:
            await self.executor.execute(machine, outcome.commands)
        await self.store.save(machine)
        self._dirty.discard(machine.model)
        rollout = machine.rollout
        metrics.WEIGHT.labels(machine.model).set(rollout.weight if rollout and rollout.active else 0)

    async def on_alias_changed(self, event: AliasChanged) -> None:
        if not self.settings.watches(event.model):
            return
        champion, challenger = self.settings.champion_alias, self.settings.challenger_alias
        if event.alias not in (champion, challenger):
            return
        async with self._locks[event.model]:
            machine = await self.machine(event.model)
            await self.store.set_alias(event.model, event.alias, event.version)
            now = event.occurred_at
            if event.alias == challenger:
                if event.version is None:
                    outcome = machine.challenger_deleted(now)
                else:
                    champion_version = await self._champion_version(event.model)
                    outcome = machine.challenger_set(event.version, champion_version, now)
            else:
                outcome = machine.champion_moved(event.version, now)
            await self._apply(machine, outcome)

    async def _champion_version(self, model: str) -> str | None:
        known = (await self.store.aliases(model)).get(self.settings.champion_alias)
        if known is not None:
            return known
        return await asyncio.to_thread(self.registry.version_by_alias, model, self.settings.champion_alias)

    async def on_inference(self, event: InferenceRecorded) -> None:
        machine = self.machines.get(event.model)
        if (
            machine is None
            and event.rollout_id is not None
            and self.settings.watches(event.model)
            and self.owns(event.model)
        ):
            machine = await self.machine(event.model)
        if machine is not None and machine.observe_inference_event(event):
            metrics.OBSERVATIONS.labels("inference").inc()
            self._dirty.add(event.model)

    async def on_feedback(self, event: FeedbackRecorded) -> None:
        machine = self.machines.get(event.model)
        if machine is not None and machine.observe_feedback_event(event):
            metrics.OBSERVATIONS.labels("feedback").inc()
            self._dirty.add(event.model)

    async def _resume_lost_split(self, machine: RolloutMachine) -> None:
        """Redis came back empty under a running rollout: its traffic split (and stored state) are gone,
        the gateways send everything to the champion. Set the split back to where the rollout stands and
        store the state again: the rollout resumes, it is not restarted."""
        wanted = machine.wanted_split()
        if wanted is None:
            return
        split = await self.store.split(machine.model)
        if split is not None and split.rollout_id == wanted.rollout_id:
            return
        log.warning(
            "the traffic split of rollout %s of %s was gone (Redis came back empty): set back to %g %%",
            wanted.rollout_id,
            machine.model,
            wanted.weight,
        )
        metrics.SPLITS_RESTORED.inc()
        await self._apply(machine, Outcome((wanted,)))

    async def tick(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        await self.run_commands()
        for model, machine in list(self.machines.items()):
            if not self.owns(model):
                continue
            if machine.active is not None:
                async with self._locks[model]:
                    await self._resume_lost_split(machine)
            if not machine.busy and model not in self._dirty:
                continue
            async with self._locks[model]:
                outcome = machine.tick(now)
                if outcome.commands or model in self._dirty:
                    await self._apply(machine, outcome)

    async def submit(
        self, model: str, action: str, actor: str, reason: str | None = None, timeout_s: float = 15.0
    ) -> list[dict[str, Any]]:
        """An admin action wherever it arrives: applied here when this instance owns the model, else
        handed to the owner through Redis and awaited. Returns the decisions (JSON); raises
        InvalidTransition (-> 409), or TimeoutError when no instance owns the model right now (-> 503)."""
        if self.owns(model):
            outcome = await self.admin(model, action, actor, reason)
            return [d.model_dump(mode="json") for d in outcome.decisions]
        command_id = uuid.uuid4().hex
        command = {"id": command_id, "action": action, "actor": actor, "reason": reason}
        await self.store.enqueue_command(model, json.dumps(command))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            raw = await self.store.command_result(command_id)
            if raw is not None:
                result = json.loads(raw)
                if result.get("error"):
                    raise InvalidTransition(result["error"])
                return list(result["decisions"])
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no canary instance took the {action} of {model} within {timeout_s:.0f}s")

    async def run_commands(self) -> None:
        """Admin actions other instances handed over for the models this one owns."""
        for model in sorted(await self.store.models_with_commands()):
            if not self.owns(model):
                continue
            for raw in await self.store.take_commands(model):
                command = json.loads(raw)
                try:
                    outcome = await self.admin(model, command["action"], command["actor"], command["reason"])
                    result: dict[str, Any] = {
                        "decisions": [d.model_dump(mode="json") for d in outcome.decisions]
                    }
                except (InvalidTransition, ValueError) as exc:
                    result = {"error": str(exc)}
                await self.store.set_command_result(command["id"], json.dumps(result))

    async def view_of(self, model: str) -> dict[str, Any] | None:
        """The view wherever the request arrives: from memory when owned here, else as Redis holds it."""
        if model in self.machines and self.owns(model):
            return self.view(model)
        machine = await self.store.load(model, self.policy)
        return _view(model, machine)

    async def admin(self, model: str, action: str, actor: str, reason: str | None = None) -> Outcome:
        """promote | abort | pause | resume; raises InvalidTransition (-> 409) when not applicable."""
        if action not in ADMIN_ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ADMIN_ACTIONS)}")
        async with self._locks[model]:
            machine = await self.machine(model)
            outcome: Outcome = getattr(machine, action)(actor, datetime.now(UTC), reason)
            await self._apply(machine, outcome)
            return outcome

    def view(self, model: str) -> dict[str, Any] | None:
        """JSON view of a model's current/last rollout for the API and dashboard."""
        machine = self.machines.get(model)
        return _view(model, machine) if machine is not None else None


def _view(model: str, machine: RolloutMachine) -> dict[str, Any] | None:
    if machine.rollout is None:
        return None
    r = machine.rollout
    return {
        "model": model,
        "rollout_id": r.rollout_id,
        "status": r.status.value,
        "active": r.active,
        "step": r.step,
        "shadow": r.shadow,
        "weight": r.weight,
        "weights": list(r.policy.weights),
        "champion_version": r.champion_version,
        "challenger_version": r.challenger_version,
        "failed_checks": r.failed_checks,
        "started_at": r.started_at.isoformat(),
        "step_started_at": r.step_started_at.isoformat(),
        "ended_at": r.ended_at.isoformat() if r.ended_at else None,
        "totals": {
            "champion": r.champion_total.rates(),
            "challenger": r.challenger_total.rates(),
        },
        "last_decision": r.last_decision.model_dump(mode="json") if r.last_decision else None,
        "watch": machine.state.watch.view() if machine.state.watch else None,
    }
