"""Event payloads of Flywheel, one class per topic (see `events.topics`).

Field names are part of the public contract (DESIGN.md); JSON Schemas generated from these models are
checked in under `events/schemas/` so that non-Python consumers can validate messages.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from events.envelope import Event, schema_field

ModelName = str
Version = str


class AliasAction(StrEnum):
    """What happened to the alias: it now points to a version, or it was removed."""

    SET = "set"
    DELETED = "deleted"


class AliasSource(StrEnum):
    """How the watcher learnt of the change: a signed webhook, the safety-net poller, or a stage shim."""

    WEBHOOK = "webhook"
    POLLER = "poller"
    STAGE = "stage"


_NAME = Field(min_length=1, max_length=256, description="Registered model name.")


class AliasChanged(Event):
    """An alias of a registered model now points to another version, or was removed."""

    SCHEMA_NAME = "flywheel.alias-changed"
    schema_id: str = schema_field(SCHEMA_NAME)

    model: ModelName = _NAME
    alias: str = Field(min_length=1, max_length=256)
    version: Version | None = Field(description="Version the alias points to now; null when deleted.")
    previous_version: Version | None = Field(
        default=None, description="Version the alias pointed to before, from Flywheel's alias state."
    )
    action: AliasAction
    source: AliasSource
    registry_uri: str = Field(description="MLflow registry the change happened in (no credentials).")

    @model_validator(mode="after")
    def _version_matches_action(self) -> AliasChanged:
        if self.action is AliasAction.SET and self.version is None:
            raise ValueError("version is required when action is 'set'")
        if self.action is AliasAction.DELETED and self.version is not None:
            raise ValueError("version must be null when action is 'deleted'")
        return self


class InferenceRecorded(Event):
    """One prediction served by a gateway replica (success or failure)."""

    SCHEMA_NAME = "flywheel.inference-recorded"
    schema_id: str = schema_field(SCHEMA_NAME)

    model: ModelName = _NAME
    version: Version
    alias: str | None = Field(default=None, description="Alias the request resolved through, if any.")
    variant: Literal["champion", "challenger", "pinned", "shadow"] = Field(
        default="champion",
        description="shadow: the challenger answered a mirrored champion request off the request path; "
        "nobody received its answer (not a served prediction).",
    )
    rollout_id: str | None = None
    request_id: str = Field(min_length=1, max_length=128)
    trace_id: str | None = None
    replica: str = Field(min_length=1, max_length=200)
    shadow_agrees: bool | None = Field(
        default=None, description="shadow: whether the challenger's outputs equal the champion's."
    )
    user_id: str | None = None
    status: Literal["ok", "error"]
    error_type: str | None = None
    latency_ms: float = Field(ge=0)
    inputs: JsonValue = None
    outputs: JsonValue = None


class FeedbackRating(StrEnum):
    """A user's verdict on one prediction (a correction may come with either)."""

    THUMBS_UP = "thumbs_up"
    THUMBS_DOWN = "thumbs_down"


class FeedbackRecorded(Event):
    """A human rated one prediction; `corrected_output` is what the answer should have been."""

    SCHEMA_NAME = "flywheel.feedback-recorded"
    schema_id: str = schema_field(SCHEMA_NAME)

    feedback_id: str = Field(min_length=1, max_length=128)
    model: ModelName = _NAME
    version: Version
    variant: Literal["champion", "challenger", "pinned"] | None = None
    rollout_id: str | None = None
    request_id: str = Field(min_length=1, max_length=128)
    trace_id: str | None = None
    rating: FeedbackRating
    corrected_output: JsonValue = None
    comment: str | None = None
    user_id: str | None = None
    inputs: JsonValue = Field(default=None, description="Inputs of the rated prediction.")
    outputs: JsonValue = Field(default=None, description="Original outputs of the rated prediction.")
    served_at: datetime | None = None


