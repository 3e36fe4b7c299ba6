"""The event contract: envelope, version rules, and checked-in JSON Schemas in sync with the models."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest
from pydantic import ValidationError

from events import (
    ALL_EVENTS,
    ALL_TOPICS,
    TOPIC_OF,
    AliasChanged,
    EventDecodeError,
    FeedbackRecorded,
    UnknownEventSchema,
    UnsupportedSchemaVersion,
    decode,
    encode,
    event_key,
)
from events.schema_export import SCHEMA_DIR, schema_documents


def alias_changed(**overrides: object) -> AliasChanged:
    fields: dict[str, object] = dict(
        producer="test",
        model="iris",
        alias="champion",
        version="2",
        previous_version="1",
        action="set",
        source="webhook",
        registry_uri="http://mlflow:5000",
    )
    fields.update(overrides)
    return AliasChanged(**fields)  # type: ignore[arg-type]


def test_checked_in_schemas_match_models() -> None:
    generated = schema_documents()
    on_disk = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.json")}
    assert set(on_disk) == set(generated), "run `python -m events.schema_export`"
    for name, text in generated.items():
        assert on_disk[name] == text, f"{name} is stale: run `python -m events.schema_export`"


def test_every_event_has_a_topic_and_a_distinct_schema() -> None:
    assert set(TOPIC_OF) == set(ALL_EVENTS)
    assert len(set(ALL_TOPICS)) == len(ALL_EVENTS) == 7
    assert len({cls.SCHEMA_NAME for cls in ALL_EVENTS}) == len(ALL_EVENTS)


def test_wire_form_has_envelope_and_validates_against_schema() -> None:
    event = alias_changed()
    wire = json.loads(encode(event))
    assert wire["schema"] == "flywheel.alias-changed/v1"
    assert wire["occurred_at"].endswith("Z")
    assert {"event_id", "producer"} <= set(wire)
    schema = json.loads((SCHEMA_DIR / "alias-changed.v1.json").read_text())
    jsonschema.validate(wire, schema)
    assert decode(encode(event)) == event
    assert event_key(event) == b"iris"


def test_unknown_fields_are_ignored_and_minor_versions_accepted() -> None:
    wire = json.loads(encode(alias_changed()))
    wire["added_in_v1_3"] = {"anything": True}
    wire["schema"] = "flywheel.alias-changed/v1.3"
    assert decode(json.dumps(wire)).model == "iris"  # type: ignore[attr-defined]


def test_unknown_major_version_is_rejected_loudly() -> None:
    wire = json.loads(encode(alias_changed()))
    wire["schema"] = "flywheel.alias-changed/v2"
    with pytest.raises(UnsupportedSchemaVersion, match="v2"):
        decode(json.dumps(wire))


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json", EventDecodeError),
        (b"[1, 2]", EventDecodeError),
        (b'{"event_id": "x"}', EventDecodeError),
        (b'{"schema": "flywheel.nope/v1"}', UnknownEventSchema),
        (b'{"schema": "garbage"}', EventDecodeError),
    ],
)
def test_malformed_messages_raise(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode(raw)


def test_decode_with_expected_type_refuses_other_events() -> None:
    with pytest.raises(UnknownEventSchema):
        decode(encode(alias_changed()), FeedbackRecorded)


def test_alias_changed_version_must_match_action() -> None:
    with pytest.raises(ValidationError, match="version is required"):
        alias_changed(version=None)
    with pytest.raises(ValidationError, match="must be null"):
        alias_changed(action="deleted", version="3")
    deleted = alias_changed(action="deleted", version=None)
    assert deleted.previous_version == "1"


def test_occurred_at_must_be_timezone_aware() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        alias_changed(occurred_at=datetime(2026, 1, 1))
    assert alias_changed(occurred_at=datetime(2026, 1, 1, tzinfo=UTC)).occurred_at.tzinfo is UTC
