"""Kafka topic names: the one place they are spelled. Every topic is keyed by model name."""

from __future__ import annotations

from events.envelope import Event
from events.models import (
    AliasChanged,
    CanaryDecision,
    DatasetPublished,
    FeedbackRecorded,
    InferenceRecorded,
    RetrainingFinished,
    RetrainingRequested,
)

ALIAS_CHANGED = "flywheel.registry.alias-changed"
INFERENCES = "flywheel.serving.inferences"
FEEDBACK_RECORDED = "flywheel.feedback.recorded"
CANARY_DECISIONS = "flywheel.canary.decisions"
DATASETS_PUBLISHED = "flywheel.datasets.published"
RETRAINING_REQUESTED = "flywheel.retraining.requested"
RETRAINING_FINISHED = "flywheel.retraining.finished"

TOPIC_OF: dict[type[Event], str] = {
    AliasChanged: ALIAS_CHANGED,
    InferenceRecorded: INFERENCES,
    FeedbackRecorded: FEEDBACK_RECORDED,
    CanaryDecision: CANARY_DECISIONS,
    DatasetPublished: DATASETS_PUBLISHED,
    RetrainingRequested: RETRAINING_REQUESTED,
    RetrainingFinished: RETRAINING_FINISHED,
}

ALL_TOPICS: tuple[str, ...] = tuple(TOPIC_OF.values())

#: The record of what was live when (`services/shared/alias_history.py` reads it): low-volume topics that
#: Flywheel creates without time or size limit, so the history reaches back to the first alias change.
HISTORY_TOPICS: tuple[str, ...] = (ALIAS_CHANGED, CANARY_DECISIONS, RETRAINING_FINISHED)
#: The record of what the loop produced (`services/shared/console/ledger.py` reads it): dataset versions and
#: retraining requests with their outcomes. Kept without limit like the history, for the same reason.
LEDGER_TOPICS: tuple[str, ...] = (DATASETS_PUBLISHED, RETRAINING_REQUESTED, RETRAINING_FINISHED)
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    topic: {"retention.ms": "-1", "retention.bytes": "-1"} for topic in (*HISTORY_TOPICS, *LEDGER_TOPICS)
}
