"""Pure core of the canary rollout (no I/O): policy, state machine, scipy analysis, routing, commands.

The adapter feeds registry events, observations, admin actions and clock ticks into `RolloutMachine`,
executes the returned `Outcome.commands` in order, and persists `RolloutMachine.to_json()`.
"""

from services.canary_rollout.core.analysis import Analysis, CheckResult, CheckStatus, Verdict, analyze
from services.canary_rollout.core.commands import (
    Command,
    DeleteAlias,
    KeepPrevious,
    MoveAlias,
    Outcome,
    Publish,
    SetWeight,
)
from services.canary_rollout.core.decisions import DecisionRecord, decision_event
from services.canary_rollout.core.machine import InvalidTransition, RolloutMachine
from services.canary_rollout.core.policy import DEFAULT_WEIGHTS, RolloutPolicy
from services.canary_rollout.core.routing import bucket, choose_variant
from services.canary_rollout.core.state import CanaryState, RolloutState
from services.canary_rollout.core.status import RolloutStatus
from services.canary_rollout.core.window import Counts, VariantWindow

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
