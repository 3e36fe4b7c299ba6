"""RetrainingFinished: every retraining ends in one event, built from the recorded outcome."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import ValidationError

from events import RetrainingFinished, RetrainingRequested, decode, encode
from events.schema_export import SCHEMA_DIR
from services.retrainer.domain.gates import GateThresholds, Measurements, evaluate_gates
from services.retrainer.domain.outcome import Outcome, RetrainResult, finished_event

REQUEST = RetrainingRequested(
    producer="tests",
    model="wine",
    reason="corrections",
    base_version="2",
    dataset_name="d",
    dataset_version=3,
)


def report(**overrides: object) -> object:
    values: dict[str, object] = {
        "columns": ("request_id", "inputs", "output"),
        "required_columns": ("request_id", "inputs", "output"),
        "rows": 10,
        "accuracy": 0.9,
        "latencies_ms": [30.0] * 20,
        "baseline_latencies_ms": [10.0] * 20,
        "baseline_accuracy": 0.88,
    }
    values.update(overrides)
    return evaluate_gates(Measurements(**values), GateThresholds())  # type: ignore[arg-type]


def test_a_failed_gate_is_in_the_event_with_its_measured_value() -> None:
    gates = report()
    result = RetrainResult(
        Outcome.GATES_FAILED, "wine", REQUEST.event_id, "run1", report=gates, metrics={"accuracy": 0.9}
    )
    event = finished_event(REQUEST, result.to_dict())
    assert event is not None
    assert (event.outcome, event.version, event.run_id, event.base_version) == (
        "gates_failed",
        None,
        "run1",
        "2",
    )
    failed = [g for g in event.gates if not g.passed]
    assert [g.name for g in failed] == ["p95_latency_ratio"]
    assert failed[0].value == pytest.approx(3.0) and failed[0].threshold == 1.5
    wire = json.loads(encode(event))
    jsonschema.validate(wire, json.loads((SCHEMA_DIR / "retraining-finished.v1.json").read_text()))
    assert decode(encode(event)) == event


def test_the_event_id_is_derived_from_the_request_so_a_republished_outcome_is_the_same_event() -> None:
    recorded = RetrainResult(
        Outcome.CHALLENGER, "wine", REQUEST.event_id, "run1", "4", report=report()
    ).to_dict()
    first, again = (
        finished_event(REQUEST, recorded),
        finished_event(REQUEST, json.loads(json.dumps(recorded))),
    )
    assert first is not None and again is not None
    assert first.event_id == again.event_id and first.version == "4"
    other = REQUEST.model_copy(update={"event_id": "another"})
    assert finished_event(other, recorded).event_id != first.event_id  # type: ignore[union-attr]


@pytest.mark.parametrize("outcome", [Outcome.DUPLICATE, Outcome.SKIPPED, Outcome.UNDECODABLE])
def test_outcomes_that_do_not_end_a_request_publish_nothing(outcome: Outcome) -> None:
    assert finished_event(REQUEST, RetrainResult(outcome, "wine").to_dict()) is None


def test_a_version_exactly_when_the_outcome_is_challenger() -> None:
    with pytest.raises(ValidationError):
        RetrainingFinished(producer="t", model="m", request_event_id="r", outcome="challenger")
    with pytest.raises(ValidationError):
        RetrainingFinished(producer="t", model="m", request_event_id="r", outcome="failed", version="3")
