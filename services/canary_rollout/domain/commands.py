"""Commands: the side effects a decision asks for. The core never performs I/O; the adapter executes
these in the order given.

Aliases are named by *role* (`"champion"`, `"challenger"`); the adapter maps roles to the configured
alias names (`FLYWHEEL_CHAMPION_ALIAS`, ...). `KeepPrevious` points the previous-champion alias at the old
champion, so a promotion can be undone by moving `champion` back.

Orders chosen so that no request is ever routed to a version the decision is moving away from:
- promote: KeepPrevious(old) -> MoveAlias(champion -> new) -> SetWeight(0) -> DeleteAlias(challenger) ->
  Publish. At 100 % all traffic already goes to the new version; after the alias move the champion is the
  new version too, so dropping the split and the challenger alias changes nothing for callers.
- roll back / abort: SetWeight(0) -> DeleteAlias(challenger) -> Publish. Traffic leaves the challenger
  first (one Redis write), before the slower registry call.
- every decision ends with Publish, so the event describes a state that has been applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.canary_rollout.domain.decisions import DecisionRecord

AliasRole = Literal["champion", "challenger"]


@dataclass(frozen=True)
class SetWeight:
    """Route `weight` percent of the model's traffic to the challenger (sticky per rollout id)."""

    model: str
    rollout_id: str
    weight: float
    shadow_share: float = 0.0  # the shadow step: weight 0, this share of champion requests mirrored


@dataclass(frozen=True)
class MoveAlias:
    model: str
    alias: AliasRole
    version: str


@dataclass(frozen=True)
class KeepPrevious:
    """Point the previous-champion alias at `version` (the champion being replaced)."""

    model: str
    version: str


@dataclass(frozen=True)
class DeleteAlias:
    model: str
    alias: AliasRole


@dataclass(frozen=True)
class Publish:
    """Publish `decision` (as `decision_event(decision)`) on `flywheel.canary.decisions`."""

    decision: DecisionRecord


Command = SetWeight | MoveAlias | KeepPrevious | DeleteAlias | Publish


@dataclass(frozen=True)
class Outcome:
    """What one input caused: commands to execute in order (empty: nothing changed)."""

    commands: tuple[Command, ...] = field(default_factory=tuple)

    @property
    def decisions(self) -> tuple[DecisionRecord, ...]:
        return tuple(c.decision for c in self.commands if isinstance(c, Publish))

    @property
    def kinds(self) -> list[str]:
        return [d.decision.value for d in self.decisions]

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(self.commands + other.commands)


NOTHING = Outcome()
