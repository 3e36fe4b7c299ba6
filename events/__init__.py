"""The single contract between Flywheel services.

Every message on a Flywheel Kafka topic is one of the pydantic models below, serialised as JSON with a
common envelope (`schema`, `event_id`, `occurred_at`, `producer`). Services import from here and nowhere
else when they talk to each other, so a change of contract is one change in one place.
"""

from events.codec import (
    EventDecodeError,
    UnknownEventSchema,
    UnsupportedSchemaVersion,
    decode,
    encode,
    event_key,
)
from events.envelope import Event
from events.models import (
    ALL_EVENTS,
    AliasAction,
    AliasChanged,
    AliasSource,
    CanaryDecision,
    CanaryDecisionKind,
    DatasetFile,
    DatasetPublished,
    FeedbackRating,
    FeedbackRecorded,
    GateOutcome,
    InferenceRecorded,
    RetrainingFinished,
    RetrainingRequested,
)
from events.topics import (
    ALIAS_CHANGED,
    ALL_TOPICS,
    CANARY_DECISIONS,
    DATASETS_PUBLISHED,
    FEEDBACK_RECORDED,
    HISTORY_TOPICS,
    INFERENCES,
    LEDGER_TOPICS,
    RETRAINING_FINISHED,
    RETRAINING_REQUESTED,
    TOPIC_CONFIGS,
    TOPIC_OF,
)

__all__ = [
    "ALIAS_CHANGED",
    "ALL_EVENTS",
    "ALL_TOPICS",
    "CANARY_DECISIONS",
    "DATASETS_PUBLISHED",
    "FEEDBACK_RECORDED",
    "HISTORY_TOPICS",
    "INFERENCES",
    "LEDGER_TOPICS",
    "RETRAINING_FINISHED",
    "RETRAINING_REQUESTED",
    "TOPIC_CONFIGS",
    "TOPIC_OF",
    "AliasAction",
    "AliasChanged",
    "AliasSource",
    "CanaryDecision",
    "CanaryDecisionKind",
    "DatasetFile",
    "DatasetPublished",
    "Event",
    "EventDecodeError",
    "FeedbackRating",
    "FeedbackRecorded",
    "GateOutcome",
    "InferenceRecorded",
    "RetrainingFinished",
    "RetrainingRequested",
    "UnknownEventSchema",
    "UnsupportedSchemaVersion",
    "decode",
    "encode",
    "event_key",
]