class CanaryDecisionKind(StrEnum):
    """What a rollout decided at one step: the machine's transitions, and the operator's commands."""

    START = "start"
    ADVANCE = "advance"
    HOLD = "hold"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"
    RESTART = "restart"
    REVERTED = "reverted"  # after promotion, the watch moved champion back to previous-champion
    WATCH_PASSED = "watch_passed"  # the watch after a promotion ended without a regression


class CanaryDecision(Event):
    """A canary rollout step decision, with the metrics it was based on."""

    SCHEMA_NAME = "flywheel.canary-decision"
    schema_id: str = schema_field(SCHEMA_NAME)

    model: ModelName = _NAME
    rollout_id: str = Field(min_length=1, max_length=128)
    decision: CanaryDecisionKind
    champion_version: Version | None
    challenger_version: Version
    state: str = Field(description="Rollout state after the decision.")
    step: int = Field(ge=0)
    weight: float = Field(ge=0, le=100, description="Challenger traffic share in percent after it.")
    reason: str
    actor: str = Field(default="analysis", description="'analysis' or who acted (admin action).")
    metrics: dict[str, Any] = Field(default_factory=dict)


class DatasetFile(BaseModel):
    """One file of a dataset version, as listed in its manifest."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    path: str
    format: Literal["jsonl", "parquet", "csv", "json"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    rows: int = Field(ge=0)


class DatasetPublished(Event):
    """An immutable training dataset version was written and logged to MLflow."""

    SCHEMA_NAME = "flywheel.dataset-published"
    schema_id: str = schema_field(SCHEMA_NAME)

    model: ModelName = _NAME
    dataset_name: str
    dataset_version: int = Field(ge=1)
    run_id: str
    artifact_uri: str
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=0)
    corrected_rows: int = Field(ge=0, default=0)
    files: list[DatasetFile]
    model_versions: list[Version] = Field(default_factory=list)
    time_start: datetime | None = None
    time_end: datetime | None = None
    aliases: list[str] = Field(default_factory=list)


class RetrainingRequested(Event):
    """Enough feedback signal accumulated: train the next version of `model`."""

    SCHEMA_NAME = "flywheel.retraining-requested"
    schema_id: str = schema_field(SCHEMA_NAME)

    model: ModelName = _NAME
    reason: Literal["corrections", "thumbs_down_rate", "manual"]
    base_version: Version | None = None
    dataset_name: str | None = None
    dataset_version: int | None = None
    dataset_run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class GateOutcome(BaseModel):
    """One quality gate of a retraining, with the value measured in that run."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    passed: bool
    value: float | None = Field(description="Measured value; null when the gate was not evaluated.")
    threshold: float | None = None
    message: str = ""


class RetrainingFinished(Event):
    """How a retraining request ended. Every request that reaches the retrainer ends in one, so a failed
    gate is visible to operators and consumers (and a later trigger can retry); `version` is set only
    when a version was registered and became `challenger`."""

    SCHEMA_NAME = "flywheel.retraining-finished"
    schema_id: str = schema_field(SCHEMA_NAME)

    model: ModelName = _NAME
    request_event_id: str = Field(min_length=1, max_length=128, description="The RetrainingRequested.")
    outcome: Literal["challenger", "gates_failed", "dataset_rejected", "failed"]
    version: Version | None = Field(default=None, description="Registered version (outcome challenger).")
    run_id: str | None = Field(default=None, description="The MLflow run of this retraining.")
    base_version: Version | None = None
    dataset_name: str | None = None
    dataset_version: int | None = None
    gates: list[GateOutcome] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    message: str = ""

    @model_validator(mode="after")
    def _version_only_for_challenger(self) -> RetrainingFinished:
        if (self.outcome == "challenger") != (self.version is not None):
            raise ValueError("version is set exactly when the outcome is 'challenger'")
        return self


ALL_EVENTS: tuple[type[Event], ...] = (
    AliasChanged,
    InferenceRecorded,
    FeedbackRecorded,
    CanaryDecision,
    DatasetPublished,
    RetrainingRequested,
    RetrainingFinished,
)
