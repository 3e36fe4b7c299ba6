"""A rollout in flight never restarts silently: when a restarted worker finds no state for a rollout its
decisions topic says is running (Redis came back empty), it ends the rollout with a recorded decision.

The rollout's state lives in Redis; its decisions are on Kafka (`flywheel.canary.decisions`, kept without
limit). A running worker keeps its rollouts in memory and stores them again (`handlers` sets a vanished
traffic split back); a worker that *starts* on an emptied Redis knows nothing of them: the challenger alias
would stay in MLflow with no traffic and nothing deciding, or a re-published challenger event would start
a new rollout at step 0. So, when partitions are assigned and this worker's consumer group has consumed
before (a fresh namespace has nothing to lose), every owned model whose last decision is not terminal and
that has no stored state gets `RolloutMachine.end_lost`: an ABORT decision continuing its sequence, the
split dropped, the challenger alias deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from events import CANARY_DECISIONS, CanaryDecision
from services.canary_rollout import metrics
from services.canary_rollout.adapters.store import RolloutStore
from services.canary_rollout.domain import Outcome, RolloutMachine
from services.canary_rollout.domain.status import RolloutStatus
from services.canary_rollout.settings import CanarySettings
from services.shared.kafka.admin import group_has_committed
from services.shared.kafka.history_reader import read_events

log = logging.getLogger(__name__)


def last_decisions(events: Sequence[object]) -> dict[str, CanaryDecision]:
    """model -> its last decision (the topic is keyed by model: its order is the decisions' order)."""
    last: dict[str, CanaryDecision] = {}
    for event in events:
        if isinstance(event, CanaryDecision):
            last[event.model] = event
    return last


def next_seq(decision: CanaryDecision) -> int:
    """The sequence number after `decision` (its event id is `{rollout_id}-{seq}`)."""
    tail = decision.event_id.rsplit("-", 1)[-1]
    return int(tail) + 1 if tail.isdigit() else 0


async def end_lost_rollouts(
    settings: CanarySettings,
    store: RolloutStore,
    owns: Callable[[str], bool],
    machine_of: Callable[[str], Awaitable[RolloutMachine]],
    apply: Callable[[RolloutMachine, Outcome], Awaitable[None]],
) -> int:
    """End every owned rollout whose state was lost; returns how many were ended."""
    candidates = await asyncio.to_thread(
        read_events,
        settings.kafka_bootstrap_servers,
        None,
        profile=settings.kafka_profile,
        topics=(CANARY_DECISIONS,),
    )
    stored = await store.models()
    running = {
        model: decision
        for model, decision in last_decisions(candidates).items()
        if not RolloutStatus(decision.state).terminal
        and model not in stored
        and settings.watches(model)
        and owns(model)
    }
    if not running or not await asyncio.to_thread(
        group_has_committed, settings.kafka_bootstrap_servers, settings.canary_group_id
    ):
        return 0
    ended = 0
    for model, decision in sorted(running.items()):
        machine = await machine_of(model)
        if machine.active is not None:  # known after all (started meanwhile)
            continue
        outcome = machine.end_lost(
            decision.rollout_id,
            decision.champion_version,
            decision.challenger_version,
            decision.step,
            decision.weight,
            next_seq(decision),
            datetime.now(UTC),
        )
        await apply(machine, outcome)
        metrics.LOST_ROLLOUTS_ENDED.inc()
        ended += 1
        log.warning(
            "rollout %s of %s: state lost with Redis; ended with a recorded abort", decision.rollout_id, model
        )
    return ended
