"""Pure core of the canary rollout (no I/O): policy, state machine, scipy analysis, routing, commands.

The adapter feeds registry events, observations, admin actions and clock ticks into `RolloutMachine`,
executes the returned `Outcome.commands` in order, and persists `RolloutMachine.to_json()`.
"""

from services.canary_rollout.domain.analysis import Analysis, CheckResult, CheckStatus, Verdict, analyze
from services.canary_rollout.domain.commands import (
    Command,
    DeleteAlias,
    KeepPrevious,
    MoveAlias,
    Outcome,
    Publish,
    SetWeight,
)
from services.canary_rollout.domain.decisions import DecisionRecord, decision_event
from services.canary_rollout.domain.machine import InvalidTransition, RolloutMachine
from services.canary_rollout.domain.policy import DEFAULT_WEIGHTS, RolloutPolicy
from services.canary_rollout.domain.state import CanaryState, RolloutState
from services.canary_rollout.domain.status import RolloutStatus
from services.canary_rollout.domain.window import Counts, VariantWindow
from services.shared.traffic import bucket, choose_variant

__all__ = [
    "DEFAULT_WEIGHTS",
    "Analysis",
    "CanaryState",
    "CheckResult",
    "CheckStatus",
    "Command",
    "Counts",
    "DecisionRecord",
    "DeleteAlias",
    "InvalidTransition",
    "KeepPrevious",
    "MoveAlias",
    "Outcome",
    "Publish",
    "RolloutMachine",
    "RolloutPolicy",
    "RolloutState",
    "RolloutStatus",
    "SetWeight",
    "VariantWindow",
    "Verdict",
    "analyze",
    "bucket",
    "choose_variant",
    "decision_event",
]
