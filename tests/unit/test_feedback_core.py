"""Pure feedback aggregation: windowed counts, training examples, retraining trigger policy."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import FeedbackRating, FeedbackRecorded, InferenceRecorded, RetrainingRequested
from services.feedback_aggregation.domain.aggregates import (
    AggregateConfig,
    AggregateState,
    Aggregator,
    Counts,
    Outcome,
    apply,
    new_state,
    report,
    state_key,
)
from services.feedback_aggregation.domain.examples import COLUMNS, ExampleRow, build_examples
from services.feedback_aggregation.domain.triggers import (
    FeedbackSignal,
    TriggerPolicy,
    TriggerState,
    after,
    decide,
    rate_window_start,
    signal_from,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)  # a multiple of 60 s since the epoch: window starts line up
UP, DOWN = FeedbackRating.THUMBS_UP, FeedbackRating.THUMBS_DOWN


def inference(request_id: str, at: float = 0.0, *, status: str = "ok", **kw: Any) -> InferenceRecorded:
    return InferenceRecorded(
        producer="test",
        model=kw.pop("model", "m"),
        version=kw.pop("version", "1"),
        request_id=request_id,
        replica="r1",
        status=status,
        latency_ms=1.0,
        occurred_at=T0 + timedelta(seconds=at),
        **kw,
    )


def feedback(
    request_id: str,
    rating: FeedbackRating = UP,
    at: float = 0.0,
    *,
    user: str | None = "u1",
    corrected: Any = None,
    **kw: Any,
) -> FeedbackRecorded:
    return FeedbackRecorded(
        producer="test",
        feedback_id=kw.pop("feedback_id", f"fb-{random.getrandbits(64):x}"),
        model=kw.pop("model", "m"),
        version=kw.pop("version", "1"),
        request_id=request_id,
        rating=rating,
        corrected_output=corrected,
        user_id=user,
        occurred_at=T0 + timedelta(seconds=at),
        inputs=kw.pop("inputs", {"q": request_id}),
        outputs=kw.pop("outputs", {"a": f"answer to {request_id}"}),
        **kw,
    )


CFG = AggregateConfig(window_s=60, retention_s=600, max_tracked=10_000)


def applied(events: list[Any], config: AggregateConfig = CFG) -> AggregateState:
    state = new_state("m", "1")
    for event in events:
        apply(state, event, config)
    return state


# --- aggregates -----------------------------------------------------------------------------------


def test_tumbling_windows_and_totals() -> None:
    state = applied(
        [
            inference("a", 0),
            inference("b", 59.9, status="error"),
            inference("c", 60),
            feedback("a", UP, 10),
            feedback("b", DOWN, 70, corrected={"a": "fixed"}),
            feedback("c", UP, 130, user="u2"),
        ]
    )
    start = int(T0.timestamp())
    assert sorted(state.windows) == [start, start + 60, start + 120]
    assert state.windows[start] == Counts(inferences=2, errors=1, feedback=1, thumbs_up=1)
    assert state.windows[start + 60] == Counts(inferences=1, feedback=1, thumbs_down=1, corrections=1)
    assert state.totals == Counts(
        inferences=3, errors=1, feedback=3, thumbs_up=2, thumbs_down=1, corrections=1
    )
    assert state.totals.thumbs_up_rate == pytest.approx(2 / 3)
    assert Counts().thumbs_up_rate is None  # no ratings is not a 0% rate
    assert state.since(start + 60) == Counts(
        inferences=1, feedback=2, thumbs_up=1, thumbs_down=1, corrections=1
    )


def test_window_size_is_configurable() -> None:
    config = AggregateConfig(window_s=300, retention_s=3600)
    state = applied([inference("a", 0), inference("b", 299), inference("c", 300)], config)
    assert [c.inferences for _, c in sorted(state.windows.items())] == [2, 1]


def test_redelivered_events_are_counted_once() -> None:
    events: list[InferenceRecorded | FeedbackRecorded] = [
        inference("a", 1),
        feedback("a", UP, 2),
        feedback("b", DOWN, 3, corrected=[1]),
    ]
    state = new_state("m", "1")
    assert [apply(state, e, CFG) for e in events] == [Outcome.COUNTED] * 3
    for _ in range(3):
        assert [apply(state, e, CFG) for e in events] == [Outcome.DUPLICATE] * 3
    assert state.totals == Counts(inferences=1, feedback=2, thumbs_up=1, thumbs_down=1, corrections=1)
    assert state.duplicates == 9


def test_repeated_submission_by_same_user_counts_once() -> None:
    # Two POSTs of the same rating: new feedback_id and event_id each time, same (request, user).
    state = applied([feedback("r", UP, 0, user="alice"), feedback("r", UP, 5, user="alice")])
    assert state.totals.feedback == 1 and state.totals.thumbs_up == 1
    apply(state, feedback("r", UP, 6, user="bob"), CFG)  # another user on the same request counts
    assert state.totals.feedback == 2


def test_anonymous_feedback_is_one_vote_per_request() -> None:
    state = applied([feedback("r", DOWN, 0, user=None), feedback("r", DOWN, 1, user=None)])
    assert state.totals.thumbs_down == 1


def test_changed_vote_replaces_the_old_one_in_its_window() -> None:
    first = feedback("r", UP, 10, user="alice")
    second = feedback("r", DOWN, 70, user="alice", corrected={"a": "better"})
    forward = applied([first, second])
    start = int(T0.timestamp())
    assert forward.totals == Counts(feedback=1, thumbs_down=1, corrections=1)
    assert forward.windows[start] == Counts()
    assert forward.windows[start + 60] == Counts(feedback=1, thumbs_down=1, corrections=1)
    backward = new_state("m", "1")
    assert apply(backward, second, CFG) is Outcome.COUNTED
    assert apply(backward, first, CFG) is Outcome.DUPLICATE  # older vote arriving late changes nothing
    assert backward.totals == forward.totals
    assert apply(forward, second, CFG) is Outcome.DUPLICATE


def test_old_windows_are_pruned_and_their_redeliveries_rejected() -> None:
    old = feedback("r", UP, 0)
    state = applied([inference("a", 0), old, inference("b", 30)])
    apply(state, inference("c", 700), CFG)  # watermark moves 700 s on; retention is 600 s
    start = int(T0.timestamp())
    assert start not in state.windows and start + 660 in state.windows
    assert state.votes == {} and start not in state.inference_ids
    before = state.totals.to_json()
    assert apply(state, old, CFG) is Outcome.LATE
    assert apply(state, inference("a", 0), CFG) is Outcome.LATE
    assert state.totals.to_json() == before
    assert state.late == 2


def test_dedup_memory_is_capped_without_double_counting() -> None:
    config = AggregateConfig(window_s=60, retention_s=3600, max_tracked=10)
    state = new_state("m", "1")
    events = [inference(f"r{i}", i * 60) for i in range(30)]  # one id per window
    for event in events:
        apply(state, event, config)
        assert state.tracked <= 10
    assert state.totals.inferences == 30
    assert len(state.windows) == 30  # counts stay for the retention; only ids were forgotten
    outcomes = [apply(state, e, config) for e in events]
    assert Outcome.COUNTED not in outcomes
    assert state.totals.inferences == 30


def test_events_of_another_key_are_refused() -> None:
    with pytest.raises(ValueError, match="applied to"):
        apply(new_state("m", "1"), inference("a", version="2"), CFG)


def test_state_round_trips_through_json_and_keeps_deduplicating() -> None:
    events: list[InferenceRecorded | FeedbackRecorded] = [
        inference("a", 0),
        feedback("a", UP, 1),
        feedback("a", DOWN, 61, user="u2", corrected=1),
    ]
    state = applied(events)
    restored = AggregateState.from_json(json.loads(json.dumps(state.to_json())))
    assert restored.to_json() == state.to_json()
    assert [apply(restored, e, CFG) for e in events] == [Outcome.DUPLICATE] * 3
    assert restored.totals == state.totals
    with pytest.raises(ValueError, match="format"):
        AggregateState.from_json({**state.to_json(), "format": 99})


def test_aggregator_keys_by_model_and_version_and_reports() -> None:
    agg = Aggregator(CFG)
    agg.apply(inference("a", version="1"))
    agg.apply(inference("b", version="2"))
    agg.apply(feedback("b", UP, version="2"))
    assert set(agg.states) == {state_key("m", "1"), state_key("m", "2")}
    v2 = agg.get("m", "2")
    assert v2 is not None and v2.totals.thumbs_up == 1
    rep = report(v2, CFG)
    assert rep["totals"]["thumbs_up_rate"] == 1.0
    assert rep["windows"][0]["start"] == "2026-01-01T00:00:00Z"
    json.dumps(rep)
    assert state_key("a:b", "c") != state_key("a", "b:c")


# Reference for the property: counts from first principles, no windows or pruning involved.
def expected_totals(events: list[Any]) -> Counts:
    requests = {e.request_id: e for e in events if isinstance(e, InferenceRecorded)}
    votes: dict[tuple[str, str], FeedbackRecorded] = {}
    for e in events:
        if isinstance(e, FeedbackRecorded):
            key = (e.request_id, e.user_id or "")
            if key not in votes or (e.occurred_at, e.event_id) > (
                votes[key].occurred_at,
                votes[key].event_id,
            ):
                votes[key] = e
    return Counts(
        inferences=len(requests),
        errors=sum(e.status == "error" for e in requests.values()),
        feedback=len(votes),
        thumbs_up=sum(v.rating == UP for v in votes.values()),
        thumbs_down=sum(v.rating == DOWN for v in votes.values()),
        corrections=sum(v.corrected_output is not None for v in votes.values()),
    )


event_spec = st.tuples(
    st.booleans(),  # inference or feedback
    st.sampled_from(["r1", "r2", "r3", "r4"]),
    st.sampled_from(["u1", "u2", None]),
    st.integers(0, 400),  # seconds: all inside the 600 s retention
    st.booleans(),  # thumbs up / error
    st.booleans(),  # corrected
)


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(event_spec, min_size=1, max_size=25), seed=st.integers(0, 2**32))
def test_any_order_with_redeliveries_gives_the_reference_counts(specs: list[Any], seed: int) -> None:
    events: list[Any] = []
    seen_requests: set[str] = set()
    for is_inf, req, user, at, flag, corrected in specs:
        if is_inf:
            if req in seen_requests:  # one inference per request id, as the gateway guarantees
                continue
            seen_requests.add(req)
            events.append(inference(req, at, status="ok" if flag else "error"))
        else:
            events.append(
                feedback(req, UP if flag else DOWN, at, user=user, corrected=1 if corrected else None)
            )
    rng = random.Random(seed)
    deliveries = events + rng.choices(events, k=len(events))
    rng.shuffle(deliveries)
    state = applied(deliveries)
    assert state.totals == expected_totals(events)
    summed = Counts()
    for counts in state.windows.values():
        summed.add(counts)
    assert summed == state.totals
    in_order = applied(sorted(events, key=lambda e: e.occurred_at))
    assert nonzero(in_order.windows) == nonzero(state.windows)


def nonzero(windows: dict[int, Counts]) -> dict[int, Counts]:
    """Windows with counts (a revised vote can leave an all-zero window behind; that is not a difference)."""
    return {start: c for start, c in windows.items() if c != Counts()}


# --- examples -------------------------------------------------------------------------------------


def test_correction_beats_a_later_thumbs_up_and_yields_the_corrected_output() -> None:
    fix = feedback("r", DOWN, 10, user="a", corrected={"a": "right"})
    later_up = feedback("r", UP, 20, user="b")
    rows = build_examples([fix, later_up]).rows
    assert len(rows) == 1
    assert rows[0].source == "corrected" and rows[0].output == {"a": "right"} and rows[0].user_id == "a"


def test_thumbs_up_uses_the_original_output_and_thumbs_down_is_excluded() -> None:
    result = build_examples([feedback("up", UP, 1), feedback("down", DOWN, 2)])
    assert [(r.request_id, r.source, r.output) for r in result.rows] == [
        ("up", "thumbs_up", {"a": "answer to up"})
    ]
    assert result.excluded["thumbs_down"] == 1


def test_latest_plain_rating_wins_per_request() -> None:
    result = build_examples([feedback("r", UP, 1), feedback("r", DOWN, 2, user="u2")])
    assert result.rows == [] and result.excluded["thumbs_down"] == 1
    result = build_examples([feedback("r", DOWN, 1), feedback("r", UP, 2, user="u2")])
    assert len(result.rows) == 1 and result.rows[0].user_id == "u2"


def test_one_example_per_request_and_redelivery_is_not_superseded() -> None:
    first = feedback("r", DOWN, 1, corrected="v1")
    second = feedback("r", DOWN, 2, corrected="v2")
    result = build_examples([second, first, second, first])
    assert [r.output for r in result.rows] == ["v2"]
    assert result.excluded["superseded"] == 1  # `first`, once, however often it was delivered
    assert result.excluded["redelivered"] == 2


def test_order_is_corrected_first_then_feedback_time() -> None:
    events = [
        feedback("up-early", UP, 1),
        feedback("fix-late", DOWN, 50, corrected="x"),
        feedback("up-late", UP, 40),
        feedback("fix-early", UP, 5, corrected="y"),
    ]
    result = build_examples(events)
    assert [r.request_id for r in result.rows] == ["fix-early", "fix-late", "up-early", "up-late"]
    assert result.corrected == 2


def test_missing_inputs_and_outputs_come_from_the_inference() -> None:
    served = T0 - timedelta(seconds=3)
    inf = inference("r", -3, inputs={"q": 1}, outputs={"a": 2}, trace_id="tr-1")
    event = feedback("r", UP, 0, inputs=None, outputs=None)
    assert build_examples([event]).excluded["missing_inputs"] == 1
    row = build_examples([event], {"r": inf}).rows[0]
    assert (row.inputs, row.output, row.trace_id, row.served_at) == ({"q": 1}, {"a": 2}, "tr-1", served)
    assert build_examples([feedback("r", UP, 0, outputs=None)]).excluded["missing_output"] == 1


def test_model_and_time_range_filters() -> None:
    events = [feedback("a", UP, 0), feedback("b", UP, 100), feedback("c", UP, 50, model="other")]
    result = build_examples(events, model="m", start=T0, end=T0 + timedelta(seconds=100))
    assert [r.request_id for r in result.rows] == ["a"]  # end is exclusive
    assert result.excluded["other_model"] == 1 and result.excluded["out_of_range"] == 1


def test_row_fields_are_the_documented_columns() -> None:
    assert COLUMNS == (
        "request_id",
        "model",
        "version",
        "inputs",
        "output",
        "source",
        "rating",
        "user_id",
        "feedback_at",
        "served_at",
        "trace_id",
    )
    row = build_examples([feedback("r", UP, 0, trace_id="t")]).rows[0]
    assert isinstance(row, ExampleRow) and row.rating == "thumbs_up" and row.feedback_at == T0


# --- triggers -------------------------------------------------------------------------------------

POLICY = TriggerPolicy(min_corrections=50, max_thumbs_down_rate=0.3, min_rated=20, cooldown_s=3600)


def test_corrections_threshold_counts_only_corrections_since_the_last_trigger() -> None:
    state = TriggerState()
    assert decide(POLICY, state, FeedbackSignal(49, 0, 0), T0).verdict == "insufficient_samples"
    signal = FeedbackSignal(corrections_total=50, thumbs_down=0, rated=100)
    decision = decide(POLICY, state, signal, T0)
    assert decision.fire and decision.verdict == "corrections"
    assert decision.metrics["new_corrections"] == 50
    state = after(state, decision, signal, T0)
    later = T0 + timedelta(hours=2)
    assert decide(POLICY, state, FeedbackSignal(99, 0, 100), later).verdict == "below_threshold"
    assert decide(POLICY, state, FeedbackSignal(100, 0, 100), later).verdict == "corrections"


def test_thumbs_down_rate_needs_a_minimum_sample_and_must_exceed_the_threshold() -> None:
    state = TriggerState()
    assert decide(POLICY, state, FeedbackSignal(0, 19, 19), T0).verdict == "insufficient_samples"
    at_threshold = decide(POLICY, state, FeedbackSignal(0, 6, 20), T0)  # 30% is not above 30%
    assert at_threshold.verdict == "below_threshold"
    decision = decide(POLICY, state, FeedbackSignal(0, 7, 20), T0)
    assert decision.fire and decision.verdict == "thumbs_down_rate"
    assert decision.metrics["thumbs_down_rate"] == pytest.approx(0.35)


def test_cooldown_suppresses_both_triggers() -> None:
    signal = FeedbackSignal(50, 20, 20)
    decision = decide(POLICY, TriggerState(), signal, T0)
    state = after(TriggerState(), decision, signal, T0)
    busy = decide(POLICY, state, FeedbackSignal(500, 20, 20), T0 + timedelta(minutes=59))
    assert not busy.fire and busy.verdict == "cooldown"
    assert busy.metrics["cooldown_remaining_s"] == pytest.approx(60)
    assert decide(POLICY, state, FeedbackSignal(500, 20, 20), T0 + timedelta(hours=1)).fire
    assert after(state, busy, signal, T0) is state


def test_decision_maps_to_retraining_requested() -> None:
    decision = decide(POLICY, TriggerState(), FeedbackSignal(0, 10, 20), T0)
    event = decision.to_event("m", "feedback-aggregation", base_version="3", dataset_version=2)
    assert isinstance(event, RetrainingRequested)
    assert (event.reason, event.base_version, event.dataset_version) == ("thumbs_down_rate", "3", 2)
    assert event.metrics["rated"] == 20.0
    RetrainingRequested.model_validate(event.to_json_dict())
    with pytest.raises(ValueError, match="did not fire"):
        decide(POLICY, TriggerState(), FeedbackSignal(0, 0, 0), T0).to_event("m", "p")


def test_signal_from_aggregates_uses_whole_windows_after_the_last_trigger() -> None:
    agg = Aggregator(AggregateConfig(window_s=60, retention_s=7200))
    for i in range(10):
        agg.apply(feedback(f"old{i}", DOWN, 30, corrected=1))  # before the trigger at T0+45
    for i in range(4):
        agg.apply(feedback(f"new{i}", DOWN, 90, version="2"))
    agg.apply(feedback("new-up", UP, 100, version="2"))
    state = TriggerState(last_triggered_at=T0 + timedelta(seconds=45), corrections_at_last_trigger=10)
    now = T0 + timedelta(seconds=120)
    since = rate_window_start(POLICY, state, now)
    assert since == state.last_triggered_at
    signal = signal_from(agg.states.values(), agg.config, since)
    assert signal == FeedbackSignal(corrections_total=10, thumbs_down=4, rated=5)
    assert rate_window_start(POLICY, TriggerState(), now) == now - timedelta(hours=1)


def test_trigger_state_round_trips_through_json() -> None:
    state = TriggerState(last_triggered_at=T0, corrections_at_last_trigger=7)
    assert TriggerState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert TriggerState.from_json(TriggerState().to_json()) == TriggerState()


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TriggerPolicy(max_thumbs_down_rate=1.5)
    with pytest.raises(ValueError):
        AggregateConfig(window_s=60, retention_s=30)
