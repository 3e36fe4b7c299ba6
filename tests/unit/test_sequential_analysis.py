"""Anytime-valid canary analysis: alpha spending, sequential decisions, error rates by simulation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.canary_analysis import BASE, SCENARIOS, simulate, simulation_policy
from events import CanaryDecisionKind as Kind
from services.canary_rollout.domain import RolloutMachine, RolloutPolicy
from services.canary_rollout.domain.sequential import (
    INFORMATION_STEP,
    SequentialAnalysis,
    SequentialLooks,
    effective_samples,
    spent,
)
from services.canary_rollout.domain.window import Counts
from tests.support.policies import FAST

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("kind", ["obrien_fleming", "pocock"])
def test_spending_functions_spend_all_of_alpha_at_the_horizon_and_never_more(kind: str) -> None:
    assert spent(0.05, 0.0, kind) == 0.0  # type: ignore[arg-type]
    assert spent(0.05, 1.0, kind) == pytest.approx(0.05)  # type: ignore[arg-type]
    assert spent(0.05, 7.0, kind) == pytest.approx(0.05)  # type: ignore[arg-type]
    values = [spent(0.05, t / 20, kind) for t in range(21)]  # type: ignore[arg-type]
    assert values == sorted(values)


def test_obrien_fleming_keeps_early_looks_strict() -> None:
    assert spent(0.05, 0.2) < 0.0001 < spent(0.05, 0.5) < 0.01 < spent(0.05, 0.9)


@given(st.lists(st.floats(min_value=0, max_value=3, allow_nan=False), max_size=60))
def test_levels_of_any_sequence_of_looks_sum_to_at_most_alpha(fractions: list[float]) -> None:
    """The union bound behind the guarantee: whatever the looks, their levels add up to <= alpha."""
    analysis = SequentialAnalysis(RolloutPolicy())
    looks = SequentialLooks()
    total, t = 0.0, 0.0
    for step in fractions:
        t += step / 10
        total += analysis._spend(looks, "harm:error_rate", 0.05, t)
    assert total <= 0.05 + 1e-12


def test_a_test_looks_again_only_at_the_next_information_milestone() -> None:
    analysis = SequentialAnalysis(RolloutPolicy())
    looks = SequentialLooks()
    assert analysis._spend(looks, "x", 0.05, 0.3) > 0
    assert analysis._spend(looks, "x", 0.05, 0.3 + INFORMATION_STEP / 2) == 0.0
    assert analysis._spend(looks, "x", 0.05, 0.3 + INFORMATION_STEP) > 0
    assert analysis._spend(looks, "x", 0.05, 1.0) > 0  # the horizon is always a look
    assert analysis._spend(looks, "x", 0.05, 2.0) == 0.0  # nothing left after it


def test_effective_samples_weigh_the_smaller_arm() -> None:
    assert effective_samples(100, 100) == 100
    assert effective_samples(0, 100) == 0
    assert effective_samples(100, 900) == 180  # the harmonic mean, not the average 500


def counts(requests: int, errors: int, up: int = 0, down: int = 0) -> Counts:
    return Counts(requests=requests, errors=errors, thumbs_up=up, thumbs_down=down)


SMALL = FAST.model_copy(update={"weights": (50.0, 100.0), "step_interval_s": 0})


def test_non_inferiority_needs_the_horizon_of_evidence_and_stays_shown() -> None:
    analysis = SequentialAnalysis(SMALL)
    looks = SequentialLooks()
    early = analysis.look(counts(40, 0), counts(40, 0), None, looks)  # t = 0.1: far too little to show
    assert not early.promotable and early.shown == ()
    late = analysis.look(counts(400, 2), counts(400, 1), None, looks)  # t = 1
    assert late.promotable and late.shown == ("error_rate",), late.metrics()
    again = analysis.look(counts(400, 2), counts(400, 1), None, looks)
    assert again.promotable and again.non_inferiority == []  # a rejected null is not tested again


def test_feedback_makes_the_thumbs_up_rate_a_required_rate() -> None:
    analysis = SequentialAnalysis(SMALL)
    result = analysis.look(counts(400, 1, 180, 20), counts(400, 1, 150, 50), None, SequentialLooks())
    assert result.required == ("error_rate", "thumbs_up")
    assert "thumbs_up" not in result.shown
    (harm,) = [t for t in result.harm if t.name == "thumbs_up"]
    assert harm.rejected, harm  # 25 % thumbs down against 10 %: worse beyond the 5-point tolerance


def feed(m: RolloutMachine, n: int, errors: tuple[int, int], at: datetime) -> None:
    """`n` inferences per variant into the windows and totals (champion errors, challenger errors)."""
    rollout = m.rollout
    assert rollout is not None
    for role, errs in zip(("champion", "challenger"), errors, strict=True):
        for i in range(n):
            assert m.observe_inference(role, "1" if role == "champion" else "2", i >= errs, 10.0, at)


def test_machine_holds_the_last_step_until_non_inferiority_is_shown_then_promotes() -> None:
    m = RolloutMachine("m", SMALL)
    m.challenger_set("2", "1", T0)
    feed(m, 60, (0, 0), T0 + timedelta(seconds=1))
    assert m.tick(T0 + timedelta(seconds=2)).decisions[0].decision is Kind.ADVANCE  # no harm: 50 -> 100 %
    rollout = m.rollout
    assert rollout is not None and rollout.weight == 100
    # At 100 % the champion gets no traffic; its baseline is the previous step.
    for i in range(60):
        assert m.observe_inference("challenger", "2", True, 10.0, T0 + timedelta(seconds=3 + i / 100))
    held = m.tick(T0 + timedelta(seconds=4)).decisions[0]
    assert held.decision is Kind.HOLD and "waiting for evidence" in held.reason, held.reason
    assert held.metrics["sequential"]["required"] == ["error_rate"]


def test_machine_rolls_back_as_inconclusive_when_the_horizon_passes_without_evidence() -> None:
    policy = SMALL.model_copy(update={"sequential_horizon": 60, "max_error_rate_delta": 0.01})
    m = RolloutMachine("m", policy)
    m.challenger_set("2", "1", T0)
    feed(m, 60, (1, 1), T0 + timedelta(seconds=1))
    assert m.tick(T0 + timedelta(seconds=2)).decisions[0].decision is Kind.ADVANCE
    feed(m, 60, (0, 1), T0 + timedelta(seconds=3))
    (record,) = m.tick(T0 + timedelta(seconds=4)).decisions
    assert record.decision is Kind.ROLLBACK and record.reason.startswith("inconclusive"), record.reason


def test_machine_rolls_back_on_shown_harm_with_the_evidence() -> None:
    m = RolloutMachine("m", SMALL)
    m.challenger_set("2", "1", T0)
    feed(m, 200, (2, 30), T0 + timedelta(seconds=1))  # 15 % errors against 1 %: below the catastrophic 20
    (record,) = m.tick(T0 + timedelta(seconds=2)).decisions
    assert record.decision is Kind.ROLLBACK and record.reason.startswith("sequential test"), record.reason
    harm = record.metrics["sequential"]["harm"]["error_rate"]
    assert harm["rejected"] and harm["p_value"] < harm["level"]


def test_simulated_rollouts_keep_both_error_rates_under_repeated_looks() -> None:
    """>= 1,000 simulated rollouts per scenario through the real state machine, 31 checks each when the
    challenger is equal: false rollbacks <= alpha, false promotions of a 5-point-worse challenger <= 5 %."""
    policy = simulation_policy()
    equal = simulate(policy, BASE, SCENARIOS["equal"], 1000, seed=1)
    worse = simulate(policy, BASE, SCENARIOS["thumbs_up_5_points_worse"], 1000, seed=2)
    broken = simulate(policy, BASE, SCENARIOS["error_rate_5_points_worse"], 300, seed=3)
    print(json.dumps({"equal": equal, "thumbs_up_5_points_worse": worse, "error_5_points_worse": broken}))
    assert equal["undecided"] == worse["undecided"] == 0
    assert equal["rolled_back"] <= policy.alpha, equal
    assert worse["promoted"] <= policy.false_promotion_rate, worse
    assert broken["promoted"] <= policy.false_promotion_rate, broken
    # The test has power too: most equal challengers are promoted, on the ratings the horizon asks for.
    assert equal["promoted"] >= 0.9, equal
