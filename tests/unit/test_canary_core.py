"""The pure core of the canary rollout: state machine, scipy analysis, routing, commands, persistence."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy import stats

from events import CanaryDecision, CanaryDecisionKind, FeedbackRating, FeedbackRecorded, InferenceRecorded
from events.codec import decode, encode
from services.canary_rollout.domain import (
    CheckStatus,
    DecisionRecord,
    DeleteAlias,
    InvalidTransition,
    KeepPrevious,
    MoveAlias,
    Outcome,
    Publish,
    RolloutMachine,
    RolloutPolicy,
    RolloutStatus,
    SetWeight,
    VariantWindow,
    Verdict,
    analyze,
    bucket,
    choose_variant,
    decision_event,
)
from tests.support.policies import FAST

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = "fraud"
CHAMP, CHAL = "1", "2"
#: The per-step checks counted by max_failed_checks (FLYWHEEL_CANARY_ANALYSIS=fixed).
FIXED = FAST.model_copy(update={"analysis": "fixed"})
Kind = CanaryDecisionKind


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def machine(policy: RolloutPolicy = FAST) -> RolloutMachine:
    return RolloutMachine(MODEL, policy)


def started(policy: RolloutPolicy = FAST) -> RolloutMachine:
    m = machine(policy)
    m.challenger_set(CHAL, CHAMP, at(0))
    return m


def samples(
    n: int, *, errors: int = 0, latency: float = 100.0, spread: float = 10.0, seed: int = 0
) -> list[tuple[bool, float]]:
    """`n` inferences as (ok, latency ms): the first `errors` fail, latencies ~ N(latency, spread) >= 0."""
    rng = random.Random(seed)
    return [(i >= errors, max(0.0, rng.gauss(latency, spread))) for i in range(n)]


def serve(m: RolloutMachine, variant: str, n: int, *, t: float = 1.0, **traffic: Any) -> int:
    """`n` inferences of `variant` (see `samples`) at `t`; returns how many the machine counted."""
    version = CHAMP if variant == "champion" else CHAL
    return sum(m.observe_inference(variant, version, ok, ms, at(t)) for ok, ms in samples(n, **traffic))


def good_traffic(m: RolloutMachine, t: float, *, champion: bool = True, n: int = 100) -> None:
    if champion:
        assert serve(m, "champion", n, errors=1, t=t, seed=int(t)) == n
    assert serve(m, "challenger", n, errors=1, t=t, seed=int(t) + 1) == n


def weights_set(outcome: Outcome) -> list[float]:
    return [c.weight for c in outcome.commands if isinstance(c, SetWeight)]


def only(outcome: Outcome) -> DecisionRecord:
    (record,) = outcome.decisions
    return record


def walk_to_step(m: RolloutMachine, step: int) -> float:
    """Advance with good data until `step`; returns the time of the last advance."""
    t = 0.0
    assert m.rollout is not None
    while m.rollout.step < step:
        good_traffic(m, t + 1)
        t += 61
        assert only(m.tick(at(t))).decision is Kind.ADVANCE
    return t


def test_a_rollout_whose_state_was_lost_ends_recorded_as_aborted_continuing_its_sequence() -> None:
    m = machine()
    outcome = m.end_lost("fraud-r1", CHAMP, CHAL, 1, 50.0, 7, at(10))
    assert outcome.commands[:-1] == (SetWeight(MODEL, "fraud-r1", 0.0), DeleteAlias(MODEL, "challenger"))
    record = only(outcome)
    assert (record.rollout_id, record.seq, record.decision, record.state) == (
        "fraud-r1",
        7,
        Kind.ABORT,
        RolloutStatus.ABORTED,
    )
    assert "lost" in record.reason and record.event_id == "fraud-r1-7"
    assert m.active is None  # ended: nothing restarts it


# -- start / advance / promote ---------------------------------------------------------------------------


def test_a_lost_split_is_set_back_where_the_rollout_stands_not_restarted() -> None:
    m = machine()
    assert m.wanted_split() is None  # no rollout: nothing to set back
    start = m.challenger_set(CHAL, CHAMP, at(0))
    assert m.wanted_split() == start.commands[0]
    walk_to_step(m, 2)
    r = m.rollout
    assert r is not None
    assert m.wanted_split() == SetWeight(MODEL, r.rollout_id, r.weight) and r.weight == FAST.weights[2]
    m.abort("admin", at(500), "done")
    assert m.wanted_split() is None  # ended: the split stays at 0


def test_start_sets_the_first_weight_and_publishes_start() -> None:
    m = machine()
    outcome = m.challenger_set(CHAL, CHAMP, at(0))
    r = m.rollout
    assert r is not None
    assert outcome.commands[0] == SetWeight(MODEL, r.rollout_id, 5.0)
    record = only(outcome)
    assert (record.decision, record.state, record.step, record.weight) == (
        Kind.START,
        RolloutStatus.PROGRESSING,
        0,
        5.0,
    )
    assert (record.champion_version, record.challenger_version, record.model) == (CHAMP, CHAL, MODEL)
    assert r.status is RolloutStatus.PROGRESSING and r.policy == FAST


def test_good_challenger_advances_through_every_step_and_is_promoted_with_previous_champion() -> None:
    m = started()
    r = m.rollout
    assert r is not None
    seen_weights = [r.weight]
    t = 0.0
    for _ in FAST.weights[:-1]:
        good_traffic(m, t + 1)
        t += 61
        outcome = m.tick(at(t))
        assert only(outcome).decision is Kind.ADVANCE
        seen_weights += weights_set(outcome)
    assert seen_weights == [5.0, 10.0, 25.0, 50.0, 100.0]
    assert (r.step, r.weight) == (4, 100.0)

    # At 100 % the champion gets no traffic: the baseline is its window of the 50 % step.
    good_traffic(m, t + 1, champion=False)
    outcome = m.tick(at(t + 61))
    assert outcome.commands[:-1] == (
        KeepPrevious(MODEL, CHAMP),
        MoveAlias(MODEL, "champion", CHAL),
        SetWeight(MODEL, r.rollout_id, 0.0),
        DeleteAlias(MODEL, "challenger"),
    )
    record = only(outcome)
    assert isinstance(outcome.commands[-1], Publish)
    assert (record.decision, record.state, record.weight, record.actor) == (
        Kind.PROMOTE,
        RolloutStatus.PROMOTED,
        100.0,
        "analysis",
    )
    assert record.metrics["baseline"] == "previous_step"
    assert record.metrics["champion"]["requests"] == 100
    assert r.status is RolloutStatus.PROMOTED
    # Ended: the alias events the promotion itself causes change nothing; the watch runs its course.
    assert m.champion_moved(CHAL, at(t + 62)).commands == ()
    assert m.challenger_deleted(at(t + 62)).commands == ()
    assert not m.observe_inference("challenger", CHAL, True, 1.0, at(t + 63))
    assert only(m.tick(at(t + 1000))).decision is Kind.WATCH_PASSED
    assert m.tick(at(t + 2000)).commands == () and m.state.watch is None


def test_holds_until_the_step_interval_elapsed() -> None:
    m = started()
    good_traffic(m, 1)
    record = only(m.tick(at(30)))
    assert record.decision is Kind.HOLD and "interval" in record.reason
    assert m.rollout is not None and m.rollout.step == 0
    assert only(m.tick(at(60))).decision is Kind.ADVANCE


def test_holds_below_min_samples_even_with_great_data() -> None:
    m = started()
    serve(m, "champion", 1000, errors=300, latency=500)  # champion terrible
    serve(m, "challenger", FAST.min_samples_per_variant - 1, latency=10)  # challenger perfect, too few
    for minute in range(1, 30):
        record = only(m.tick(at(minute * 600)))
        assert record.decision is Kind.HOLD
        assert record.metrics["verdict"] == Verdict.INSUFFICIENT
    assert m.rollout is not None and (m.rollout.step, m.rollout.weight) == (0, 5.0)


def test_never_promotes_below_min_samples_at_the_last_step() -> None:
    m = started()
    t = walk_to_step(m, FAST.last_step)
    serve(m, "challenger", FAST.min_samples_per_variant - 1, t=t + 1)
    for k in range(1, 10):
        assert only(m.tick(at(t + k * 1000))).decision is Kind.HOLD
    assert m.rollout is not None and m.rollout.status is RolloutStatus.PROGRESSING


def test_check_interval_limits_how_often_the_analysis_runs() -> None:
    m = started(FAST.model_copy(update={"check_interval_s": 30}))
    good_traffic(m, 1)
    assert m.tick(at(10)).commands == ()
    assert only(m.tick(at(30))).decision is Kind.HOLD
    assert m.tick(at(59)).commands == ()
    assert only(m.tick(at(61))).decision is Kind.ADVANCE


# -- rollback ----------------------------------------------------------------------------------------------


def test_bad_challenger_is_rolled_back_after_max_failed_checks_without_leaving_the_first_step() -> None:
    m = started(FIXED)
    r = m.rollout
    assert r is not None
    all_weights = [r.weight]
    kinds: list[str] = []
    for k in range(1, 10):
        serve(m, "champion", 100, errors=1, t=k * 100, seed=k)
        serve(m, "challenger", 100, errors=12, t=k * 100, seed=k + 50)  # 12 % vs 1 %: bad, not catastrophic
        outcome = m.tick(at(k * 100 + 61))
        kinds += outcome.kinds
        all_weights += weights_set(outcome)
        all_weights.append(r.weight)
    assert kinds == ["hold", "hold", "rollback"]
    assert max(all_weights) == FAST.weights[0]
    assert r.status is RolloutStatus.ROLLED_BACK and r.failed_checks == FAST.max_failed_checks
    assert r.weight == 0.0


def test_rollback_commands_drop_traffic_then_delete_the_challenger() -> None:
    m = started(FIXED)
    r = m.rollout
    assert r is not None
    outcome = Outcome()
    for k in range(1, 4):
        serve(m, "champion", 100, errors=1, t=k)
        serve(m, "challenger", 100, errors=12, t=k)
        outcome = m.tick(at(k * 61))
    assert outcome.commands[:-1] == (SetWeight(MODEL, r.rollout_id, 0.0), DeleteAlias(MODEL, "challenger"))
    record = only(outcome)
    assert (record.decision, record.state, record.weight) == (Kind.ROLLBACK, RolloutStatus.ROLLED_BACK, 0.0)
    assert "3/3 failed checks" in record.reason
    assert record.metrics["checks"]["error_rate"]["status"] == "fail"
    assert record.metrics["checks"]["error_rate"]["p_value"] < FAST.alpha


def test_failed_checks_count_over_the_whole_rollout() -> None:
    """A pass in between does not reset the count: the third failure anywhere rolls back."""
    m = started(FIXED)
    r = m.rollout
    assert r is not None
    for k in range(1, 3):
        serve(m, "champion", 100, errors=1, t=k)
        serve(m, "challenger", 100, errors=12, t=k)
        assert only(m.tick(at(k))).decision is Kind.HOLD
    assert r.failed_checks == 2
    # Much more good data dilutes the bad start: the step passes and advances.
    serve(m, "champion", 3000, errors=30, t=3, seed=3)
    serve(m, "challenger", 3000, errors=30, t=3, seed=4)
    assert only(m.tick(at(61))).decision is Kind.ADVANCE
    serve(m, "champion", 100, errors=1, t=62)
    serve(m, "challenger", 100, errors=12, t=62)
    assert only(m.tick(at(70))).decision is Kind.ROLLBACK


def test_catastrophic_error_rate_rolls_back_immediately_even_below_min_samples() -> None:
    m = started()
    serve(m, "champion", 500, errors=0)
    serve(m, "challenger", 30, errors=15)  # 50 % errors, fewer than min_samples_per_variant
    outcome = m.tick(at(1))
    record = only(outcome)
    assert record.decision is Kind.ROLLBACK and "catastrophic" in record.reason
    assert record.metrics["verdict"] == Verdict.CATASTROPHIC
    assert DeleteAlias(MODEL, "challenger") in outcome.commands
    assert m.rollout is not None and m.rollout.failed_checks == 0


def test_catastrophic_rule_waits_for_its_minimum_sample() -> None:
    m = started(FIXED)
    serve(m, "champion", 500, errors=0)
    serve(m, "challenger", FAST.catastrophic_min_samples - 1, errors=FAST.catastrophic_min_samples - 1)
    assert only(m.tick(at(1))).decision is Kind.HOLD
    serve(m, "challenger", 1, errors=1, t=2)
    assert only(m.tick(at(2))).decision is Kind.ROLLBACK


# -- registry events ---------------------------------------------------------------------------------------


def test_new_challenger_restarts_the_rollout() -> None:
    m = started()
    t = walk_to_step(m, 2)
    old = m.rollout
    assert old is not None
    outcome = m.challenger_set("3", CHAMP, at(t + 5))
    assert outcome.kinds == ["restart", "start"]
    restart, start = outcome.decisions
    assert (restart.rollout_id, restart.challenger_version, restart.state) == (
        old.rollout_id,
        CHAL,
        RolloutStatus.ABORTED,
    )
    new = m.rollout
    assert new is not None and new is not old
    assert (start.rollout_id, new.challenger_version, new.step, new.weight) == (new.rollout_id, "3", 0, 5.0)
    assert new.rollout_id != old.rollout_id
    assert new.challenger_total.requests == 0
    assert weights_set(outcome) == [0.0, 5.0]
    # At-least-once delivery: the same event again changes nothing.
    assert m.challenger_set("3", CHAMP, at(t + 6)).commands == ()


def test_challenger_deleted_by_hand_aborts() -> None:
    m = started()
    r = m.rollout
    assert r is not None
    outcome = m.challenger_deleted(at(5))
    assert outcome.commands[:-1] == (SetWeight(MODEL, r.rollout_id, 0.0),)  # alias already gone
    record = only(outcome)
    assert (record.decision, record.state, record.weight, record.actor) == (
        Kind.ABORT,
        RolloutStatus.ABORTED,
        0.0,
        "registry",
    )
    assert m.challenger_deleted(at(6)).commands == ()
    assert m.tick(at(600)).commands == ()


def test_champion_moved_to_the_challenger_by_someone_else_ends_as_promoted() -> None:
    m = started()
    walk_to_step(m, 1)
    r = m.rollout
    assert r is not None
    outcome = m.champion_moved(CHAL, at(500))
    assert outcome.commands[:-1] == (
        KeepPrevious(MODEL, CHAMP),
        SetWeight(MODEL, r.rollout_id, 0.0),
        DeleteAlias(MODEL, "challenger"),
    )
    assert only(outcome).decision is Kind.PROMOTE
    assert r.status is RolloutStatus.PROMOTED


def test_champion_moved_to_a_third_version_restarts_and_deleted_champion_aborts() -> None:
    m = started()
    walk_to_step(m, 1)
    outcome = m.champion_moved("7", at(500))
    assert outcome.kinds == ["restart", "start"]
    assert m.rollout is not None and (m.rollout.champion_version, m.rollout.step) == ("7", 0)
    assert m.champion_moved("7", at(501)).commands == ()  # duplicate
    outcome = m.champion_moved(None, at(502))
    assert outcome.kinds == ["abort"]
    assert not any(isinstance(c, DeleteAlias) for c in outcome.commands)


def test_pending_without_champion_starts_when_a_champion_appears() -> None:
    m = machine()
    record = only(m.challenger_set(CHAL, None, at(0)))
    assert (record.decision, record.state, record.weight) == (Kind.HOLD, RolloutStatus.PENDING, 0.0)
    assert not m.observe_inference("challenger", CHAL, True, 1.0, at(1))
    assert m.tick(at(1000)).commands == ()
    outcome = m.champion_moved(CHAMP, at(10))
    assert outcome.kinds == ["start"] and weights_set(outcome) == [5.0]
    assert m.rollout is not None and m.rollout.status is RolloutStatus.PROGRESSING


def test_challenger_equal_to_champion_starts_nothing() -> None:
    m = machine()
    assert m.challenger_set(CHAMP, CHAMP, at(0)).commands == ()
    assert m.rollout is None


# -- pause / resume / admin --------------------------------------------------------------------------------


def test_paused_rollout_does_not_advance_until_resumed() -> None:
    m = started()
    r = m.rollout
    assert r is not None
    pause = only(m.pause("alice", at(1)))
    assert (pause.decision, pause.state, pause.actor, pause.weight) == (
        Kind.PAUSE,
        RolloutStatus.PAUSED,
        "alice",
        5.0,
    )
    good_traffic(m, 2)  # still recorded while paused: traffic keeps flowing at the current weight
    for k in range(1, 10):
        assert m.tick(at(k * 1000)).commands == ()
    assert (r.step, r.challenger.requests) == (0, 100)
    with pytest.raises(InvalidTransition):
        m.pause("alice", at(2))
    resume = only(m.resume("alice", at(10_000)))
    assert (resume.decision, resume.state) == (Kind.RESUME, RolloutStatus.PROGRESSING)
    assert only(m.tick(at(10_001))).decision is Kind.ADVANCE
    with pytest.raises(InvalidTransition):
        m.resume("alice", at(10_002))


def test_paused_rollout_is_not_rolled_back_automatically() -> None:
    m = started()
    m.pause("alice", at(1))
    serve(m, "champion", 500)
    serve(m, "challenger", 100, errors=100)
    assert m.tick(at(100)).commands == ()
    m.resume("alice", at(101))
    assert only(m.tick(at(102))).decision is Kind.ROLLBACK


def test_pause_while_pending_resumes_to_pending_or_starts_if_a_champion_arrived() -> None:
    m = machine()
    m.challenger_set(CHAL, None, at(0))
    m.pause("bob", at(1))
    assert only(m.resume("bob", at(2))).state is RolloutStatus.PENDING
    m.pause("bob", at(3))
    assert m.champion_moved(CHAMP, at(4)).commands == ()
    outcome = m.resume("bob", at(5))
    assert outcome.kinds == ["resume", "start"]
    assert m.rollout is not None and m.rollout.status is RolloutStatus.PROGRESSING


def test_admin_promote_moves_aliases_immediately() -> None:
    m = started()
    outcome = m.promote("carol", at(1))
    assert [type(c) for c in outcome.commands] == [KeepPrevious, MoveAlias, SetWeight, DeleteAlias, Publish]
    assert outcome.commands[1] == MoveAlias(MODEL, "champion", CHAL)
    record = only(outcome)
    assert (record.decision, record.actor, record.reason) == (Kind.PROMOTE, "carol", "promoted by carol")
    with pytest.raises(InvalidTransition):
        m.promote("carol", at(2))
    with pytest.raises(InvalidTransition):
        m.abort("carol", at(2))


def test_admin_abort_drops_traffic_and_the_challenger() -> None:
    m = started()
    m.pause("dave", at(1))
    outcome = m.abort("dave", at(2), reason="looks wrong")
    assert [type(c) for c in outcome.commands] == [SetWeight, DeleteAlias, Publish]
    record = only(outcome)
    assert (record.decision, record.state, record.actor, record.reason) == (
        Kind.ABORT,
        RolloutStatus.ABORTED,
        "dave",
        "looks wrong",
    )


def test_admin_actions_without_a_rollout_are_invalid() -> None:
    m = machine()
    for action in (m.promote, m.abort, m.pause, m.resume):
        with pytest.raises(InvalidTransition):
            action("eve", at(0))


def test_naive_timestamps_are_refused() -> None:
    m = machine()
    with pytest.raises(ValueError, match="timezone"):
        m.challenger_set(CHAL, CHAMP, datetime(2026, 1, 1))


# -- observations ------------------------------------------------------------------------------------------


def test_observations_of_other_versions_or_variants_are_ignored() -> None:
    m = started()
    r = m.rollout
    assert r is not None
    assert not m.observe_inference("challenger", "9", False, 1.0, at(1))
    assert not m.observe_inference("champion", "9", False, 1.0, at(1))
    assert not m.observe_inference("champion", CHAL, False, 1.0, at(1))  # label and version disagree
    assert not m.observe_inference("pinned", CHAMP, False, 1.0, at(1))
    assert not m.observe_feedback("challenger", "9", False, at(1))
    assert not m.observe_inference("challenger", CHAL, False, 1.0, at(-1))  # before the rollout
    assert r.champion_total.requests == r.challenger_total.requests == 0
    assert r.challenger_total.thumbs_down == 0
    assert m.observe_inference("challenger", CHAL, False, 1.0, at(1))
    assert m.observe_feedback(None, CHAMP, True, at(1))
    assert (r.challenger.errors, r.champion.thumbs_up) == (1, 1)


def test_event_helpers_check_model_and_rollout_id() -> None:
    m = started()
    r = m.rollout
    assert r is not None

    def inference(**kw: object) -> InferenceRecorded:
        base: dict[str, object] = {
            "producer": "gw",
            "model": MODEL,
            "version": CHAL,
            "variant": "challenger",
            "rollout_id": r.rollout_id,
            "request_id": "q",
            "replica": "r1",
            "status": "error",
            "latency_ms": 12.0,
            "occurred_at": at(1),
        }
        return InferenceRecorded.model_validate({**base, **kw})

    assert m.observe_inference_event(inference())
    assert not m.observe_inference_event(inference(model="other"))
    assert not m.observe_inference_event(inference(rollout_id="r-old"))
    assert m.observe_inference_event(inference(rollout_id=None, status="ok"))
    assert (r.challenger.requests, r.challenger.errors, r.challenger.latencies_ms) == (2, 1, [12.0])
    feedback = FeedbackRecorded(
        producer="gw",
        feedback_id="f",
        model=MODEL,
        version=CHAMP,
        request_id="q",
        rating=FeedbackRating.THUMBS_DOWN,
        occurred_at=at(2),
    )
    assert m.observe_feedback_event(feedback)
    assert r.champion.thumbs_down == 1


def test_windows_reset_per_step_but_totals_accumulate() -> None:
    m = started()
    walk_to_step(m, 2)
    r = m.rollout
    assert r is not None
    assert r.challenger.requests == 0 and r.champion.requests == 0
    assert r.challenger_total.requests == 200 and r.champion_total.requests == 200
    assert r.champion_baseline is not None and r.champion_baseline.requests == 100
    # A late observation from before the current step counts in the totals only.
    assert m.observe_inference("challenger", CHAL, True, 5.0, at(1))
    assert (r.challenger.requests, r.challenger_total.requests) == (0, 201)


def test_latency_samples_are_bounded_and_deterministic() -> None:
    a, b = VariantWindow(seed="s"), VariantWindow(seed="s")
    for i in range(20_000):
        a.add_inference(True, float(i), capacity=500)
        b.add_inference(True, float(i), capacity=500)
    a.add_inference(False, 1e9, capacity=500)  # a failure: counted, its latency not sampled
    assert len(a.latencies_ms) == 500 and a.latencies_seen == 20_000
    assert a.requests == 20_001 and a.errors == 1 and 1e9 not in a.latencies_ms
    assert a.latencies_ms == b.latencies_ms
    # A reservoir over the whole window, not the last N: the mean is near the middle.
    assert 8_000 < sum(a.latencies_ms) / 500 < 12_000


def test_step_window_keeps_at_most_the_policy_cap() -> None:
    m = started(FAST.model_copy(update={"max_latency_samples": 50}))
    serve(m, "challenger", 400)
    assert m.rollout is not None and len(m.rollout.challenger.latencies_ms) == 50


# -- persistence -------------------------------------------------------------------------------------------


def test_json_round_trip_mid_rollout_resumes_at_the_same_step() -> None:
    m = started()
    t = walk_to_step(m, 2)
    good_traffic(m, t + 1)
    m.observe_feedback("challenger", CHAL, True, at(t + 2))
    m.tick(at(t + 10))  # a HOLD, so last_decision and seq are set
    saved = m.to_json()
    other_policy = RolloutPolicy(weights=(50.0, 100.0), min_samples_per_variant=10_000)
    restored = RolloutMachine.from_json(saved, other_policy)
    assert restored.state == m.state
    assert restored.to_json() == saved
    r = restored.rollout
    assert r is not None and (r.step, r.weight, r.policy) == (2, 25.0, FAST)  # the rollout keeps its policy
    # Both continue identically.
    for mm in (m, restored):
        good_traffic(mm, t + 20)
    a, b = m.tick(at(t + 61)), restored.tick(at(t + 61))
    assert a == b and only(a).decision is Kind.ADVANCE and only(a).step == 3


# -- decision records and events ---------------------------------------------------------------------------


def test_decision_event_maps_every_field_and_is_valid_json() -> None:
    m = started()
    good_traffic(m, 1)
    m.observe_feedback("challenger", CHAL, False, at(2))
    record = only(m.tick(at(61)))
    event = decision_event(record)
    assert isinstance(event, CanaryDecision)
    for name in (
        "model",
        "rollout_id",
        "decision",
        "champion_version",
        "challenger_version",
        "step",
        "weight",
        "reason",
        "actor",
    ):
        assert getattr(event, name) == getattr(record, name), name
    assert event.state == record.state.value == "progressing"
    assert event.occurred_at == record.at
    assert event.event_id == f"{record.rollout_id}-{record.seq}" == decision_event(record).event_id
    metrics = event.metrics
    for variant in ("champion", "challenger"):
        for key in ("requests", "error_rate", "p95_latency_ms", "thumbs_up_rate"):
            assert key in metrics[variant]
    assert metrics["checks"]["error_rate"]["p_value"] is not None
    assert metrics["totals"]["challenger"]["thumbs_down"] == 1
    decoded = decode(encode(event), CanaryDecision)
    assert decoded.metrics == json.loads(json.dumps(metrics))
    assert decoded.decision is Kind.ADVANCE


def test_decision_sequence_numbers_are_consecutive() -> None:
    m = started()
    walk_to_step(m, 3)
    assert m.rollout is not None and m.rollout.last_decision is not None
    assert m.rollout.last_decision.seq == 3 and m.rollout.seq == 4


# -- analysis ----------------------------------------------------------------------------------------------


def window(n: int, *, up: int = 0, down: int = 0, seed: int = 0, **traffic: Any) -> VariantWindow:
    """A window of `n` inferences (see `samples`) and `up`/`down` ratings."""
    w = VariantWindow(seed=str(seed))
    for ok, ms in samples(n, seed=seed, **traffic):
        w.add_inference(ok, ms)
    for _ in range(up):
        w.add_feedback(True)
    for _ in range(down):
        w.add_feedback(False)
    return w


POLICY = RolloutPolicy(min_samples_per_variant=100, min_feedback=30)


def test_analysis_clearly_worse_error_rate_fails_with_scipy_p_value() -> None:
    champion, challenger = window(1000, errors=10, seed=1), window(1000, errors=80, seed=2)
    result = analyze(champion, challenger, POLICY)
    assert result.verdict is Verdict.FAIL
    check = result.checks["error_rate"]
    assert check.status is CheckStatus.FAIL
    expected = stats.fisher_exact([[80, 920], [10, 990]], alternative="greater").pvalue
    assert check.p_value == pytest.approx(expected)
    assert check.delta == pytest.approx(0.07)


def test_analysis_equal_data_passes() -> None:
    result = analyze(window(1000, errors=10, seed=1), window(1000, errors=10, seed=2), POLICY)
    assert result.verdict is Verdict.PASS
    assert all(c.status is not CheckStatus.FAIL for c in result.checks.values())
    assert result.checks["latency"].p_value is not None and result.checks["latency"].p_value > POLICY.alpha


def test_analysis_latency_regression_fails() -> None:
    champion, challenger = window(1000, latency=100, seed=1), window(1000, latency=160, seed=2)
    result = analyze(champion, challenger, POLICY)
    assert result.verdict is Verdict.FAIL
    check = result.checks["latency"]
    assert check.status is CheckStatus.FAIL and check.ratio is not None and check.ratio > 1.25
    expected = stats.mannwhitneyu(
        challenger.latencies_ms, champion.latencies_ms, alternative="greater"
    ).pvalue
    assert check.p_value == pytest.approx(expected)
    assert result.checks["error_rate"].status is CheckStatus.PASS


def test_analysis_faster_challenger_passes_latency() -> None:
    result = analyze(window(1000, latency=100, seed=1), window(1000, latency=60, seed=2), POLICY)
    assert result.checks["latency"].status is CheckStatus.PASS


def test_analysis_significant_but_tolerated_difference_passes() -> None:
    """Huge samples make a 0.5-point error increase significant; it is within the 2-point tolerance."""
    champion, challenger = window(100_000, errors=1000, seed=1), window(100_000, errors=1500, seed=2)
    result = analyze(champion, challenger, POLICY)
    check = result.checks["error_rate"]
    assert check.p_value is not None and check.p_value < 1e-6
    assert check.status is CheckStatus.PASS and result.verdict is Verdict.PASS


def test_analysis_thumbs_up_worse_fails_and_needs_min_feedback() -> None:
    champion = window(500, up=160, down=40, seed=1)  # 80 % thumbs-up
    challenger = window(500, up=100, down=100, seed=2)  # 50 %
    result = analyze(champion, challenger, POLICY)
    assert result.verdict is Verdict.FAIL and result.checks["thumbs_up"].status is CheckStatus.FAIL
    few = analyze(window(500, up=16, down=4, seed=1), window(500, up=5, down=15, seed=2), POLICY)
    assert few.checks["thumbs_up"].status is CheckStatus.SKIPPED and few.verdict is Verdict.PASS
    strict = POLICY.model_copy(update={"require_feedback": True})
    assert analyze(window(500, seed=1), window(500, seed=2), strict).verdict is Verdict.INSUFFICIENT


def test_analysis_below_min_samples_is_insufficient() -> None:
    result = analyze(window(1000, errors=500, seed=1), window(99, seed=2), POLICY)
    assert result.verdict is Verdict.INSUFFICIENT


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=100, max_value=2000),
    error_rate=st.floats(min_value=0.0, max_value=0.5),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_analysis_never_fails_a_challenger_identical_to_the_champion(
    n: int, error_rate: float, seed: int
) -> None:
    errors = int(n * error_rate)
    same = window(n, errors=errors, seed=seed)
    twin = VariantWindow.model_validate(same.model_dump())
    assert analyze(same, twin, POLICY).verdict is Verdict.PASS


# -- routing -----------------------------------------------------------------------------------------------


def test_routing_is_sticky_and_extreme_weights_are_exact() -> None:
    keys = [f"user-{i}" for i in range(2000)]
    assert [choose_variant("r-1", k, 25) for k in keys] == [choose_variant("r-1", k, 25) for k in keys]
    assert all(choose_variant("r-1", k, 0) == "champion" for k in keys)
    assert all(choose_variant("r-1", k, 100) == "challenger" for k in keys)
    with pytest.raises(ValueError):
        choose_variant("r-1", "u", 100.5)
    with pytest.raises(ValueError):
        choose_variant("r-1", "u", float("nan"))


@settings(max_examples=200)
@given(key=st.text(max_size=40))
def test_routing_threshold_is_exact_at_the_bucket_boundary(key: str) -> None:
    """Bucket b is on the challenger exactly from weight (b + 1) / 100 %: weight 0 routes nobody."""
    b = bucket("r-edge", key)
    assert choose_variant("r-edge", key, b / 100) == "champion"
    assert choose_variant("r-edge", key, (b + 1) / 100) == "challenger"


@pytest.mark.parametrize("weight", [5.0, 10.0, 25.0, 50.0, 2.5])
def test_routing_share_converges_to_the_weight_over_20k_keys(weight: float) -> None:
    share = sum(choose_variant("r-abc", f"user-{i}", weight) == "challenger" for i in range(20_000)) / 20_000
    assert share == pytest.approx(weight / 100, abs=0.01)


def test_a_new_rollout_reshuffles_users() -> None:
    keys = [f"user-{i}" for i in range(5000)]
    first = {k for k in keys if choose_variant("r-1", k, 10) == "challenger"}
    second = {k for k in keys if choose_variant("r-2", k, 10) == "challenger"}
    assert len(first & second) < 0.5 * len(first)


@settings(max_examples=300)
@given(
    rollout_id=st.text(min_size=1, max_size=30),
    key=st.text(max_size=40),
    w1=st.floats(min_value=0, max_value=100),
    w2=st.floats(min_value=0, max_value=100),
)
def test_routing_is_monotonic_in_the_weight(rollout_id: str, key: str, w1: float, w2: float) -> None:
    low, high = sorted((w1, w2))
    assert 0 <= bucket(rollout_id, key) < 10_000
    if choose_variant(rollout_id, key, low) == "challenger":
        assert choose_variant(rollout_id, key, high) == "challenger"


# -- policy ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [(), (100.0,), (5.0, 50.0), (10.0, 5.0, 100.0), (5.0, 5.0, 100.0), (0.0, 100.0), (50.0, 120.0)],
)
def test_policy_rejects_bad_schedules(weights: tuple[float, ...]) -> None:
    with pytest.raises(ValidationError):
        RolloutPolicy(weights=weights)


def test_policy_defaults_and_immutability() -> None:
    policy = RolloutPolicy()
    assert policy.weights == (5.0, 10.0, 25.0, 50.0, 100.0)
    with pytest.raises(ValidationError):
        policy.alpha = 0.5  # type: ignore[misc]


# -- invariants over random histories ----------------------------------------------------------------------

action = st.one_of(
    st.tuples(
        st.just("serve"), st.sampled_from(["champion", "challenger"]), st.integers(1, 80), st.floats(0, 1)
    ),
    st.tuples(st.just("tick"), st.integers(0, 120)),
    st.tuples(st.just("pause")),
    st.tuples(st.just("resume")),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(action, max_size=40))
def test_random_histories_keep_the_invariants(actions: list[tuple[object, ...]]) -> None:
    m = started()
    r = m.rollout
    assert r is not None
    t, last_step, last_seq = 0.0, 0, r.seq
    for act in actions:
        outcome = Outcome()
        if act[0] == "serve":
            _, variant, n, bad_share = act
            assert isinstance(n, int) and isinstance(bad_share, float)
            counted = serve(m, str(variant), n, errors=int(n * bad_share), t=t, seed=int(t))
            assert counted == (n if r.status in (RolloutStatus.PROGRESSING, RolloutStatus.PAUSED) else 0)
        elif act[0] == "tick":
            assert isinstance(act[1], int)
            t += act[1]
            outcome = m.tick(at(t))
        elif act[0] == "pause" and r.status in (RolloutStatus.PROGRESSING, RolloutStatus.PENDING):
            outcome = m.pause("x", at(t))
        elif act[0] == "resume" and r.status is RolloutStatus.PAUSED:
            outcome = m.resume("x", at(t))
        assert r.weight in (0.0, *FAST.weights)
        assert r.step >= last_step and r.step - last_step <= 1
        for record in outcome.decisions:
            assert record.seq == last_seq
            last_seq += 1
            if record.decision is Kind.ADVANCE or (
                record.decision is Kind.PROMOTE and record.actor == "analysis"
            ):
                sequential = record.metrics["sequential"]
                assert not any(test["rejected"] for test in sequential["harm"].values())
                assert record.metrics["challenger"]["requests"] >= FAST.min_samples_per_variant
                if record.decision is Kind.PROMOTE:
                    assert set(sequential["required"]) <= set(sequential["shown"])
        last_step = r.step
        if r.status.terminal:
            assert m.tick(at(t + 10_000)).commands == ()


# -- post-promotion watch ------------------------------------------------------------------------------
WATCHED = FAST.model_copy(update={"watch_s": 300})


def promoted_and_watched() -> tuple[RolloutMachine, float]:
    """A rollout with a recorded champion baseline (1 % errors), promoted by an admin at t=61."""
    m = started(WATCHED)
    good_traffic(m, 1)
    assert only(m.promote("alice", at(61))).decision is Kind.PROMOTE
    assert m.state.watch is not None and m.state.watch.version == CHAL
    return m, 61.0


def serve_as_champion(m: RolloutMachine, n: int, errors: int, t: float) -> None:
    for i in range(n):
        assert m.observe_inference("champion", CHAL, i >= errors, 100.0, at(t))


def test_watch_reverts_a_promoted_version_that_regresses_with_the_evidence() -> None:
    m, t = promoted_and_watched()
    serve_as_champion(m, 100, 40, t + 5)  # 40 % errors after promotion against 1 % before
    outcome = m.tick(at(t + 10))
    assert outcome.commands[:2] == (MoveAlias(MODEL, "champion", CHAMP), KeepPrevious(MODEL, CHAL))
    record = only(outcome)
    assert (record.decision, record.state, record.actor) == (
        Kind.REVERTED,
        RolloutStatus.REVERTED,
        "analysis",
    )
    assert record.metrics["baseline"] == "previous_champion" and "after promotion" in record.reason
    assert record.metrics["challenger"]["errors"] == 40  # the promoted version's numbers since promotion
    assert m.state.watch is None
    assert m.rollout is not None and m.rollout.status is RolloutStatus.REVERTED
    assert m.champion_moved(CHAMP, at(t + 11)).commands == ()  # the revert's own echo


def test_watch_passes_quietly_and_ignores_traffic_of_other_versions() -> None:
    m, t = promoted_and_watched()
    serve_as_champion(m, 100, 1, t + 5)
    assert not m.observe_inference("champion", CHAMP, False, 1.0, at(t + 6))  # the old version
    assert not m.observe_inference("challenger", CHAL, False, 1.0, at(t + 6))  # not served as champion
    assert m.tick(at(t + 10)).commands == ()
    restored = RolloutMachine.from_json(m.to_json())  # the watch survives a restart
    assert restored.state.watch == m.state.watch
    record = only(restored.tick(at(t + 301)))
    assert record.decision is Kind.WATCH_PASSED and "no regression" in record.reason
    assert restored.state.watch is None


def test_champion_moved_elsewhere_ends_the_watch_and_a_new_rollout_runs_beside_it() -> None:
    m, t = promoted_and_watched()
    m.challenger_set("3", CHAL, at(t + 1))  # the next challenger starts while the watch goes on
    assert m.state.watch is not None and m.active is not None
    m.champion_moved("7", at(t + 2))  # someone else set champion: nothing left to watch
    assert m.state.watch is None
    serve_as_champion(m, 0, 0, t + 3)
    assert all(d.decision is not Kind.REVERTED for d in m.tick(at(t + 400)).decisions)


def test_no_watch_when_it_is_switched_off() -> None:
    m = started(FAST.model_copy(update={"watch_s": 0}))
    m.promote("alice", at(1))
    assert m.state.watch is None


# -- shadow step ---------------------------------------------------------------------------------------
SHADOW = FAST.model_copy(update={"shadow_samples": 40, "shadow_share": 0.5})


def mirror(m: RolloutMachine, n: int, *, errors: int = 0, agree: int | None = None, t: float = 1.0) -> None:
    """`n` champion answers, each mirrored: the first `errors` shadow answers fail, `agree` of them (all by
    default) equal the champion's."""
    agree = n if agree is None else agree
    for i in range(n):
        assert m.observe_inference("champion", CHAMP, True, 100.0, at(t))
        assert m.observe_inference("shadow", CHAL, i >= errors, 100.0, at(t), agrees=i < agree)


