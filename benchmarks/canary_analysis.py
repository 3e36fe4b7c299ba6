"""Simulated rollouts through the real canary state machine: how often does the analysis decide wrongly?

Each rollout is a `RolloutMachine` with the policy under test, fed per check interval with binomial
draws of inferences, errors and ratings for both variants at the current traffic weight (the same counters
the worker keeps; latency is not simulated, so the latency check stays skipped), then ticked. It ends when
the machine rolls back or promotes, or after `max_looks` checks (undecided).

`python -m benchmarks.canary_analysis [--rollouts N]` prints one JSON document; the unit test
`tests/unit/test_sequential_analysis.py` runs the same simulation and asserts the error rates.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from events import CanaryDecisionKind as Kind
from services.canary_rollout.domain import RolloutMachine, RolloutPolicy
from services.canary_rollout.domain.window import Counts

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Variant:
    error_rate: float
    thumbs_up_rate: float


@dataclass(frozen=True)
class Traffic:
    requests_per_look: int = 400
    feedback_share: float = 0.5


@dataclass(frozen=True)
class RolloutResult:
    decision: str  # "promote", "rollback" or "undecided"
    looks: int
    challenger_requests: int
    challenger_ratings: int
    reason: str


def _add(rng: np.random.Generator, counts: list[Counts], n: int, variant: Variant, traffic: Traffic) -> None:
    if n <= 0:
        return
    errors = int(rng.binomial(n, variant.error_rate))
    rated = int(rng.binomial(n - errors, traffic.feedback_share))
    up = int(rng.binomial(rated, variant.thumbs_up_rate))
    for c in counts:
        c.requests += n
        c.errors += errors
        c.thumbs_up += up
        c.thumbs_down += rated - up


def simulate_rollout(
    policy: RolloutPolicy,
    champion: Variant,
    challenger: Variant,
    rng: np.random.Generator,
    traffic: Traffic = Traffic(),
    max_looks: int = 400,
) -> RolloutResult:
    machine = RolloutMachine("sim", policy)
    machine.challenger_set("2", "1", T0)
    rollout = machine.rollout
    assert rollout is not None
    for look in range(1, max_looks + 1):
        n_challenger = int(rng.binomial(traffic.requests_per_look, rollout.weight / 100))
        n_champion = traffic.requests_per_look - n_challenger
        _add(rng, [rollout.champion, rollout.champion_total], n_champion, champion, traffic)
        _add(rng, [rollout.challenger, rollout.challenger_total], n_challenger, challenger, traffic)
        outcome = machine.tick(T0 + timedelta(seconds=policy.check_interval_s * look))
        for record in outcome.decisions:
            if record.decision in (Kind.PROMOTE, Kind.ROLLBACK):
                return RolloutResult(
                    record.decision.value,
                    look,
                    rollout.challenger_total.requests,
                    rollout.challenger_total.feedback,
                    record.reason,
                )
    return RolloutResult("undecided", max_looks, rollout.challenger_total.requests, 0, "")


def simulate(
    policy: RolloutPolicy,
    champion: Variant,
    challenger: Variant,
    rollouts: int,
    seed: int = 0,
    traffic: Traffic = Traffic(),
) -> dict[str, Any]:
    """`rollouts` independent rollouts; the share of each decision and the samples decisions took."""
    rng = np.random.default_rng(seed)
    results = [simulate_rollout(policy, champion, challenger, rng, traffic) for _ in range(rollouts)]
    decided = [r for r in results if r.decision != "undecided"]

    def share(kind: str) -> float:
        return sum(r.decision == kind for r in results) / rollouts

    def quantiles(values: list[int]) -> dict[str, float]:
        if not values:
            return {}
        q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
        return {"p10": q[0], "p50": statistics.median(values), "p90": q[-1]}

    return {
        "rollouts": rollouts,
        "promoted": share("promote"),
        "rolled_back": share("rollback"),
        "undecided": share("undecided"),
        "inconclusive": sum(r.reason.startswith("inconclusive") for r in results) / rollouts,
        "challenger_requests_at_decision": quantiles([r.challenger_requests for r in decided]),
        "challenger_ratings_at_decision": quantiles([r.challenger_ratings for r in decided]),
        "looks_at_decision": quantiles([r.looks for r in decided]),
    }


BASE = Variant(error_rate=0.02, thumbs_up_rate=0.80)
SCENARIOS = {
    "equal": BASE,
    "thumbs_up_5_points_worse": Variant(error_rate=0.02, thumbs_up_rate=0.75),
    "error_rate_5_points_worse": Variant(error_rate=0.07, thumbs_up_rate=0.80),
}


def simulation_policy(analysis: str = "sequential") -> RolloutPolicy:
    """The default policy with checks every minute and 5-minute steps (5 looks per step). No shadow step:
    it is one fixed comparison before the live steps simulated here."""
    return RolloutPolicy(analysis=analysis, check_interval_s=60, step_interval_s=300, shadow_samples=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rollouts", type=int, default=1000)
    modes = ["sequential", "fixed"]
    parser.add_argument("--analysis", choices=modes, nargs="+", default=modes)
    args = parser.parse_args()
    out: dict[str, Any] = {}
    for analysis in args.analysis:
        policy = simulation_policy(analysis)
        out[analysis] = {
            name: simulate(policy, BASE, variant, args.rollouts, seed=i)
            for i, (name, variant) in enumerate(SCENARIOS.items())
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