def test_shadow_step_comes_first_mirrors_a_share_and_counts_nothing_as_served() -> None:
    m = machine(SHADOW)
    outcome = m.challenger_set(CHAL, CHAMP, at(0))
    assert outcome.commands[0] == SetWeight(MODEL, m.rollout.rollout_id, 0.0, 0.5)  # type: ignore[union-attr]
    assert "shadow step" in only(outcome).reason
    assert not m.observe_inference("challenger", CHAL, True, 1.0, at(1))  # nobody is live on it yet
    mirror(m, 10)
    r = m.rollout
    assert r is not None and r.shadow and r.challenger_total.requests == 0 and r.challenger.compared == 10
    held = only(m.tick(at(2)))
    assert held.decision is Kind.HOLD and "10/40 mirrored answers" in held.reason


def test_a_sound_challenger_passes_the_shadow_step_and_goes_live_at_the_first_weight() -> None:
    m = machine(SHADOW)
    m.challenger_set(CHAL, CHAMP, at(0))
    mirror(m, 60, agree=54)
    outcome = m.tick(at(2))
    record = only(outcome)
    assert record.decision is Kind.ADVANCE and record.reason.startswith("shadow step passed"), record.reason
    assert record.metrics["shadow"] == {"compared": 60, "agreement": 0.9}
    r = m.rollout
    assert r is not None and not r.shadow and r.weight == SHADOW.weights[0] and r.step == 0
    assert weights_set(outcome) == [SHADOW.weights[0]]
    assert r.challenger.requests == 0  # live steps are judged on live traffic only
    assert m.observe_inference("challenger", CHAL, True, 1.0, at(3))
    assert not m.observe_inference("shadow", CHAL, True, 1.0, at(3))


@pytest.mark.parametrize(
    ("errors", "agree", "why"),
    [(30, None, "catastrophic"), (0, 10, "agrees with the champion on 17%")],
)
def test_a_challenger_that_fails_the_shadow_step_never_gets_live_traffic(
    errors: int, agree: int | None, why: str
) -> None:
    m = machine(SHADOW)
    m.challenger_set(CHAL, CHAMP, at(0))
    mirror(m, 60, errors=errors, agree=agree)
    outcome = m.tick(at(2))
    record = only(outcome)
    assert record.decision is Kind.ROLLBACK and "shadow step" in record.reason and why in record.reason
    assert record.weight == 0 and weights_set(outcome) == [0.0]
    assert DeleteAlias(MODEL, "challenger") in outcome.commands
